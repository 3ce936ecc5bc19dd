#!/usr/bin/env bash
# starring-run's arguments at and past their limits, on a tiny model: each
# bad value exits non-zero with a message naming the option, the value and
# the allowed range; values the run can meet are clamped or run cleanly. The
# probes that once crashed (heap overflow, signed overflow, NULL to memcpy)
# come first. Under BUILD=build-san no run may print a sanitizer report.
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
RUN=$BUILD/starring-run
TOKENIZE=$BUILD/starring-tokenize
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
. tests/sh/tap.sh
make_tmp

model=$tmp/tiny.gguf # context length 4096, vocabulary 512
scripts/make-tiny-model "$model" --type F32 --layers 2 --dim 64 --heads 1 --kv-heads 1 --ffn 128 --vocab 512 >/dev/null
check $? "make-tiny-model writes a tiny model"

# expect RC WHAT PATTERN ARGS...: starring-run ARGS exits RC (nz: any non-zero)
# with PATTERN (fixed text) on stderr and no sanitizer report
expect() {
    local want=$1 what=$2 pattern=$3
    shift 3
    timeout 300 "$RUN" -m "$model" -t 1 "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    local ok=0
    if [ "$want" = nz ]; then [ $rc -ne 0 ] && [ $rc -ne 124 ] || ok=1; else [ $rc = "$want" ] || ok=1; fi
    grep -q -F -- "$pattern" "$tmp/err" || ok=1
    ! grep -q -E "runtime error|AddressSanitizer|LeakSanitizer" "$tmp/err" || ok=1
    [ $ok = 0 ] || sed 's/^/# /' "$tmp/err" | head -n 5
    check $ok "$what (exit $rc)"
}

# the probes that crashed or misbehaved
expect nz "--random-context 2^62 is refused before anything is allocated" \
    "--random-context: the prompt has 4611686018427387904 tokens but the context window holds 4096 (the model's trained" \
    --random-context 4611686018427387904
expect 2 "--batch 2^62 is out of range" "--batch: 4611686018427387904 is out of range (1..1048576)" \
    --batch 4611686018427387904 -p hi
expect nz "--ids 4294967297 is no token" "--ids: 4294967297 is out of range (0..511)" --ids 4294967297
expect 2 "--threads 10000 names its limit" "--threads: 10000 is out of range (1..4096)" --threads 10000 -p hi
expect 0 "-n 0 generates nothing, cleanly" "generated 0 tokens" -n 0 -p hi
expect 0 "-n 10^9 is clamped to the context window" \
    "-n 1000000000 clamped to 4095: the context window holds 4096 tokens (the model's trained context length; --ctx-size" \
    -n 1000000000 --ids 7
generated=$(sed -n 's/.*generated \([0-9]*\) tokens.*/\1/p' "$tmp/err")
[ "${generated:-99999}" -le 4095 ]
check $? "-n 10^9 generates at most 4095 tokens (${generated:-?})"

# the context window and the KV budget, before prefill
expect nz "a prompt longer than --ctx-size" "--ids: the prompt has 4 tokens but the context window holds 3 (--ctx-size" \
    --ctx-size 3 --ids "1 2 3 4"
expect nz "a context and question longer than --ctx-size" \
    "the prompt has 6 tokens (4 of context, 2 of question) but the context window holds 4 (--ctx-size, 1.." \
    --ctx-size 4 --ids "1 2 3 4" -p hi
expect 0 "--ctx-size clamps generation" "-n 128 clamped to 2: the context window holds 6 tokens (--ctx-size, 1.." \
    --ctx-size 6 --ids "1 2 3 4"
expect 0 "--ctx-size past the trained length is allowed" "prompt 5000 tokens" --ctx-size 6000 --random-context 5000 -n 1
expect nz "the KV budget" "the KV budget is 1 MiB (--kv-budget)" --ctx-size 100000 --random-context 90000 --kv-budget 1

