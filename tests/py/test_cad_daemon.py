"""starringd with attention servers (--attn-servers) under mpirun, through
the Python grpcio client (stubs generated from proto/ at test time):

- mpirun -np 4 with --attn-servers 1: workers 0 and 1 run the model, worker
  2 is an attention server that loads no weights (its log says so);
  GetStats and /metrics (parsed by prometheus_client) give each worker's
  role;
- a cad context answers a pass-key question with the same greedy tokens as
  a ring context over the same text; its KV is all on the attention
  server, none on the model workers (and the ring context's none on the
  server);
- a question on a cad context runs between the chunks of another cad
  context's prefill, with the same answer; two cad contexts resident at
  once, both answer; the server's KV (its own
  figures, from its heartbeats) is both contexts', and Drop frees each;
  the server's busy time grows, the model workers' stays 0;
- --mode cad as the default: a prompt without a context runs through the
  servers;
- the KV budget counts the server: a cad context whose share there is over
  --kv-budget is refused before any prefill;
- the errors: mode cad without attention servers (the request says how to
  get them), --attn-servers that leaves no model worker, --mode cad
  without servers, --attn-servers outside mpirun (at start).
"""
import os
import subprocess
import sys
import threading
import time
import urllib.request

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_support import BUILD, ROOT, code_of, Daemon, Tap, free_port, model_path, mpirun  # noqa: E402

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    text_string_to_metric_families = None

Q = "What is the pass key?"
BUDGET = 64 << 20
# one KV block of SmolLM2's caches: 256 tokens x 30 layers x K and V of 3 heads of 64 in f16
BLOCK_BYTES = 256 * 30 * 2 * 3 * 64 * 2


