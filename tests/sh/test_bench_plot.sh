#!/usr/bin/env bash
# scripts/bench-plot: the quick attention run's JSON, a bench-peer table and
# a batched-decode table become PNG charts (real PNGs, under 100 KB, one per chart); input that is
# not the benchmarks' JSON fails with a message and writes nothing.
set -u
cd "$(dirname "$0")/../.."
BENCH=${BUILD:-build}/starring-bench
. tests/sh/tap.sh
make_tmp

"$BENCH" attention --quick --json >"$tmp/attn.json" 2>"$tmp/err"
check $? "attention --quick --json exits 0"
cat >"$tmp/peer.json" <<'JSON'
{"machine": "a test machine, 2 cores", "threads": 2, "date": "2026-01-01", "llama_cpp_python": "0.0.0",
 "model": "m", "rows": [{"test": "pp512", "llama_cpp": 300.0, "starring": 795.0, "ratio": 2.65},
                        {"test": "tg64 @ d4096", "llama_cpp": 46.9, "starring": null, "ratio": null}]}
JSON
cat >"$tmp/batch.json" <<'JSON'
{"machine": "a test machine, 2 cores", "date": "2026-01-01",
 "rows": [{"concurrency": 4, "tokens_per_s": 160.0}, {"concurrency": 1, "tokens_per_s": 50.0},
          {"concurrency": 8, "tokens_per_s": 250.0}]}
JSON
scripts/bench-plot --attention "$tmp/attn.json" --peer "$tmp/peer.json" --batch "$tmp/batch.json" --out "$tmp/img" \
    >"$tmp/out" 2>"$tmp/err"
rc=$?
sed 's/^/# /' "$tmp/err"
check $rc "bench-plot exits 0"
for f in attention-prefill attention-decode peer batch-decode; do
    p="$tmp/img/$f.png"
    [ -f "$p" ] && [ "$(head -c 8 "$p" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] && [ "$(stat -c %s "$p")" -lt 102400 ]
    check $? "$f.png is a PNG under 100 KB ($(stat -c %s "$p" 2>/dev/null) bytes)"
done
grep -q "attention-decode.png" "$tmp/out"
check $? "it names what it wrote"
scripts/bench-plot --batch "$tmp/peer.json" --out "$tmp/bad" >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc != 0 ] && [ -s "$tmp/err" ] && ! ls "$tmp/bad"/*.png >/dev/null 2>&1
check $? "a batch JSON without concurrency fails with a message and no chart (rc $rc): $(head -n 1 "$tmp/err")"

printf '{"rows": 5}' >"$tmp/bad.json"
scripts/bench-plot --attention "$tmp/bad.json" --out "$tmp/bad" >"$tmp/out" 2>"$tmp/err"
rc=$?
[ $rc != 0 ] && [ -s "$tmp/err" ] && ! ls "$tmp/bad"/*.png >/dev/null 2>&1
check $? "JSON that is not a benchmark's fails with a message and no chart (rc $rc): $(head -n 1 "$tmp/err")"
scripts/bench-plot --out "$tmp/none" >"$tmp/out" 2>"$tmp/err"
[ $? = 2 ] && grep -q "give --attention" "$tmp/err"
check $? "no input is a usage error"

check_done
