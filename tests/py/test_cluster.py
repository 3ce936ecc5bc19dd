"""starringd without mpirun: `--role coordinator` and two `--role worker
--join` as separate processes on loopback, through a Python grpcio client.

- health is NOT_SERVING until both workers have proved the cluster secret,
  loaded the model and opened the ucx data plane (addresses exchanged
  through the coordinator), then SERVING;
- a context in ring mode, over the two workers, answers greedily with
  exactly the text of single-process starring-run on the same input;
- a worker with another secret is refused, with the peer's address in the
  coordinator's log, and exits non-zero; the cluster keeps serving;
- a connection to the cluster port that never answers the challenge is
  dropped after --join-timeout;
- a secret file others can read is refused at start, naming the file;
- a worker killed (SIGKILL) mid-generation: that request ends UNAVAILABLE
  naming the worker, a later one on its context NOT_FOUND; the cluster
  keeps serving on the worker left (a new request is placed on it alone),
  which drops the lost context and stays joined; a restarted worker joins,
  and a new context on both answers as starring-run;
- a worker lost during the join: the others are told to rejoin at once;
- a worker stopped (SIGSTOP) is dropped after 10 missed heartbeats, and
  rejoins once continued;
- the coordinator killed (SIGKILL) mid-generation: that request ends
  UNAVAILABLE, so does a new one while it is down (no hang); restarted on
  the same ports, the workers join it again (saying their contexts are
  gone) and it answers as starring-run;
- SIGTERM to the coordinator: it exits 0 and the workers leave by
  themselves;
- --transport tcp, the workers' --data-listen through the coordinator:
  ring answers as starring-run too."""
import os
import re
import signal
import socket
import sys
import tempfile
import time

import grpc

sys.path.insert(0, os.path.dirname(__file__))
from daemon_support import (code_of, Cluster, Proc, Tap, free_port, model_path, passkey_context,  # noqa: E402
                            reference_run, secret_file)

KEY = "72941"
Q = "What is the pass key?"
JOIN_TIMEOUT = 3


