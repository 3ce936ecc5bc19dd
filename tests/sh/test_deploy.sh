#!/usr/bin/env bash
# deploy/: `make install` lays out the programs, units, config and docs
# (DESTDIR and PREFIX); systemd-analyze verify accepts the units (offline:
# systemd need not run; the units are installed with a real PREFIX so that
# the programs they name exist); the committed example config is what
# `starringd --print-config` writes; and the notify protocol, with a Python
# listener on a Unix datagram socket as systemd would be: starringd.service's
# command line (starringd-mpirun, a coordinator and 2 workers) sends READY=1 once
# health is SERVING, WATCHDOG=1 every quarter WATCHDOG_USEC from rank 0's event
# loop, STOPPING=1 at SIGTERM, and the script exits 0.
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
. tests/sh/tap.sh
tmp=$(mktemp -d)
daemon=""
listener=""
trap '[ -n "$daemon" ] && kill "$daemon" 2>/dev/null; [ -n "$listener" ] && kill "$listener" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT

# ------------------------------------------------------------ make install
make -s install BUILD="$BUILD" DESTDIR="$tmp/dest" >"$tmp/install.log" 2>&1
check $? "make install DESTDIR=$tmp/dest$([ -s "$tmp/install.log" ] && echo ": $(tail -n 1 "$tmp/install.log")")"
missing=""
for f in usr/local/bin/starringd usr/local/bin/starring usr/local/bin/starring-run usr/local/bin/starringd-mpirun \
         usr/local/lib/systemd/system/starringd.service usr/local/lib/systemd/system/starringd-coordinator.service \
         usr/local/lib/systemd/system/starringd-worker@.service usr/local/lib/sysusers.d/starring.conf \
         etc/starring/starringd.conf usr/local/share/doc/starring/README.md usr/local/share/doc/starring/deploy.md \
         usr/local/share/doc/starring/hosts.example usr/local/share/doc/starring/starringd.conf.example \
         usr/local/share/starring/proto/starring/v1/starring.proto; do
    [ -s "$tmp/dest/$f" ] || missing="$missing $f"
done
[ -z "$missing" ] && [ -x "$tmp/dest/usr/local/bin/starringd" ] && [ -x "$tmp/dest/usr/local/bin/starringd-mpirun" ]
check $? "the programs, units, sysusers file, config and docs are in place${missing:+; missing:$missing}"
! grep -rqs "$tmp/dest" "$tmp/dest/usr/local/lib" "$tmp/dest/usr/local/bin/starringd-mpirun"
check $? "DESTDIR is not written into the units or the script"
echo "model = /srv/model.gguf" >>"$tmp/dest/etc/starring/starringd.conf"
make -s install BUILD="$BUILD" DESTDIR="$tmp/dest" >/dev/null 2>&1
grep -q "^model = /srv/model.gguf" "$tmp/dest/etc/starring/starringd.conf" && [ -s "$tmp/dest/etc/starring/starringd.conf.new" ]
check $? "a second make install keeps the edited starringd.conf and puts the new one beside it (.new)"

