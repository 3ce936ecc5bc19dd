#!/usr/bin/env bash
# starring-bench: the quick attention run gives sane JSON (positive rates,
# ratios present, nothing wrong); --help and unknown commands behave.
set -u
cd "$(dirname "$0")/../.."
BENCH=${BUILD:-build}/starring-bench
. tests/sh/tap.sh

out=$(mktemp)
err=$(mktemp)
chk=$(mktemp)
trap 'rm -f "$out" "$err" "$chk"' EXIT

"$BENCH" attention --quick --json >"$out" 2>"$err"
check $? "attention --quick --json exits 0"

python3 - "$out" "$n" >"$chk" <<'PY'
import json, math, sys
n = int(sys.argv[2])
def tap(ok, what):
    global n
    n += 1
    print(("ok" if ok else "not ok"), n, "-", what)
try:
    doc = json.load(open(sys.argv[1]))
except Exception as e:
    tap(False, "JSON parses (%s)" % e)
    sys.exit(1)
tap(True, "JSON parses")
rows = doc.get("rows", [])
facts = doc.get("facts", {})
sections = {r["section"] for r in rows}
tap({"ceiling", "prefill", "decode"} <= sections, "ceiling, prefill and decode rows present")
tap(len([r for r in rows if r["section"] == "prefill"]) >= 4, "prefill rows for f32 and f16")
pos = lambda x: isinstance(x, (int, float)) and math.isfinite(x) and x > 0
tap(all(pos(r["rate"]) and pos(r["time_s"]) and r["samples"] >= 1 for r in rows),
    "every rate and time is positive")
tap(all(r["wrong"] in (None, 0) for r in rows) and doc.get("wrong_total") == 0,
    "no wrong elements")
tap(all(r["wrong"] == 0 for r in rows if r["section"] in ("prefill", "decode")),
    "every attention row was checked")
pre = [r for r in rows if r["section"] == "prefill"]
tap(all(pos(r["base_rate"]) and pos(r["ours_over_base"]) and pos(r["ours_over_ceiling"]) for r in pre),
    "prefill rows carry ours/base and ours/ceiling")
tap(all(abs(r["ours_over_base"] - r["rate"] / r["base_rate"]) <= 1e-3 * r["ours_over_base"] for r in pre),
    "ours/base is rate / base_rate")
dec = [r for r in rows if r["section"] == "decode"]
tap(all(pos(r["ours_over_ceiling"]) and r["unit"] == "GB/s" for r in dec),
    "decode rows carry ours/ceiling in GB/s")
tap(all(abs(r["ours_over_ceiling"] - r["rate"] / facts["read_gbs"]) <= 1e-3 * r["ours_over_ceiling"] for r in dec),
    "decode ratio is against the read bandwidth")
tap(pos(facts.get("sgemm_as_is_gflops")) and pos(facts.get("sgemm_unset_gflops"))
    and facts.get("sgemm_ceiling_gflops") == max(facts["sgemm_as_is_gflops"], facts["sgemm_unset_gflops"])
    and facts.get("sgemm_ceiling_used") in ("as-is", "unset"),
    "sgemm ceiling measured both ways, the higher used")
tap(bool(facts.get("sgemm_core_as_is")) and bool(facts.get("sgemm_core_unset")) and "OPENBLAS_CORETYPE" in facts,
    "OpenBLAS core names and OPENBLAS_CORETYPE reported")
tap(pos(facts.get("read_gbs")) and pos(facts.get("memcpy_gbs")), "read and memcpy bandwidth reported")
PY
check_merge "$chk"
[ -s "$chk" ] || check 1 "the JSON checks ran"

OPENBLAS_CORETYPE=Nehalem "$BENCH" attention --quick --json >"$out" 2>"$err"
rc=$?
python3 -c '
import json, sys
f = json.load(open(sys.argv[1]))["facts"]
assert f["OPENBLAS_CORETYPE"] == "Nehalem" and f["sgemm_core_as_is"] == "Nehalem", f
assert f["sgemm_core_unset"] != "Nehalem", f
assert f["baseline_core"] == f["sgemm_core_unset"], f  # re-executed without it
' "$out"
check $((rc + $?)) "OPENBLAS_CORETYPE: honoured as-is, removed for the second sgemm and the baseline"

"$BENCH" attention --quick >"$out" 2>"$err"
grep -q '^prefill .* f16 ' "$out" && grep -q '^section ' "$out"
check $? "the table is printed without --json"

"$BENCH" --help >"$out" 2>&1
rc=$?
grep -q attention "$out"
check $((rc + $?)) "--help exits 0 and lists attention"

"$BENCH" attention --help >"$out" 2>&1
check $? "attention --help exits 0"

"$BENCH" no-such-command >"$out" 2>"$err"
rc=$?
[ "$rc" -ne 0 ] && grep -q "unknown command 'no-such-command'" "$err"
check $? "an unknown command exits non-zero with a message"

"$BENCH" attention --threads x >"$out" 2>"$err"
rc=$?
[ "$rc" -ne 0 ] && grep -q -- "--threads" "$err"
check $? "a bad option value exits non-zero with a message"

"$BENCH" attention --quick --only decode --json >"$out" 2>"$err"
rc=$?
python3 -c '
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
assert {r["section"] for r in rows} == {"ceiling", "decode"}, rows
' "$out"
check $((rc + $?)) "--only decode runs the ceilings and the decode rows only"

"$BENCH" attention --only nothing >"$out" 2>"$err"
rc=$?
[ "$rc" -ne 0 ] && grep -q -- "--only" "$err"
check $? "--only with an unknown section exits non-zero with a message"

check_done
