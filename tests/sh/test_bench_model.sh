#!/usr/bin/env bash
# starring-bench model: the quick run on SmolLM2 gives sane JSON (positive
# rates, every row checked, nothing wrong); a missing -m, a missing file and
# a file that is not GGUF fail with a clear message.
set -u
cd "$(dirname "$0")/../.."
BENCH=${BUILD:-build}/starring-bench
. tests/sh/tap.sh
need_model
make_tmp

"$BENCH" model -m "$MODEL" --quick --json >"$tmp/out" 2>"$tmp/err"
rc=$?
sed 's/^/# /' "$tmp/err"
check $rc "model --quick --json exits 0"
grep -q '^section ' "$tmp/err" && grep -q '^generate .* tok/s ' "$tmp/err"
check $? "the table goes to stderr beside the JSON"

check_json "$tmp/out" <<'PY'
import re
rows = lambda d, section: [r for r in d["rows"] if r["section"] == section]
CHECKS = [
    ("one prompt row and two generate rows",
     lambda d: len(rows(d, "prompt")) == 1 and len(rows(d, "generate")) == 2),
    ("every rate and time is positive, in tok/s",
     lambda d: d["rows"] and all(pos(r["rate"]) and pos(r["time_s"]) and r["samples"] >= 1 and r["unit"] == "tok/s"
                                 for r in d["rows"])),
    ("every row checked, nothing wrong", lambda d: all(r["wrong"] == 0 for r in d["rows"]) and d["wrong_total"] == 0),
    ("model, shape, types, kv dtype and threads reported",
     lambda d: all(d["facts"][k] for k in ("model", "shape", "tensor_types", "kv_dtype")) and d["facts"]["threads"] == 2),
    ("the machine and the date of the run", lambda d: d["machine"] and re.match(r"\d{4}-\d\d-\d\dT", d["date"])),
    # SmolLM2-135M Q4_1: 30 layers of Q4_1 matrices and a tied Q8_0 output, ~96 MB a token
    ("the bytes a token reads: SmolLM2's weights, 23.6 MB of f16 KV per 1k of depth",
     lambda d: 90 < d["facts"]["token_weight_mb"] < 100 and abs(d["facts"]["token_kv_mb_per_1k_depth"] - 23.59) < 0.01),
    ("each generate row against its read-bandwidth ceiling, measured beside it",
     lambda d: all(pos(r["ours_over_ceiling"]) for r in rows(d, "generate")) and
               all(pos(d["facts"][f"read_gbs_depth_{n}"]) and pos(d["facts"][f"ceiling_tok_s_depth_{n}"]) for n in (0, 64))),
]
PY

"$BENCH" model --quick >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc != 0 ] && grep -q -- "-m MODEL is required" "$tmp/err"
check $? "a missing -m fails (rc $rc): $(head -n 1 "$tmp/err")"

"$BENCH" model -m "$tmp/no-such.gguf" --quick >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc != 0 ] && grep -q "no-such.gguf" "$tmp/err"
check $? "a missing model file fails, naming it (rc $rc): $(head -n 1 "$tmp/err")"

# longer than a GGUF header, so that the magic is what is wrong
printf 'this is a text file, not a GGUF model\n' >"$tmp/bad.gguf"
"$BENCH" model -m "$tmp/bad.gguf" --quick >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc != 0 ] && grep -q "bad.gguf: not a GGUF file (magic is 74 68 69 73" "$tmp/err"
check $? "a file that is not GGUF fails, saying so (rc $rc): $(head -n 1 "$tmp/err")"
printf 'GGUF\n' >"$tmp/short.gguf"
"$BENCH" model -m "$tmp/short.gguf" --quick >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc != 0 ] && grep -q "short.gguf: file is 5 bytes, too small for a GGUF header" "$tmp/err"
check $? "a file shorter than a GGUF header fails, saying so (rc $rc): $(head -n 1 "$tmp/err")"

check_done
