"""starringd without mpirun, contexts on groups of workers: a coordinator
and four `--role worker --join` processes on loopback.

- once the four have joined, one data plane opens over them;
- context A asks for 2 workers (ContextOptions.workers), then B for 2: the
  coordinator places them on disjoint pairs (the least loaded first), and
  GetStats/ListContexts show each context's workers as its shards;
- both answer greedily with exactly the text of single-process starring-run;
- a worker of B killed (SIGKILL) mid-generation: that request ends
  UNAVAILABLE naming the worker, a later one on B gets NOT_FOUND "was lost
  (worker N is gone)"; A, whose workers share the data plane with the dead
  one, answers the same tokens again; health stays SERVING; GetStats says
  the worker is down;
- a new context is placed on the three workers up only, and answers;
- the killed worker restarted joins in its place: a new data plane opens
  over the four, A (on the old one) still answers, and a context placed
  afterwards on the least loaded workers uses the restarted one and answers;
- no other process went down;
- SIGTERM to a worker: it tells the coordinator, which drops its contexts
  (later requests on them: NOT_FOUND saying it left), takes it out of
  placement and lets it go (exit 0);
- the workers that held the dead one in a data plane close it and exit 0
  when the coordinator lets them go."""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import grpc

sys.path.insert(0, os.path.dirname(__file__))
from daemon_support import BUILD, ROOT, code_of, Cluster, Tap, model_path  # noqa: E402

Q = "What is the pass key?"


def spb():
    """The generated messages, as the example client uses them."""
    import starring_client
    return starring_client.pb


def upload(c, text, workers):
    """CreateContext in ring mode with ContextOptions.workers (the example
    client does not set it)."""
    opts = spb().ContextOptions(mode="ring", chat=True, workers=workers)
    ready = None
    for ev in c.api.CreateContext(iter([spb().ContextChunk(text=text, options=opts)]), timeout=120):
        if ev.HasField("ready"):
            ready = ev.ready
    return ready


def shards(ctx):
    return sorted(s.worker for s in ctx.shards)


def index_of(proc):
    m = re.search(r"worker (\d+) of \d+: joined", proc.log_text())
    return int(m.group(1)) if m else None


def single_process(tmp):
    """A short pass-key context, and single-process starring-run's greedy answer over it."""
    path = os.path.join(tmp, "ctx.txt")
    with open(path, "w") as f:
        subprocess.run([os.path.join(ROOT, "scripts", "make-passkey"), "10"], stdout=f, check=True)
    cmd = [os.path.join(ROOT, BUILD, "starring-run"), "-m", model_path(), "--chat", "-f", path, "-p", Q, "-n", "16",
           "--temp", "0", "-t", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_WAIT_POLICY="passive"),
                         timeout=600)
    with open(path) as f:
        return f.read(), out.stdout.rstrip("\n")


def main():
    t = Tap()
    tmp = tempfile.mkdtemp(prefix="starring-groups-")
    ctx_text, ref = single_process(tmp)
    cl = Cluster(tmp, 4, "--heartbeat", "0.2", "--join-timeout", "3", "--max-context", "4096")
    try:
        run(t, cl, ctx_text, ref)
    finally:
        rc, wrc = cl.stop()
    t.check(rc == 0, f"the coordinator stops cleanly on SIGTERM (exit {rc})")
    # the worker killed is the one with -9; the others close data planes that held it, and exit 0
    t.check(sorted(wrc) == [-9, 0, 0, 0, 0], f"the other workers leave by themselves and exit 0 ({wrc})")
    if t.failed:
        t.note(cl.logs())
    return t.done()


