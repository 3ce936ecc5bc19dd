# TAP for the shell tests: source it, then `check STATUS WHAT` for each result
# (STATUS 0 passes), `check_merge FILE` to count TAP lines another program
# wrote (numbered on from $n), and `check_done` last (the plan and the exit
# status).
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
check_done() {
    echo "1..$n"
    [ "$failed" = 0 ]
}