def main():
    t = Tap()
    tmp = tempfile.mkdtemp(prefix="starring-cluster-")
    # ~1.2k tokens: ring over 2 workers, short enough for a quick test
    ctx_path = os.path.join(tmp, "ctx.txt")
    ctx_text = passkey_context(ctx_path, "50")
    ref = reference_run(ctx_path, Q)

    # a world-readable secret is refused before anything starts
    loose = os.path.join(tmp, "loose.key")
    with open(loose, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(loose, 0o644)
    p = Proc("loose", ["--role", "coordinator", "--model", model_path(), "--cluster-listen", "127.0.0.1:1",
                       "--cluster-secret-file", loose])
    rc = p.wait(30)
    t.check(rc == 2 and "--cluster-secret-file" in p.log_text() and "chmod 600" in p.log_text(),
            f"a secret file of mode 644 is refused at start (exit {rc}: {p.log_text().strip()[-200:]!r})")

    # a worker lost during the join: the others are told to join again at once, with the reason
    part = Cluster(tmp, 3, "--join-timeout", str(JOIN_TIMEOUT))
    try:
        part.wait_port(part.cluster_port)
        a, b = part.start_worker(), part.start_worker()
        ok = all(w.wait_log("proved the cluster secret", 30) for w in (a, b))
        time.sleep(0.5)
        a.stop(signal.SIGKILL)
        ok = ok and b.wait_log("asks this worker to join again", 20)
        t0 = time.time()
        while b.log_text().count("both proved the cluster secret") < 2 and time.time() - t0 < 20:
            time.sleep(0.05)
        t.check(ok and b.alive() and re.search(r"worker \d is gone \(.*\): it left during the join", b.log_text()) and
                b.log_text().count("both proved the cluster secret") == 2,
                f"a worker lost during the join: the others are told to rejoin at once, saying why, and do "
                f"({b.log_text().strip()[-200:]!r})")
        t.check(part.coordinator.alive(), "and the coordinator keeps running")
    finally:
        rc, wrc = part.stop()
    t.check(wrc[1] == 0, f"and the worker asked to rejoin leaves when the coordinator stops (exit {wrc[1]})")

    cl = Cluster(tmp, 2, "--heartbeat", "0.2", "--join-timeout", str(JOIN_TIMEOUT), "--max-context", "4096")
    ref_text = None
    try:
        ref_text = run(t, cl, ctx_text, ref, tmp)
    finally:
        ref.kill()
        rc, wrc = cl.stop()
    t.check(rc == 0, f"the coordinator stops cleanly on SIGTERM (exit {rc})")
    t.check(all(r is not None for r in wrc), f"the workers that were left exit by themselves ({wrc})")
    if t.failed:
        t.note(cl.logs())

    # the tcp data plane: each worker's --data-listen goes to the others through the coordinator
    tc = Cluster(tmp, 2, "--transport", "tcp", "--max-context", "4096")
    try:
        tc.wait_port(tc.cluster_port)
        ws = [tc.start_worker("--data-listen", f"127.0.0.1:{free_port()}") for _ in range(2)]
        t.check(tc.wait_serving(120) and all(w.wait_log("data plane (tcp) open") for w in ws),
                "with --transport tcp the cluster serves, its tcp data plane opened from the workers' --data-listen")
        c = tc.client()
        ctx = c.upload(ctx_text, mode="ring", chat=True)
        _, text, _ = c.generate(Q, context_id=ctx.id, chat=True, max_tokens=16)
        c.close()
        t.check(ref_text is not None and text == ref_text, f"and ring over tcp answers as starring-run ({text!r})")
    finally:
        rc, _ = tc.stop()
    if t.failed:
        t.note(tc.logs())
    return t.done()


def wait_ready(c, n, timeout):
    """Whether n workers are up (GetStats) within timeout s: the next context goes on all of them."""
    t0 = time.time()
    while c.stats().workers_ready < n and time.time() - t0 < timeout:
        time.sleep(0.1)
    return c.stats().workers_ready == n


def run(t, cl, ctx_text, ref, tmp):
    t.check(cl.wait_port(cl.port) and cl.wait_port(cl.cluster_port), "the coordinator listens without mpirun")
    c = cl.client()
    t.check(not c.serving(), "health is NOT_SERVING before any worker has joined")

    # a connection that never answers the challenge
    idle = socket.create_connection(("127.0.0.1", cl.cluster_port))
    idle_t0 = time.time()

    w0, w1 = cl.start_worker(), cl.start_worker()
    t.check(cl.wait_serving(120), "health is SERVING once both workers have joined")
    log = cl.coordinator.log_text()
    t.check("worker 0 of 2" in log and "worker 1 of 2" in log and log.count("proved the cluster secret") == 2,
            "the coordinator gave the workers indexes 0 and 1 as they proved the secret")
    t.check(all(w.wait_log("data plane (ucx) open") for w in (w0, w1)),
            "each worker opened the ucx data plane, its addresses through the coordinator")

    # the half-open connection is dropped after the join timeout
    idle.settimeout(JOIN_TIMEOUT + 10)
    got = b""
    try:
        while True:
            b = idle.recv(4096)  # the Challenge, then EOF
            if not b:
                break
            got += b
        dropped = time.time() - idle_t0
    except OSError:
        dropped = None
    idle.close()
    t.check(dropped is not None and JOIN_TIMEOUT - 0.5 <= dropped <= JOIN_TIMEOUT + 5 and len(got) > 0,
            f"a connection that never answers the challenge is dropped after --join-timeout {JOIN_TIMEOUT} s "
            f"({dropped if dropped is None else round(dropped, 1)} s, {len(got)} bytes of challenge)")
    t.check(cl.coordinator.wait_log(f"no join within {JOIN_TIMEOUT} s", 5), "and the coordinator logs it")

    # ring over the two workers: exactly single-process greedy
    t0 = time.time()
    ctx = c.upload(ctx_text, mode="ring", chat=True)
    t.note(f"ring prefill of {ctx.n_tokens} tokens on 2 workers: {time.time() - t0:.1f} s")
    t.check(ctx.state == "ready" and len(ctx.shards) == 2 and sum(s.kv_tokens for s in ctx.shards) == ctx.n_tokens,
            f"a {ctx.n_tokens}-token context in ring mode is ready, its KV on the 2 workers")
    ids, text, done = c.generate(Q, context_id=ctx.id, chat=True, max_tokens=16)
    ref_text = ref.communicate(timeout=600)[0].rstrip("\n")
    t.note(f"cluster: {text!r}")
    t.note(f"starring-run: {ref_text!r}")
    t.check(text == ref_text and 0 < len(ids) <= 16,
            f"the answer = single-process starring-run, greedy, up to 16 tokens ({len(ids)})")
    t.check(KEY in text, f"and it finds the pass key {KEY}")

    # garbage on the cluster port instead of a Hello: dropped at once, logged
    g = socket.create_connection(("127.0.0.1", cl.cluster_port))
    g.settimeout(10)
    g.sendall(b"\x00\x00\x00\x10" + b"\xff" * 16)
    try:
        while g.recv(4096):
            pass
        closed = True
    except OSError:
        closed = False
    g.close()
    t.check(closed and cl.coordinator.wait_log("is not a starring.control.v1.Frame", 5) and c.serving(),
            "garbage instead of a Hello is dropped with a log line, and the cluster serves on")

    # a worker with another secret
    bad = cl.start_worker(secret=secret_file(tmp, "other.key"))
    rc = bad.wait(30)
    t.check(rc not in (None, 0) and "no Welcome" in bad.log_text(),
            f"a worker with another secret is refused and exits ({rc}: {bad.log_text().strip()[-160:]!r})")
    refused = [ln for ln in cl.coordinator.log_text().splitlines() if "refused the join" in ln]
    t.check(len(refused) == 1 and "127.0.0.1:" in refused[0] and "secret" in refused[0],
            f"the coordinator logs the refusal with the peer's address ({refused[-1] if refused else 'none'!r})")
    secret = open(cl.secret, "rb").read()
    t.check(secret.hex() not in cl.coordinator.log_text() and secret.hex() not in bad.log_text(),
            "the secret is in no log")
    cl.workers.remove(bad)
    t.check(c.serving(), "the cluster keeps serving")
    _, text2, _ = c.generate(Q, context_id=ctx.id, chat=True, max_tokens=16)
    t.check(text2 == ref_text, "and answers the same again")

    # a worker killed mid-generation: that request and the later ones get
    # UNAVAILABLE naming it; the coordinator stays
    # indexes go in the order the workers proved the secret
    gone = re.search(r"worker (\d) of 2: joined", w1.log_text()).group(1)
    got = []

    def kill_at_first(text):
        got.append(text)
        if len(got) == 1:
            w1.stop(signal.SIGKILL)

    code, msg = code_of(lambda: c.generate("Write a long story about the pass key.", context_id=ctx.id, chat=True,
                                           max_tokens=400, on_text=kill_at_first, timeout=60))
    t.check(code == grpc.StatusCode.UNAVAILABLE and f"worker {gone}" in msg and 0 < len(got) < 400,
            f"a worker killed (SIGKILL) mid-generation: the request ends UNAVAILABLE naming it after {len(got)} "
            f"tokens ({code}: {msg!r})")
    t.check(c.serving(), "health stays SERVING: the worker left serves")
    code, msg = code_of(lambda: c.generate(Q, context_id=ctx.id, chat=True, max_tokens=4, timeout=30))
    t.check(code == grpc.StatusCode.NOT_FOUND and f"was lost (worker {gone} is gone" in msg,
            f"a request on its context then gets NOT_FOUND naming the worker ({code}: {msg!r})")
    code, msg = code_of(lambda: c.generate(Q, chat=True, max_tokens=4, timeout=120))
    t.check(code == grpc.StatusCode.OK, f"a new request is placed on the worker left alone, and answered ({code}: {msg!r})")
    t.check(cl.coordinator.alive(), "the coordinator keeps running")

    # the worker left drops the lost context and stays; a restarted one takes the free place
    t.check(w0.wait_log(f"context {ctx.id} dropped", 20) and "asks this worker to join again" not in w0.log_text(),
            "the worker left drops the lost context, and is not asked to rejoin")
    t.check("1 contexts placed on it lost" in cl.coordinator.log_text(),
            "the coordinator logs the contexts lost with the worker")
    w1b = cl.start_worker()
    t.check(wait_ready(c, 2, 120) and c.serving(), "a restarted worker joins: the cluster serves on both again")
    ctx = c.upload(ctx_text, mode="ring", chat=True)
    _, text3, _ = c.generate(Q, context_id=ctx.id, chat=True, max_tokens=16)
    t.check(text3 == ref_text, f"a new context on the worker left and the restarted one answers as starring-run "
            f"({text3!r})")
    t.check(w0.alive() and cl.coordinator.alive(), "no other process went down")

    # a worker that stops answering (SIGSTOP) is lost after 10 heartbeats, and rejoins when continued
    w0.stop(signal.SIGSTOP, timeout=0)
    t.check(cl.coordinator.wait_log("no heartbeat for", 6), "a stopped worker is dropped after 10 missed heartbeats")
    w0.proc.send_signal(signal.SIGCONT)
    t.check(wait_ready(c, 2, 60) and c.serving(), "continued, it joins again and the cluster serves")
    c.close()

    # the coordinator killed mid-generation, then restarted
    got = []

    def kill_coordinator(text):
        got.append(text)
        if len(got) == 1:
            cl.coordinator.stop(signal.SIGKILL)

    c = cl.client()
    ctx = c.upload(ctx_text, mode="ring", chat=True)
    marks = [len(w.log_text()) for w in (w0, w1b)]
    code, msg = code_of(lambda: c.generate("Write a long story about the pass key.", context_id=ctx.id, chat=True,
                                           max_tokens=400, on_text=kill_coordinator, timeout=60))
    t.check(code == grpc.StatusCode.UNAVAILABLE and len(got) > 0,
            f"the coordinator killed mid-generation: the request ends UNAVAILABLE ({code}: {msg!r})")
    c.close()
    c = cl.client()
    t0 = time.time()
    code, msg = code_of(lambda: c.generate(Q, chat=True, max_tokens=4, timeout=20))
    t.check(code == grpc.StatusCode.UNAVAILABLE and time.time() - t0 < 15,
            f"while it is down a request gets UNAVAILABLE, no hang ({code} after {time.time() - t0:.1f} s)")
    c.close()
    cl.restart_coordinator()
    t.check(cl.wait_serving(120), "restarted on the same ports, the workers join it again and it serves")
    t.check(all("the session with the coordinator is over (the connection closed): 1 resident contexts dropped"
                in w.log_text()[m:] for w, m in zip((w0, w1b), marks)), "each worker says that its context is gone")
    c = cl.client()
    ctx = c.upload(ctx_text, mode="ring", chat=True)
    _, text4, _ = c.generate(Q, context_id=ctx.id, chat=True, max_tokens=16)
    t.check(text4 == ref_text, f"and answers as starring-run ({text4!r})")
    c.close()
    return ref_text


if __name__ == "__main__":
    sys.exit(main())
