#!/usr/bin/env bash
# starring-bench model, section batch: the quick run on SmolLM2 gives one
# row per batch size (1, 2, 4 sequences), each measured against one sequence
# alone in the same run, with every sequence's greedy tokens checked against
# the largest batch's; an unknown section fails naming the ones there are.
set -u
cd "$(dirname "$0")/../.."
. tests/sh/tap.sh
need_model
make_tmp
# the quick model bench on SmolLM2, with the options given
quick() { "${BUILD:-build}/starring-bench" model -m "$MODEL" --quick "$@" >"$tmp/out" 2>"$tmp/err"; }

quick --json --only batch
rc=$?
sed 's/^/# /' "$tmp/err"
check $rc "model --quick --json --only batch exits 0"

check_json "$tmp/out" <<'PY'
rows = lambda d: [r for r in d["rows"] if r["section"] == "batch"]
CHECKS = [
    ("only batch rows: 1, 2 and 4 sequences of 2 steps",
     lambda d: len(d["rows"]) == 3 and [r["case"] for r in rows(d)] ==
               [f"decode {n} sequences x 2 steps" for n in (1, 2, 4)]),
    ("every rate positive, in tok/s, with one sequence's rate as its base",
     lambda d: all(pos(r["rate"]) and r["unit"] == "tok/s" and r["samples"] >= 1 for r in rows(d)) and
               all(r["base_rate"] == rows(d)[0]["rate"] for r in rows(d))),
    ("the ratio to one sequence: 1 for one, rate / base (to the JSON's 6 digits) for the others",
     lambda d: rows(d)[0]["ours_over_base"] == 1 and
               all(abs(r["ours_over_base"] - r["rate"] / r["base_rate"]) < 1e-5 * r["ours_over_base"] for r in rows(d))),
    ("every row checked, nothing wrong", lambda d: all(r["wrong"] == 0 for r in rows(d)) and d["wrong_total"] == 0),
]
PY

quick --only nosuch
rc=$?
[ $rc = 2 ] && grep -q -- "--only wants prompt, generate or batch, got 'nosuch'" "$tmp/err"
check $? "an unknown section fails (rc $rc): $(head -n 1 "$tmp/err")"

check_done
