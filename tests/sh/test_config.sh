#!/usr/bin/env bash
# starringd's configuration, signals and logs, on a real cluster under
# deploy/starringd-mpirun (a coordinator and a worker) with the build/starring
# client: a --config file's errors stop the start with one message naming
# the file, line, key, value and range; the file's values apply and a flag
# overrides them; every log line has time, level, role, rank and pid;
# SIGHUP reopens --log-file (as after logrotate); SIGTERM lets a running
# answer finish while new requests get UNAVAILABLE and health is
# NOT_SERVING, then exits 0; with a short --shutdown-grace a long answer is
# cancelled with UNAVAILABLE and the cluster still exits 0; and SIGTERM to
# every rank at once ends the job with 0 too.
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
. tests/sh/tap.sh
need_model
tmp=$(mktemp -d)
daemon=""
trap '[ -n "$daemon" ] && kill "$daemon" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
export STARRINGD=$BUILD/starringd
launch=(deploy/starringd-mpirun -n 2 -- --oversubscribe --)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pid_of() { sed -n "s|.*$1\\[\\([0-9]*\\)\\].*|\\1|p" "$2" | head -n 1; }
# until the API on 127.0.0.1:PORT answers health (a minute at most)
await_api() { for _ in $(seq 300); do "$BUILD/starring" --server 127.0.0.1:$1 health >/dev/null 2>&1 && return; sleep 0.2; done; }
# waits for the cluster signalled at t0 to exit: its status in rc, the seconds since t0 in took
cluster_exit() {
    wait "$daemon"
    rc=$?
    daemon=""
    took=$(($(date +%s) - t0))
}

# --------------------------------------------------------- errors at start
printf 'model = %s\n# a comment\nthreads = 2\nlisten-port = 7070\n' "$MODEL" >"$tmp/bad.conf"
"${launch[@]}" --config "$tmp/bad.conf" >"$tmp/out" 2>&1
rc=$?
[ $rc != 0 ] && [ "$(grep -c "^starringd: $tmp/bad.conf:4: unknown key 'listen-port'" "$tmp/out")" = 1 ]
check $? "an unknown key stops the start (exit $rc) with one message naming file and line: $(grep starringd: "$tmp/out")"
printf 'model = %s\nmax-message = 2G\n' "$MODEL" >"$tmp/bad.conf"
"${launch[@]}" --config "$tmp/bad.conf" >"$tmp/out" 2>&1
rc=$?
[ $rc != 0 ] && grep -q "^starringd: $tmp/bad.conf:2: max-message = '2G' is out of range: allowed is a byte count 1024..1073741824" "$tmp/out"
check $? "an out-of-range value names the key, the value and the range (exit $rc): $(grep starringd: "$tmp/out")"

# ------------------------------------------- the file applies, flags win
port=$(free_port)
cat >"$tmp/good.conf" <<EOF
model = $MODEL
listen = 127.0.0.1:$port
threads = 1
log-level = error   # the flag below says info
log-file = $tmp/log
shutdown-grace = 30
EOF
"${launch[@]}" --config "$tmp/good.conf" --log-level info >"$tmp/out" 2>&1 &
daemon=$!
S=(--server 127.0.0.1:$port)
await_api $port
"$BUILD/starring" "${S[@]}" health >"$tmp/health" 2>&1
grep -q "^SERVING" "$tmp/health"
check $? "the API listens on the file's port ($port): $(cat "$tmp/health")"
grep -q " INFO  coordinator/0\[" "$tmp/log"
check $? "--log-level info on the command line overrides the file's error, and the log goes to the file's log-file"
coord=$(pid_of "coordinator/0" "$tmp/log")
worker=$(pid_of "worker/1" "$tmp/log")
python3 - "$tmp/log" <<'PY'
import re, sys
line = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (ERROR|WARN |INFO |DEBUG) (coordinator/0|worker/1)\[\d+\] \S+:\d+: ")
rows = open(sys.argv[1]).read().splitlines()
bad = [r for r in rows if not line.match(r)]
print("# %d lines, %d without time, level, role/rank[pid] %s" % (len(rows), len(bad), bad[:2]))
sys.exit(0 if rows and not bad else 1)
PY
check $? "every log line has the time, level, role/rank and [pid]"