p=$tmp/prefix
make -s install BUILD="$BUILD" PREFIX="$p" SYSCONFDIR="$p/etc" >"$tmp/install.log" 2>&1
grep -q "^ExecStart=$p/bin/starringd-mpirun --config $p/etc/starring/starringd.conf$" "$p/lib/systemd/system/starringd.service" &&
    ! grep -q "/usr/local\|^ExecStart=/etc" "$p"/lib/systemd/system/*.service
check $? "PREFIX and SYSCONFDIR rewrite the units' paths ($(grep ^ExecStart= "$p/lib/systemd/system/starringd.service"))"

# -------------------------------------------------- systemd-analyze verify
if ! command -v systemd-analyze >/dev/null; then
    check 1 "systemd-analyze is installed (scripts/install-deps installs systemd)"
else
    units=("$p"/lib/systemd/system/*.service)
    systemd-analyze verify --man=no "${units[@]}" >"$tmp/verify" 2>&1
    rc=$?
    [ $rc = 0 ] && [ ! -s "$tmp/verify" ]
    check $? "systemd-analyze verify: ${#units[@]} units, no complaint (exit $rc$([ -s "$tmp/verify" ] && echo ": $(head -n 3 "$tmp/verify" | tr '\n' ' ')"))"
    # the same check must see a broken unit (verify exits 0 for unknown keys: the output is what counts)
    sed 's/^ProtectSystem=strict/ProtectSytem=strict/; s/^WatchdogSec=30/WatchdogSec=soon/' \
        "$p/lib/systemd/system/starringd.service" >"$tmp/broken.service"
    systemd-analyze verify --man=no "$tmp/broken.service" >"$tmp/verify" 2>&1
    grep -q "ProtectSytem" "$tmp/verify" && grep -q "soon" "$tmp/verify"
    check $? "systemd-analyze verify reports a misspelt key and a bad value in a broken copy"
    # hardening stays where it is: systemd's own rating, offline (10 is none, under 4 is "OK")
    for u in "${units[@]}"; do
        score=$(systemd-analyze security --offline=yes "$u" 2>/dev/null | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
        python3 -c 'import sys; sys.exit(0 if sys.argv[1] and float(sys.argv[1]) <= 4.0 else 1)' "$score"
        check $? "systemd-analyze security --offline: $(basename "$u") has an exposure of 4.0 or less (${score:-no rating})"
    done
    for u in starringd.service starringd-worker@.service; do
        f=$p/lib/systemd/system/$u
        grep -q "^Type=notify$" "$f" && grep -q "^WatchdogSec=" "$f" && grep -q "^Restart=on-failure$" "$f" &&
            grep -q "^User=starring$" "$f" && grep -q "^ProtectSystem=strict$" "$f" && grep -q "^NoNewPrivileges=yes$" "$f" &&
            grep -q "^PrivateTmp=yes$" "$f" && grep -q "^StateDirectory=starring$" "$f"
        check $? "$u: Type=notify, WatchdogSec, Restart=on-failure, user starring, ProtectSystem=strict, NoNewPrivileges, PrivateTmp, StateDirectory"
    done
fi

# ------------------------------------------------------- the example config
"$BUILD/starringd" --print-config >"$tmp/conf"
cmp -s "$tmp/conf" deploy/starringd.conf
check $? "deploy/starringd.conf is 'starringd --print-config' (rewrite it with: build/starringd --print-config >deploy/starringd.conf)"
"$BUILD/starringd" --config deploy/starringd.conf --print-config | cmp -s - deploy/starringd.conf
check $? "starringd reads its example config back unchanged"

# ------------------------------------------------------------ sd_notify
need_model
cat >"$tmp/listen.py" <<'PY'
# systemd's side of sd_notify: one datagram a message; the sender's pid
# from SCM_CREDENTIALS; "SECONDS PID MESSAGE" a line, flushed.
import socket, struct, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
t0 = time.monotonic()
with open(sys.argv[2], "w") as out:
    while True:
        msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = next((struct.unpack("iII", d)[0] for lvl, typ, d in anc
                    if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS), -1)
        for line in msg.decode().split("\n"):
            out.write("%.3f %d %s\n" % (time.monotonic() - t0, pid, line))
        out.flush()
PY
python3 "$tmp/listen.py" "$tmp/notify.sock" "$tmp/notes" &
listener=$!
for _ in $(seq 50); do [ -S "$tmp/notify.sock" ] && break; sleep 0.1; done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# starringd.service's own command line and environment, on the installed
# script and config (with a model and a free port): a coordinator and 2
# workers; systemd would also set WATCHDOG_PID, to the script's pid
conf=$p/etc/starring/starringd.conf
sed -i "s|^#model =\$|model = $MODEL|; s|^listen = .*|listen = 127.0.0.1:$port|; s|^log-file =.*|log-file = $tmp/log|" "$conf"
exec_start=$(sed -n 's/^ExecStart=//p' "$p/lib/systemd/system/starringd.service")
ranks=$(sed -n 's/^Environment=STARRING_RANKS=//p' "$p/lib/systemd/system/starringd.service")
# (more ranks than this machine's cores: let Open MPI place them anyway)
NOTIFY_SOCKET=$tmp/notify.sock WATCHDOG_USEC=2000000 WATCHDOG_PID=$$ STARRING_RANKS=$ranks \
    OMPI_MCA_rmaps_base_oversubscribe=1 $exec_start >"$tmp/out" 2>&1 &
daemon=$!
for _ in $(seq 300); do grep -q " READY=1$" "$tmp/notes" 2>/dev/null && break; sleep 0.1; done
"$BUILD/starring" --server 127.0.0.1:$port health >"$tmp/health" 2>&1
grep -q " READY=1$" "$tmp/notes" && grep -q "^SERVING" "$tmp/health"
check $? "READY=1 arrives, and health is SERVING then ($(cat "$tmp/health"))"
coord=$(sed -n 's/.*coordinator\/0\[\([0-9]*\)\].*/\1/p' "$tmp/log" | head -n 1)
grep -q "^[0-9.]* $coord STATUS=SERVING with 2 workers$" "$tmp/notes"
check $? "from the coordinator (pid $coord) of the unit's $exec_start with STARRING_RANKS=$ranks: STATUS=SERVING with 2 workers"
sleep 4.5
python3 - "$tmp/notes" "$coord" <<'PY'
import sys
rows = [l.split(" ", 2) for l in open(sys.argv[1]).read().splitlines()]
beats = [float(t) for t, pid, m in rows if m == "WATCHDOG=1"]
pids = {pid for t, pid, m in rows}
gaps = [b - a for a, b in zip(beats, beats[1:])]
print("# %d keep-alives, gaps %s, senders %s" % (len(beats), ["%.1f" % g for g in gaps], sorted(pids)))
# WATCHDOG_USEC 2 s: one every second or so from the coordinator's 1 s timer, none more than 2 s apart
sys.exit(0 if len(beats) >= 3 and max(gaps) < 2.0 and pids == {sys.argv[2]} else 1)
PY
check $? "WATCHDOG=1 keeps arriving (WATCHDOG_USEC=2000000: within every 2 s), only from rank 0"
kill -TERM "$daemon"
wait "$daemon"
rc=$?
daemon=""
grep -q " STOPPING=1$" "$tmp/notes"
check $? "SIGTERM: STOPPING=1"
[ $rc = 0 ]
check $? "SIGTERM to the launch script: the cluster stops and it exits 0 (exit $rc$([ $rc != 0 ] && echo "; $(tail -n 3 "$tmp/out" | tr '\n' ' ')"))"
check_done