def passkey(repeats, key):
    return subprocess.run([os.path.join(ROOT, "scripts", "make-passkey"), str(repeats), str(repeats // 2), key],
                          capture_output=True, text=True, check=True).stdout


def server_kv(c, w, want, timeout=30):
    """Polls GetStats until worker w's KV tokens are `want` (the server's
    figures come with its heartbeats); returns the last WorkerStats."""
    t0 = time.time()
    while True:
        ws = c.stats().worker[w]
        if ws.kv_tokens == want or time.time() - t0 > timeout:
            return ws
        time.sleep(0.2)


def main():
    t = Tap()
    start_errors(t)
    mport = free_port()
    d = Daemon(3, "--attn-servers", "1", "--mode", "cad", "--max-context", "4096", "--kv-budget", str(BUDGET),
               "--metrics-listen", f"127.0.0.1:{mport}")
    try:
        run(t, d, mport)
    finally:
        rc = d.stop()
    t.check(rc == 0, f"starringd with an attention server stops cleanly on SIGTERM (exit {rc})")
    if t.failed:
        t.note(d.log_text()[-4000:])
    no_servers(t)
    return t.done()


def start_errors(t):
    """Options that leave no model worker, or cad with no servers: starringd exits before loading anything."""
    for np, args, want in [(3, ["--attn-servers", "2"], "--attn-servers: 2, allowed 0..1 (mpirun -np 3 starts 2 workers, "
                                                        "and at least one must run the model)"),
                           (2, ["--mode", "cad"], "--mode cad needs attention servers: start with mpirun and "
                                                  "--attn-servers K")]:
        p = subprocess.run(mpirun(np) + [os.path.join(ROOT, BUILD, "starringd"), "--model", model_path(),
                                         "--listen", f"127.0.0.1:{free_port()}", "--http-listen", "off"] + args,
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
        t.check(p.returncode != 0 and want in p.stdout + p.stderr,
                f"mpirun -np {np} starringd {' '.join(args)}: refused ({p.returncode}), '{want}'")
    # the cluster without mpirun has no attention servers yet
    p = subprocess.run([os.path.join(ROOT, BUILD, "starringd"), "--role", "coordinator", "--attn-servers", "1",
                        "--model", model_path()], capture_output=True, text=True, timeout=60, cwd=ROOT)
    want = "--attn-servers 1: attention servers run under mpirun for now (the last K worker ranks); --role coordinator takes 0"
    t.check(p.returncode == 2 and want in p.stderr, f"--role coordinator --attn-servers 1: refused ({p.returncode}), '{want}'")


def no_servers(t):
    d = Daemon(1)
    try:
        t.check(d.wait_serving(120), "a daemon without attention servers serves")
        c = d.client()
        code, msg = code_of(lambda: c.upload("hello", mode="cad"))
        t.check(code == grpc.StatusCode.INVALID_ARGUMENT and "--attn-servers K" in msg and c.serving(),
                f"mode cad without attention servers: INVALID_ARGUMENT, naming --attn-servers K ({code.name}: {msg})")
        c.close()
    finally:
        d.stop()


def run(t, d, mport):
    t.check(d.wait_serving(180), "starringd with --attn-servers 1 serves")
    t.check(d.wait_log("worker 2 of 3: attention server 0 of 1 (no weights loaded)", timeout=10),
            "worker 2 logs its role: an attention server, no weights loaded")
    c = d.client()
    st = c.stats()
    roles = [w.role for w in st.worker]
    t.check(st.workers == 3 and st.attn_servers == 1 and roles == ["model", "model", "attn"] and
            all(w.up for w in st.worker), f"GetStats: 3 workers, roles {roles}, 1 attention server, all up")

    text1, text2 = passkey(30, "72941"), passkey(20, "31337")
    t0 = time.time()
    cad1 = c.upload(text1, mode="cad", chat=True)
    t.note(f"cad prefill of {cad1.n_tokens} tokens: {time.time() - t0:.1f} s (under load)")
    shards = {s.worker: s for s in cad1.shards}
    t.check(cad1.state == "ready" and cad1.mode == "cad" and shards[0].kv_tokens == 0 and shards[1].kv_tokens == 0 and
            shards[0].kv_bytes == 0 and shards[1].kv_bytes == 0,
            f"a cad context ({cad1.n_tokens} tokens): the model workers hold 0 of its KV")
    t.check(shards[2].kv_tokens == cad1.n_tokens and shards[2].kv_bytes == -(-cad1.n_tokens // 256) * BLOCK_BYTES,
            f"the attention server holds all of it ({shards[2].kv_tokens} tokens, {shards[2].kv_bytes} bytes)")
    ids_cad, text_cad, _ = c.generate(Q, context_id=cad1.id, chat=True, max_tokens=12)
    t0 = time.time()
    ring = c.upload(text1, mode="ring", chat=True)
    t.note(f"ring prefill of {ring.n_tokens} tokens: {time.time() - t0:.1f} s (under load)")
    rs = {s.worker: s.kv_tokens for s in ring.shards}
    t.check(sorted(rs) == [0, 1] and rs[0] + rs[1] == ring.n_tokens,
            f"a ring context is placed on the model workers alone ({rs})")
    ids_ring, text_ring, _ = c.generate(Q, context_id=ring.id, chat=True, max_tokens=12)
    t.note(f"cad: {text_cad!r} {ids_cad}; ring: {text_ring!r} {ids_ring}")
    t.check(len(ids_cad) >= 5 and ids_cad == ids_ring,
            f"cad answers with the ring context's greedy tokens ({len(ids_cad)} tokens, to the end of the answer)")
    t.check("72941" in text_cad, "and finds the pass key")
    c.drop(ring.id)

    # the second prefills while a question on the first runs between its chunks (the servers take
    # the first's steps between the second's layers)
    box, started = {}, threading.Event()

    def upload():
        c2 = d.client()
        box["ctx"] = c2.upload(text2, mode="cad", chat=True, on_progress=lambda dn, tot: dn > 0 and started.set())
        box["t"] = time.time()
        c2.close()

    th = threading.Thread(target=upload)
    th.start()
    started.wait(300)
    ids1b, _, _ = c.generate(Q, context_id=cad1.id, chat=True, max_tokens=12)
    t_q = time.time()
    th.join(600)
    cad2 = box.get("ctx")
    t.check(cad2 is not None and ids1b == ids_cad and t_q < box.get("t", 0),
            f"a question on a cad context during another's prefill answers as before, before that prefill ends "
            f"({box.get('t', 0) - t_q:.1f} s before)")
    _, text2a, _ = c.generate(Q, context_id=cad2.id, chat=True, max_tokens=12)
    t.check("31337" in text2a, f"two cad contexts resident at once both answer ({text2a!r})")
    both = server_kv(c, 2, cad1.n_tokens + cad2.n_tokens)
    t.check(both.kv_tokens == cad1.n_tokens + cad2.n_tokens and both.contexts == 2,
            f"the server holds both contexts' KV ({both.kv_tokens} tokens, {both.kv_bytes} bytes, {both.contexts} contexts)")
    st = c.stats()
    busy = st.worker[2].busy_s
    t.check(busy > 0 and st.worker[0].busy_s == 0 and st.worker[1].busy_s == 0,
            f"the server's busy time ({busy:.2f} s) grows, the model workers' stays 0")

    if text_string_to_metric_families is None:
        t.check(True, "# SKIP the prometheus_client package is not installed (scripts/install-deps)")
    else:
        body = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=30).read().decode()
        samples = {(s.name, frozenset(s.labels.items())): s.value
                   for f in text_string_to_metric_families(body) for s in f.samples}
        role = {dict(k[1])["worker"]: dict(k[1])["role"] for k, v in samples.items()
                if k[0] == "starring_worker_role" and v == 1}
        mbusy = samples.get(("starring_attention_busy_seconds_total", frozenset({"worker": "2"}.items())), 0)
        t.check(role == {"0": "model", "1": "model", "2": "attn"} and mbusy > 0,
                f"/metrics: starring_worker_role {role}, attention busy {mbusy:.2f} s")

    c.drop(cad1.id)
    one = server_kv(c, 2, cad2.n_tokens)
    t.check(one.kv_tokens == cad2.n_tokens and one.kv_bytes < both.kv_bytes,
            f"Drop frees the first context's KV on the server ({one.kv_tokens} tokens left, {one.kv_bytes} bytes)")
    c.drop(cad2.id)
    none = server_kv(c, 2, 0)
    t.check(none.kv_tokens == 0 and none.kv_bytes == 0, f"and the second's ({none.kv_tokens} tokens, {none.kv_bytes} bytes)")

    # --mode cad is the default: a prompt without a context goes through the servers
    _, ans, done = c.generate("The capital of France is", max_tokens=4)
    t.check(done is not None and ans and d.wait_log(", cad mode, prefill sent to 2 workers", timeout=5) and
            len([ln for ln in d.log_text().splitlines() if ", cad mode, prefill sent" in ln]) == 3,
            f"--mode cad: a prompt without a context is prefilled in cad mode and answered ({ans!r})")

    code, msg = code_of(lambda: c.upload(tokens=[1] * 3000))
    # the coordinator's estimate of the server's share: 12 blocks, as a lone server fills them
    t.check(code == grpc.StatusCode.RESOURCE_EXHAUSTED and f"needs {12 * BLOCK_BYTES} bytes of KV on worker 2" in msg and
            "--kv-budget" in msg and
            c.stats().prefills == 4, f"a cad context over the server's budget is refused before its prefill ({msg})")
    c.close()


if __name__ == "__main__":
    sys.exit(main())