# ------------------------------------------------------ SIGHUP reopens
mv "$tmp/log" "$tmp/log.1"
kill -HUP "$daemon" # the launch script passes it to the ranks
sleep 0.5
echo "The quick brown fox jumps over the lazy dog." >"$tmp/ctx"
id=$("$BUILD/starring" "${S[@]}" upload "$tmp/ctx" 2>/dev/null)
for _ in $(seq 50); do grep -q "ready:" "$tmp/log" 2>/dev/null && break; sleep 0.1; done
grep -q "coordinator/0\[$coord\].*context $id ready" "$tmp/log" && grep -q "worker/1\[$worker\].*context $id" "$tmp/log" &&
    ! grep -q "context $id" "$tmp/log.1"
check $? "SIGHUP: coordinator and worker write to a new --log-file, the moved one gets nothing more"

# ---------------------------------- SIGTERM: the running answer finishes
"$BUILD/starring" "${S[@]}" ask "$id" "Tell a long story about a dragon." -n 200 >"$tmp/a1" 2>"$tmp/e1" &
asker=$!
sleep 1.5
t0=$(date +%s)
kill -TERM "$daemon"
sleep 0.3
"$BUILD/starring" "${S[@]}" ask "$id" "And then?" -n 4 >/dev/null 2>"$tmp/e2"
rc=$?
[ $rc = 1 ] && grep -q "UNAVAILABLE: the server is shutting down" "$tmp/e2"
check $? "after SIGTERM a new request gets UNAVAILABLE: $(cat "$tmp/e2")"
"$BUILD/starring" "${S[@]}" health >"$tmp/health" 2>&1
grep -q "^NOT_SERVING" "$tmp/health"
check $? "and health is NOT_SERVING: $(cat "$tmp/health")"
wait "$asker"
rc=$?
[ $rc = 0 ] && grep -q "^starring: 200 tokens" "$tmp/e1"
check $? "the answer running at SIGTERM finishes (exit $rc): $(cat "$tmp/e1")"
cluster_exit
[ $rc = 0 ] && [ "$took" -lt 30 ]
check $? "then the cluster exits 0 (exit $rc), without waiting out the 30 s grace (${took} s)"
grep -q "coordinator/0.*stopping" "$tmp/log" && ! grep -q "cancelling" "$tmp/log"
check $? "nothing was cancelled"

# ----------------------- SIGTERM with a short grace: the rest is cancelled
port=$(free_port)
S=(--server 127.0.0.1:$port)
"${launch[@]}" --config "$tmp/good.conf" --listen 127.0.0.1:$port --shutdown-grace 1 --log-level info --log-file "$tmp/log2" >"$tmp/out" 2>&1 &
daemon=$!
await_api $port
id=$("$BUILD/starring" "${S[@]}" upload "$tmp/ctx" 2>/dev/null)
"$BUILD/starring" "${S[@]}" ask "$id" "Tell a long story about a dragon." -n 4000 >"$tmp/a1" 2>"$tmp/e1" &
asker=$!
sleep 1.5
t0=$(date +%s)
kill -TERM "$daemon"
wait "$asker"
rc=$?
[ $rc = 1 ] && grep -q "UNAVAILABLE: the server shut down before this request finished (--shutdown-grace 1 s)" "$tmp/e1"
check $? "with --shutdown-grace 1 a long answer is cancelled with UNAVAILABLE: $(cat "$tmp/e1")"
cluster_exit
[ $rc = 0 ] && [ "$took" -lt 10 ] && grep -q "WARN  coordinator/0.*1 requests still running after the 1 s grace" "$tmp/log2"
check $? "and the cluster exits 0 (exit $rc) within seconds (${took} s), saying what it cancelled: $(grep -m 1 "grace" "$tmp/log2")"

# ------------- SIGTERM to every rank at once (systemd's control-group kill,
# a batch scheduler): the workers' own shutdown must not make it a kill;
# before the fix, half of such runs ended with "exited on signal 15"
mpirun=(mpirun --oversubscribe -np 3)
[ "$(id -u)" = 0 ] && mpirun=(mpirun --allow-run-as-root --oversubscribe -np 3)
codes=""
for i in 1 2 3; do
    port=$(free_port)
    "${mpirun[@]}" "$BUILD/starringd" --model "$MODEL" --listen 127.0.0.1:$port --log-level warn >"$tmp/out" 2>&1 &
    daemon=$!
    await_api $port
    pkill -TERM -P "$daemon"
    wait "$daemon"
    codes="$codes $?"
    daemon=""
done
[ "$codes" = " 0 0 0" ]
check $? "SIGTERM to all three ranks at once, three times: mpirun exits 0 each time (exits:$codes)"
check_done
