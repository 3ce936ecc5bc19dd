#!/usr/bin/env bash
# starring-bench model: the quick run on SmolLM2 gives sane JSON (positive
# rates, every row checked, nothing wrong); a missing -m, a missing file and
# a file that is not GGUF fail with a clear message.
set -u
cd "$(dirname "$0")/../.."
BENCH=${BUILD:-build}/starring-bench
MODEL=${SR_MODEL:-$(scripts/fetch-model | tail -n 1)}
. tests/sh/tap.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$BENCH" model -m "$MODEL" --quick --json >"$tmp/out" 2>"$tmp/err"
rc=$?
sed 's/^/# /' "$tmp/err"
check $rc "model --quick --json exits 0"
grep -q '^section ' "$tmp/err" && grep -q '^generate .* tok/s ' "$tmp/err"
check $? "the table goes to stderr beside the JSON"

python3 - "$tmp/out" "$n" >"$tmp/chk" <<'PY'
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
pre = [r for r in rows if r["section"] == "prompt"]
gen = [r for r in rows if r["section"] == "generate"]
tap(len(pre) == 1 and len(gen) == 2, "one prompt row and two generate rows")
pos = lambda x: isinstance(x, (int, float)) and math.isfinite(x) and x > 0
tap(all(pos(r["rate"]) and pos(r["time_s"]) and r["samples"] >= 1 and r["unit"] == "tok/s"
        for r in rows), "every rate and time is positive, in tok/s")
tap(all(r["wrong"] == 0 for r in rows) and doc.get("wrong_total") == 0,
    "every row checked, nothing wrong")
tap(all(facts.get(k) for k in ("model", "shape", "tensor_types", "kv_dtype"))
    and facts.get("threads") == 2, "model, shape, types, kv dtype and threads reported")
sys.exit(0)
PY
chk=$?
check_merge "$tmp/chk"
[ $chk = 0 ] || failed=$((failed + 1))

"$BENCH" model --quick >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc != 0 ] && grep -q -- "-m MODEL is required" "$tmp/err"
check $? "a missing -m fails (rc $rc): $(head -n 1 "$tmp/err")"

"$BENCH" model -m "$tmp/no-such.gguf" --quick >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc != 0 ] && grep -q "no-such.gguf" "$tmp/err"
check $? "a missing model file fails, naming it (rc $rc): $(head -n 1 "$tmp/err")"

printf 'not a gguf file\n' >"$tmp/bad.gguf"
"$BENCH" model -m "$tmp/bad.gguf" --quick >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc != 0 ] && [ -s "$tmp/err" ]
check $? "a file that is not GGUF fails (rc $rc): $(head -n 1 "$tmp/err")"

check_done