def run(t, cl, ctx_text, ref_text):
    cl.wait_port(cl.port)
    ws = [cl.start_worker() for _ in range(4)]
    t.check(cl.wait_serving(240), "health is SERVING once the four workers have joined")
    t.check(cl.coordinator.wait_log("data plane 1 open over 4 workers", 10), "one data plane opens over the four")
    idx = {index_of(w): w for w in ws}
    t.check(sorted(idx) == [0, 1, 2, 3], f"the workers have indexes 0..3 ({sorted(k for k in idx if k is not None)})")
    c = cl.client()

    a = upload(c, ctx_text, 2)
    b = upload(c, ctx_text, 2)
    sa, sb = shards(a), shards(b)
    t.check(len(sa) == 2 and len(sb) == 2 and not set(sa) & set(sb),
            f"A and B, 2 workers each, are placed on disjoint pairs (A {sa}, B {sb})")
    st = c.stats()
    per = {w.worker: w.contexts for w in st.worker}
    listed = {x.id: shards(x) for x in c.contexts()}
    t.check(all(per[w] == 1 for w in range(4)) and listed.get(a.id) == sa and listed.get(b.id) == sb,
            f"GetStats counts one context per worker and ListContexts shows each context's workers ({per}, {listed})")
    _, ta, _ = c.generate(Q, context_id=a.id, chat=True, max_tokens=16)
    _, tb, _ = c.generate(Q, context_id=b.id, chat=True, max_tokens=16)
    t.check(ta == ref_text and tb == ref_text and ref_text,
            f"A and B answer as single-process starring-run ({ta!r}, {tb!r}, ref {ref_text!r})")

    # kill a worker of B once B's answer has begun
    gone = sb[1]
    victim = idx[gone]
    tokens = 0
    code, msg = grpc.StatusCode.OK, ""
    try:
        for ev in c.api.Generate(spb().GenerateRequest(context_id=b.id, prompt="Write a long story about the pass key.",
                                                       chat=True, max_tokens=400), timeout=60):
            tokens += ev.HasField("token")
            if tokens == 1 and victim.alive():
                victim.stop(signal.SIGKILL)
    except grpc.RpcError as e:
        code, msg = e.code(), e.details()
    t.check(code == grpc.StatusCode.UNAVAILABLE and f"worker {gone}" in msg and 0 < tokens < 400,
            f"a worker of B killed mid-generation: the request ends UNAVAILABLE naming it after {tokens} tokens "
            f"({code}: {msg!r})")
    code, msg = code_of(lambda: c.generate(Q, context_id=b.id, chat=True, max_tokens=4, timeout=30))
    t.check(code == grpc.StatusCode.NOT_FOUND and f"was lost (worker {gone} is gone" in msg,
            f"a later request on B gets NOT_FOUND naming the worker ({code}: {msg!r})")
    t.check(c.serving(), "health stays SERVING")
    _, ta2, _ = c.generate(Q, context_id=a.id, chat=True, max_tokens=16, timeout=60)
    t.check(ta2 == ta, f"A, whose data plane holds the dead worker too, answers the same tokens again ({ta2!r})")
    st = c.stats()
    down = [w for w in st.worker if w.worker == gone][0]
    t.check(not down.up and down.state == "lost" and st.workers_ready == 3,
            f"GetStats: worker {gone} is down, 3 are up ({down.state}, up {down.up}, ready {st.workers_ready})")

    cc = upload(c, ctx_text, 0)
    sc = shards(cc) if cc else []
    up3 = sorted(set(range(4)) - {gone})
    t.check(sc == up3, f"a new context is placed on the three workers up only ({sc})")
    _, tc, _ = c.generate(Q, context_id=cc.id, chat=True, max_tokens=16, timeout=60) if cc else (0, None, 0)
    t.check(tc == ref_text, f"and answers as starring-run ({tc!r})")

    # the killed worker restarted takes its place
    mark = len(cl.coordinator.log_text())
    back = cl.start_worker()
    t0 = time.time()
    while "data plane 2 open over 4 workers" not in cl.coordinator.log_text()[mark:] and time.time() - t0 < 240:
        time.sleep(0.1)
    t.check("data plane 2 open over 4 workers" in cl.coordinator.log_text()[mark:] and index_of(back) == gone,
            f"the restarted worker joins as worker {gone} and a new data plane opens over the four ({index_of(back)})")
    _, ta3, _ = c.generate(Q, context_id=a.id, chat=True, max_tokens=16, timeout=60)
    t.check(ta3 == ta, f"A, on the first data plane, still answers the same ({ta3!r})")
    d = upload(c, ctx_text, 2)
    sd = shards(d) if d else []
    t.check(gone in sd and len(sd) == 2, f"a context placed afterwards (2 workers) uses the restarted one ({sd})")
    _, td, _ = c.generate(Q, context_id=d.id, chat=True, max_tokens=16, timeout=60) if d else (0, None, 0)
    t.check(td == ref_text, f"and answers as starring-run ({td!r})")
    st = c.stats()
    t.check(st.workers_ready == 4 and all(w.up for w in st.worker), "GetStats: the four are up again")
    t.check(cl.coordinator.alive() and all(w.alive() for w in ws if w is not victim) and back.alive(),
            "no other process went down")

    # SIGTERM to a worker: it leaves on purpose, its contexts dropped first
    rc = back.stop(signal.SIGTERM, timeout=20)
    t.check(rc == 0 and cl.coordinator.wait_log(f"worker {gone} left (SIGTERM): out of placement, 1 contexts placed on "
                                                 "it dropped", 5), f"a worker sent SIGTERM is let go at once, exit 0, "
            f"after the coordinator dropped its context ({rc})")
    code, msg = code_of(lambda: c.generate(Q, context_id=d.id, chat=True, max_tokens=4, timeout=30))
    t.check(code == grpc.StatusCode.NOT_FOUND and f"worker {gone} left" in msg,
            f"a request on its context gets NOT_FOUND saying it left ({code}: {msg!r})")
    e = upload(c, ctx_text, 4)
    t.check(e is not None and shards(e) == up3, f"a new context is placed on the workers up only ({shards(e) if e else None})")
    c.close()


if __name__ == "__main__":
    sys.exit(main())
