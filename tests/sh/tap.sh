# TAP for the shell tests: source it, then `check STATUS WHAT` for each result
# (STATUS 0 passes), `check_merge FILE` to count TAP lines another program
# wrote (numbered on from $n), `check_json FILE` to run Python checks on a
# JSON document (tests/sh/tap_json.py), and `check_done` last (the plan and
# the exit status). `need_model` sets MODEL for the tests of the real model;
# `make_tmp` sets tmp to a new folder that is removed at exit.
n=0
failed=0
check() {
    n=$((n + 1))
    if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed + 1)); fi
}
check_merge() {
    cat "$1"
    n=$((n + $(grep -c -E '^(not )?ok ' "$1")))
    failed=$((failed + $(grep -c '^not ok ' "$1")))
}
# check_json FILE <<'PY' ... PY: the checks on stdin (a list CHECKS of
# (what, function of the document)) against the JSON in FILE; a checker that
# exits non-zero without a failed result fails too
check_json() {
    local out rc
    out=$(mktemp)
    python3 tests/sh/tap_json.py "$1" "$n" >"$out"
    rc=$?
    check_merge "$out"
    if [ "$rc" != 0 ] && ! grep -q '^not ok ' "$out"; then check 1 "the JSON checks ran to the end (exit $rc)"; fi
    rm -f "$out"
}
check_done() {
    echo "1..$n"
    [ "$failed" = 0 ]
}
# need_model: MODEL := $SR_MODEL, else the path scripts/fetch-model prints;
# when that is no readable file the test fails here and ends
need_model() {
    MODEL=${SR_MODEL:-}
    if [ -z "$MODEL" ]; then
        MODEL=$(scripts/fetch-model) || MODEL=""
        MODEL=${MODEL##*$'\n'}
    fi
    if [ ! -r "$MODEL" ]; then
        check 1 "the model '$MODEL' is readable (set SR_MODEL, or see scripts/fetch-model's message)"
        check_done
        exit 1
    fi
}
make_tmp() {
    tmp=$(mktemp -d) || exit 1
    trap 'rm -rf "$tmp"' EXIT
}
