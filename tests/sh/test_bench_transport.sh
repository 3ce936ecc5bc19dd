#!/usr/bin/env bash
# starring-bench transport under a real mpirun -np 2: the quick run gives a
# pingpong and a stream row per size for each of mpi, ucx and tcp, with
# positive rates, mpi as every row's baseline and no wrong byte; --only keeps
# one backend; one rank and an unknown backend fail with a clear message.
set -u
cd "$(dirname "$0")/../.."
BENCH=${BUILD:-build}/starring-bench
. tests/sh/tap.sh
make_tmp
# as tests/run starts the mpi tests: Open MPI's leaks at exit suppressed under ASan
export LSAN_OPTIONS=${LSAN_OPTIONS:+$LSAN_OPTIONS:}suppressions=$PWD/tests/support/lsan-openmpi.supp:fast_unwind_on_malloc=0
MPIRUN=(mpirun --oversubscribe)
[ "$(id -u)" = 0 ] && MPIRUN=(mpirun --allow-run-as-root --oversubscribe)

timeout 300 "${MPIRUN[@]}" -np 2 "$BENCH" transport --quick --json >"$tmp/out" 2>"$tmp/err"
rc=$?
sed 's/^/# /' "$tmp/err"
check $rc "transport --quick --json under mpirun -np 2 exits 0"

check_json "$tmp/out" <<'PY'
SIZES = ["8 B", "64 B", "512 B", "4 KiB", "32 KiB"]
def cases(d, be):
    return sorted(r["case"] for r in d["rows"] if r["section"] == be)
want = sorted(k + " " + s for k in ("pingpong", "stream") for s in SIZES)
CHECKS = [
    ("mpi, ucx and tcp each have a pingpong and a stream row for 8 B .. 32 KiB",
     lambda d: all(cases(d, be) == want for be in ("mpi", "ucx", "tcp")) and len(d["rows"]) == 3 * len(want)),
    ("rates and times are positive, pingpong in us and stream in GB/s",
     lambda d: all(pos(r["rate"]) and pos(r["time_s"]) and r["unit"] == ("us" if r["case"].startswith("pingpong") else "GB/s")
                   for r in d["rows"])),
    ("mpi is every row's baseline",
     lambda d: all(pos(r["base_rate"]) and pos(r["ours_over_base"]) for r in d["rows"])),
    ("every row checked, nothing wrong", lambda d: all(r["wrong"] == 0 for r in d["rows"]) and d["wrong_total"] == 0),
]
PY

timeout 300 "${MPIRUN[@]}" -np 2 "$BENCH" transport --quick --json --only ucx >"$tmp/out" 2>"$tmp/err"
check $? "--only ucx exits 0"
check_json "$tmp/out" <<'PY'
CHECKS = [
    ("--only ucx gives ucx rows only, without a baseline",
     lambda d: d["rows"] and all(r["section"] == "ucx" and r["base_rate"] is None for r in d["rows"])),
]
PY

timeout 120 "${MPIRUN[@]}" -np 1 "$BENCH" transport --quick >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc != 0 ] && grep -q "needs 2 ranks (mpirun -np 2), not 1" "$tmp/err"
check $? "one rank fails, saying it needs two (rc $rc)"

"$BENCH" transport --only carrier-pigeon >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc != 0 ] && grep -q "'carrier-pigeon' is not mpi, ucx or tcp" "$tmp/err"
check $? "an unknown backend fails, naming it (rc $rc)"

check_done
