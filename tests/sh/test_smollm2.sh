#!/usr/bin/env bash
# SmolLM2 end to end through build/starring-run, greedy: a factual question
# under the chat template, and a passkey hidden in ~4k tokens of filler.
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
RUN=$BUILD/starring-run
# threads sleep at barriers instead of spinning: on a machine shared with
# other tests a spinning OpenMP team waits out whole time slices
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
. tests/sh/tap.sh
need_model
make_tmp

# 1. the capital of France
"$RUN" -m "$MODEL" --chat -p "What is the capital of France?" -n 32 --temp 0 -t 2 >"$tmp/out" 2>"$tmp/err"
rc=$?
echo "# answer: $(tr '\n' ' ' <"$tmp/out" | cut -c1-200)"
check $rc "starring-run exits 0"
grep -q "Paris" "$tmp/out"
check $? "the answer names Paris"
grep -q -E "prompt [0-9]+ tokens .* tok/s.*generated [0-9]+ tokens .* tok/s" "$tmp/err"
check $? "timing line on stderr: $(tail -n 1 "$tmp/err")"
cp "$tmp/out" "$tmp/paris"

# 2. a passkey in ~4k tokens of filler
key=68413
{ scripts/make-passkey 165 90 $key; printf '\nWhat is the pass key?'; } >"$tmp/prompt"
"$RUN" -m "$MODEL" --chat -f "$tmp/prompt" -n 16 --temp 0 -t 2 >"$tmp/out" 2>"$tmp/err"
rc=$?
echo "# answer: $(tr '\n' ' ' <"$tmp/out" | cut -c1-200)"
echo "# $(tail -n 1 "$tmp/err")"
check $rc "starring-run exits 0 on the passkey prompt"
prompt_tokens=$(sed -n 's/.*prompt \([0-9]*\) tokens.*/\1/p' "$tmp/err")
[ "${prompt_tokens:-0}" -ge 3500 ]
check $? "the passkey prompt has ~4k tokens (${prompt_tokens:-?})"
grep -q "$key" "$tmp/out"
check $? "the passkey is found"

# 3. a stop string ends the output just before it: the greedy answer of 1
# up to "Paris" ("The capital of France is "), not empty, not all of it
"$RUN" -m "$MODEL" --chat -p "What is the capital of France?" -n 32 --temp 0 -t 2 --stop "Paris" >"$tmp/out" 2>/dev/null
rc=$?
full=$(<"$tmp/paris")
cut=$(<"$tmp/out")
want=${full%%Paris*}
[ $rc = 0 ] && [ -n "$cut" ] && [ "$want" != "$full" ] && [ "$cut" = "$want" ]
check $? "--stop Paris ends the answer just before Paris: '$cut'"

check_done
