#!/usr/bin/env bash
# build/starring, the command-line client, against starringd under mpirun
# (a coordinator and 2 workers): health, upload (plain progress lines when
# stderr is not a terminal), ask (streams), a second question that reuses
# the prefill, ls, stats --json, drop, generate -f -p, and the exit status
# and message of an unknown context.
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
MODEL=${SR_MODEL:-$(scripts/fetch-model | tail -n 1)}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
. tests/sh/tap.sh
tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
S=(--server 127.0.0.1:$port)
mpirun=(mpirun --oversubscribe -np 3)
[ "$(id -u)" = 0 ] && mpirun=(mpirun --allow-run-as-root --oversubscribe -np 3)
OMP_NUM_THREADS=1 "${mpirun[@]}" "$BUILD/starringd" --model "$MODEL" --listen 127.0.0.1:$port --http-listen off -t 1 \
    --kv-budget 40M >"$tmp/log" 2>&1 &
daemon=$!
trap 'kill "$daemon" 2>/dev/null; wait "$daemon" 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 300); do "$BUILD/starring" "${S[@]}" health >/dev/null 2>&1 && break; sleep 0.2; done
"$BUILD/starring" "${S[@]}" health >"$tmp/out"
check $? "health: $(cat "$tmp/out")"

scripts/make-passkey 40 20 31415 >"$tmp/doc"
"$BUILD/starring" "${S[@]}" upload "$tmp/doc" --mode star --chat --anchor-size 512 >"$tmp/id" 2>"$tmp/err"
rc=$?
id=$(cat "$tmp/id")
check $rc "upload prints an id ($id)"
grep -q "prefill .*/.* tokens after" "$tmp/err"
check $? "plain progress lines on stderr: $(tail -n 1 "$tmp/err")"
"$BUILD/starring" "${S[@]}" ask "$id" "What is the pass key?" --chat -n 12 >"$tmp/a1" 2>"$tmp/e1"
check $? "ask streams an answer: $(tr '\n' ' ' <"$tmp/a1")"
grep -q 31415 "$tmp/a1"
check $? "the answer has the pass key"
"$BUILD/starring" "${S[@]}" ask "$id" "What is the pass key?" --chat -n 12 >"$tmp/a2" 2>"$tmp/e2"
cmp -s "$tmp/a1" "$tmp/a2" && grep -q "prefill reused" "$tmp/e2"
check $? "a second question reuses the prefill: $(cat "$tmp/e2")"
"$BUILD/starring" "${S[@]}" ls | grep -q "^$id .*star .*ready"
check $? "ls lists it"
"$BUILD/starring" "${S[@]}" --json stats >"$tmp/stats"
python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); sys.exit(not (s["prefills"] == 1 and s["generations"] == 2 and s["contexts"] == 1))' "$tmp/stats"
check $? "stats --json: one prefill, two answers ($(cat "$tmp/stats"))"
"$BUILD/starring" "${S[@]}" drop "$id" | grep -q dropped
check $? "drop"
"$BUILD/starring" "${S[@]}" ask "$id" "again?" --chat 2>"$tmp/err" >/dev/null
rc=$?
[ $rc = 1 ] && grep -q "NOT_FOUND" "$tmp/err"
check $? "asking a dropped context exits 1 with NOT_FOUND: $(cat "$tmp/err")"
"$BUILD/starring" "${S[@]}" --json generate -f "$tmp/doc" -p "What is the pass key?" --chat -n 12 --mode star \
    --anchor-size 512 >"$tmp/g" 2>/dev/null
rc=$?
[ $rc = 0 ] && grep -q '"done"' "$tmp/g" && [ "$("$BUILD/starring" "${S[@]}" --json stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["contexts"])')" = 0 ]
check $? "generate -f -p: answered, and its context dropped after"
# blocks of 1024: the first worker holds the ~1k-token context (4 KV blocks
# of 256 tokens, 22.5 MiB of SmolLM2's KV), so one fits in --kv-budget 40M
# and two do not (with the default, one block per worker, two would fit)
id1=$("$BUILD/starring" "${S[@]}" upload "$tmp/doc" --mode star --chat --block-size 1024 --anchor-size 512 2>/dev/null)
id2=$("$BUILD/starring" "${S[@]}" upload "$tmp/doc" --mode star --chat --block-size 1024 --anchor-size 512 2>/dev/null)
"$BUILD/starring" "${S[@]}" ask "$id1" "What is the pass key?" --chat -n 4 2>"$tmp/err" >/dev/null
rc=$?
[ $rc = 1 ] && grep -q "NOT_FOUND.*evicted" "$tmp/err" && grep -q "evicting context $id1" "$tmp/log"
check $? "over --kv-budget the least recently used context is evicted, logged, and NOT_FOUND says so: $(cat "$tmp/err")"
"$BUILD/starring" "${S[@]}" ask "$id2" "What is the pass key?" --chat -n 12 2>/dev/null | grep -q 31415
check $? "the new context answers"

# SIGTERM to the coordinator ends the workers too (mpirun ends a job it is sent SIGTERM for with 1)
kill "$(sed -n 's/.*coordinator\/0\[\([0-9]*\)\].*/\1/p' "$tmp/log" | head -n 1)"
wait "$daemon"
check $? "starringd stops cleanly when its coordinator gets SIGTERM"
check_done