# every other bound
expect 2 "-n below 0" "--n-predict: -1 is out of range (0 or more)" -n -1 -p hi
expect 2 "--top-p 0" "--top-p: 0 is out of range (0 excluded..1)" --top-p 0 -p hi
expect 2 "--temp nan" "--temp: nan is out of range (at least 0)" --temp nan -p hi
expect 2 "--repeat-penalty 0" "--repeat-penalty: 0 is out of range (above 0)" --repeat-penalty 0 -p hi
expect 2 "--block-size 0" "--block-size: 0 is out of range (1..16777216)" --block-size 0 -p hi
expect 2 "--seed overflowing 64 bits" "--seed: 99999999999999999999 is out of range (0 or more)" \
    --seed 99999999999999999999 -p hi
expect 2 "-n with text after the number" "--n-predict: '12x' is not an integer" -n 12x -p hi
expect nz "--ids with a word in the list" "--ids: 'x' is not an integer" --ids "1,2,x"
expect nz "--ids empty" "--ids: the list is empty" --ids ","
expect 2 "--kv-type f8" "--kv-type: 'f8' is not f16, bf16 or f32" --kv-type f8 -p hi
expect 2 "--mode ringg" "--mode: 'ringg' is not full, ring, star or cad" --mode ringg -p hi
expect 2 "--mode cad without --attn-servers" "--mode cad and --attn-servers K (1 or more) go together" --mode cad -p hi
expect 2 "--attn-servers without --mode cad" "--mode cad and --attn-servers K (1 or more) go together" \
    --attn-servers 1 -p hi
expect 2 "--mode cad in one process" "--mode cad runs under mpirun" --mode cad --attn-servers 1 -p hi
"$RUN" -m "$model" --plan-docs "100 50" --attn-servers 2 --block-size 16 >"$tmp/plan" 2>"$tmp/err" &&
    grep -q -F "cad plan: 2 documents, 150 tokens, 2 servers, chunk " "$tmp/plan" &&
    [ "$(grep -c '^cad plan server ' "$tmp/plan")" = 2 ]
check $? "--plan-docs prints the plan of two documents over 2 servers, a line per server"
expect 2 "--plan-docs without --attn-servers" "--plan-docs needs --attn-servers K and one process" --plan-docs 100
expect 2 "an unknown option" "unknown option '--bogus'" --bogus
expect 2 "an option without its argument" "--dump-positions needs an argument" -p hi --dump-positions
expect nz "--dump-positions past the prompt" "--dump-positions: 9 is out of range (0..2)" \
    --ids "1 2 3" --dump-logits "$tmp/logits" --dump-positions 1,9

# a context file is read to its last byte: a NUL byte is encoded, not an end
printf 'The pass key is 123.\0 After the NUL byte the text goes on.' >"$tmp/nul.txt"
want=$("$TOKENIZE" -m "$model" -f "$tmp/nul.txt" | wc -w)
expect 0 "-f with a NUL byte runs" "prompt " -f "$tmp/nul.txt" -n 1
got=$(sed -n 's/.*prompt \([0-9]*\) tokens.*/\1/p' "$tmp/err")
[ "${got:-0}" = "$want" ] && [ "$want" -gt 10 ]
check $? "-f encodes every byte of a file with a NUL byte ($got tokens, starring-tokenize: $want)"
want=$("$TOKENIZE" -m "$model" -f "$tmp/nul.txt" --chat | wc -w)
expect 0 "-f --chat with a NUL byte runs" "prompt " -f "$tmp/nul.txt" --chat -n 1
got=$(sed -n 's/.*prompt \([0-9]*\) tokens.*/\1/p' "$tmp/err")
[ "${got:-0}" = "$want" ]
check $? "-f --chat keeps every byte too ($got tokens, starring-tokenize --chat: $want)"

# --help: every option with its default and range
"$RUN" --help >"$tmp/help"
check $? "--help exits 0"
missing=""
for opt in model prompt file ids random-context n-predict ctx-size kv-budget chat system temp top-k top-p \
    repeat-penalty seed threads kv-type block-size batch mode attn-servers cad-serial anchor-size transport stop \
    dump-logits dump-positions plan-docs help; do
    grep -q -- "--$opt" "$tmp/help" || missing="$missing --$opt"
done
[ -z "$missing" ]
check $? "--help lists every option${missing:+; missing:$missing}"
grep -q -F "(default 128; 0 or more)" "$tmp/help" && grep -q -F "(default all cores; 1..4096)" "$tmp/help" &&
    grep -q -F "(default 512; 1..1048576)" "$tmp/help"
check $? "--help gives defaults and ranges"

check_done
