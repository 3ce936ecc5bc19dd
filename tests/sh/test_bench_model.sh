#!/usr/bin/env bash
# starring-bench model: the quick run on SmolLM2 gives sane JSON (positive
# rates, every row checked, nothing wrong); a missing -m, a missing file and
# a file that is not GGUF fail with a clear message.
set -u
cd "$(dirname "$0")/../.."
BENCH=${BUILD:-build}/starring-bench
. tests/sh/tap.sh
need_model
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$BENCH" model -m "$MODEL" --quick --json >"$tmp/out" 2>"$tmp/err"
rc=$?
sed 's/^/# /' "$tmp/err"
check $rc "model --quick --json exits 0"
grep -q '^section ' "$tmp/err" && grep -q '^generate .* tok/s ' "$tmp/err"
check $? "the table goes to stderr beside the JSON"

check_json "$tmp/out" <<'PY'
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
