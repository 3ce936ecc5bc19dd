"""starringd under mpirun (a coordinator and 3 workers) through a Python
grpcio client whose stubs are generated from proto/ at test time:

- health goes NOT_SERVING -> SERVING (Watch from the first moment);
- a ~6k-token passkey context in ring mode answers with exactly the text of
  single-process starring-run on the same input, greedy; a second question
  reuses the prefill (stats: one prefill);
- the same context in star mode finds the pass key;
- four clients at once on the two contexts each get their single-client
  answer;
- cancel mid-generation and mid-prefill: the work stops (a prefill within
  one chunk), the KV returns, no queue slot is held, the next request is
  served;
- a question on another context keeps producing tokens while a context
  prefills (the worst gap is one chunk), and the prefill's progress events
  rise chunk by chunk;
- bad input, each with its status and the daemon serving the next request:
  unknown context, empty context, a mode that does not exist, too many
  tokens, a message over the cap, a deadline, an unknown method, invalid
  UTF-8 (replaced), garbage bytes and a half-open connection on the gRPC
  port, a frame over the cap on the control port;
- drop frees the KV (stats).
"""
import os
import socket
import subprocess
import sys
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_support import ROOT, code_of, Daemon, Tap, passkey_context, reference_run, starring_client  # noqa: E402

pb = starring_client.pb
health_pb = starring_client.health_pb
KEY = "72941"
Q1 = "What is the pass key?"
Q2 = "What is the first sentence of the text?"


def main():
    t = Tap()
    ctx_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"starring-daemon-ctx-{os.getpid()}.txt")
    ctx_text = passkey_context(ctx_path)
    # the single-process reference runs while the daemon starts and prefills
    ref = reference_run(ctx_path, Q1)
    d = Daemon(3, "--max-context", "8192", "--max-message", "1M")
    try:
        run(t, d, ctx_text, ref)
    finally:
        ref.kill()
        rc = d.stop()
        os.unlink(ctx_path)
    t.check(rc == 0, f"starringd stops cleanly on SIGTERM (exit {rc})")
    if t.failed:
        t.note(d.log_text()[-4000:])
    return t.done()


def run(t, d, ctx_text, ref):
    # 1. health: watch from the first moment the port answers
    t.check(d.wait_port(), "the gRPC port listens")
    c = d.client()
    seen = []
    try:
        for r in c.health.Watch(health_pb.HealthCheckRequest(), timeout=60):
            seen.append(r.status)
            if r.status == health_pb.HealthCheckResponse.SERVING:
                break
    except grpc.RpcError as e:
        t.note(f"watch: {e.code()} {e.details()}")
    names = [health_pb.HealthCheckResponse.ServingStatus.Name(s) for s in seen]
    t.check(len(seen) >= 2 and seen[0] == health_pb.HealthCheckResponse.NOT_SERVING and
            seen[-1] == health_pb.HealthCheckResponse.SERVING, f"health goes NOT_SERVING -> SERVING ({names})")
    t.check(c.serving(), "Health/Check says SERVING")
    code, _ = code_of(lambda: c.health.Check(health_pb.HealthCheckRequest(service="nope")))
    t.check(code == grpc.StatusCode.NOT_FOUND, f"Health/Check of an unknown service: NOT_FOUND ({code})")

    # 2. ring: exactly single-process starring-run
    progress = []
    t0 = time.time()
    ring = c.upload(ctx_text, mode="ring", chat=True, on_progress=lambda dn, tot: progress.append((dn, tot)))
    t.note(f"ring prefill of {ring.n_tokens} tokens: {time.time() - t0:.1f} s")
    t.check(ring.state == "ready" and ring.mode == "ring" and 5000 < ring.n_tokens < 7000,
            f"a ~6k-token context in ring mode is ready ({ring.n_tokens} tokens, {ring.state})")
    t.check(len(ring.shards) == 3 and sum(s.kv_tokens for s in ring.shards) == ring.n_tokens and
            all(s.kv_bytes > 0 for s in ring.shards), "its KV is on the 3 workers, every token once")
    dones = [p[0] for p in progress]
    t.check(bool(progress) and progress[-1] == (ring.n_tokens, ring.n_tokens) and progress[0][0] == 0 and
            len(progress) >= 10 and all(a < b for a, b in zip(dones, dones[1:])),
            f"progress events per chunk, done rising from 0 to {ring.n_tokens} ({dones})")
    ring_s = time.time() - t0
    ids, text, done = c.generate(Q1, context_id=ring.id, chat=True, max_tokens=16)
    ref_text = ref.communicate(timeout=600)[0].rstrip("\n")
    t.note(f"daemon: {text!r}")
    t.note(f"starring-run: {ref_text!r}")
    t.check(text == ref_text and len(ids) == 16, "ring answer = single-process starring-run, greedy, 16 tokens")
    t.check(KEY in text, "the answer has the pass key")
    t.check(done.prefill_reused and done.context_tokens == ring.n_tokens and done.stop_reason == "length",
            f"Done: prefill reused, context {done.context_tokens} tokens, stop {done.stop_reason}")
    ids2, text2, _ = c.generate(Q1, context_id=ring.id, chat=True, max_tokens=16)
    st = c.stats()
    t.check(text2 == text and ids2 == ids, "a second question gets the same answer")
    t.check(st.prefills == 1 and st.generations == 2, f"stats: one prefill, two answers ({st.prefills}, {st.generations})")

    # 3. star finds the key in ~3k tokens (anchor of half the context, as
    # test_star_passkey; half of the ring's context keeps the test short)
    t0 = time.time()
    star_text = subprocess.run([os.path.join(ROOT, "scripts", "make-passkey"), "120"], capture_output=True,
                               text=True, check=True).stdout
    star = c.upload(star_text, mode="star", chat=True, anchor_size=1500)
    t.note(f"star prefill: {time.time() - t0:.1f} s")
    _, stext, _ = c.generate(Q1, context_id=star.id, chat=True, max_tokens=12)
    t.note(f"star: {stext!r}")
    t.check(star.mode == "star" and KEY in stext, "star mode finds the pass key")

    # 4. four clients at once on the two contexts
    jobs = [(ring.id, Q1), (ring.id, Q2), (star.id, Q1), (star.id, Q2)]
    single = {j: c.generate(j[1], context_id=j[0], chat=True, max_tokens=8)[:2] for j in jobs}
    got = {}

    def ask(j):
        cl = d.client()
        try:
            got[j] = cl.generate(j[1], context_id=j[0], chat=True, max_tokens=8)[:2]
        except grpc.RpcError as e:
            got[j] = (e.code(), e.details())
        finally:
            cl.close()

    ths = [threading.Thread(target=ask, args=(j,)) for j in jobs]
    for th in ths:
        th.start()
    for th in ths:
        th.join(timeout=300)
    t.check(all(got.get(j) == single[j] for j in jobs), "four clients at once: every answer = its single-client answer")

    # 5. cancel mid-generation
    before = c.stats()
    stream = c.api.Generate(pb.GenerateRequest(context_id=ring.id, prompt=Q2, chat=True, max_tokens=200))
    n = 0
    for ev in stream:
        n += ev.HasField("token")
        if n == 3:
            stream.cancel()
            break
    st = wait_idle(c)
    t.check(st.cancelled == before.cancelled + 1 and st.generated_tokens - before.generated_tokens < 50,
            f"cancel mid-generation stops it ({st.generated_tokens - before.generated_tokens} tokens, not 200)")
    code, msg = code_of(lambda: c.generate(Q1, context_id=ring.id, chat=True, max_tokens=200, timeout=1.0))
    t.check(code == grpc.StatusCode.DEADLINE_EXCEEDED, f"a deadline: DEADLINE_EXCEEDED ({code})")
    wait_idle(c)
    _, text3, _ = c.generate(Q1, context_id=ring.id, chat=True, max_tokens=16)
    t.check(text3 == text, "the next question is served, with the same answer")

    # 6. bad input, each answered and the daemon still serving
    def bad(what, fn, want):
        code, msg = code_of(fn)
        t.check(code == want and msg and c.serving(), f"{what}: {want.name} ({code.name}: {msg})")

    bad("unknown context", lambda: c.generate("x", context_id="0123456789abcdef"), grpc.StatusCode.NOT_FOUND)
    bad("empty context", lambda: c.upload(""), grpc.StatusCode.INVALID_ARGUMENT)
    bad("empty prompt and no context", lambda: c.generate(""), grpc.StatusCode.INVALID_ARGUMENT)
    bad("a mode that does not exist", lambda: c.upload("hello", mode="sideways"), grpc.StatusCode.INVALID_ARGUMENT)
    bad("mode cad, which needs attention servers starringd does not run", lambda: c.upload("hello", mode="cad"),
        grpc.StatusCode.INVALID_ARGUMENT)
    bad("too many tokens", lambda: c.upload(tokens=[1] * 9000), grpc.StatusCode.INVALID_ARGUMENT)
    bad("a token outside the vocabulary", lambda: c.upload(tokens=[1, 10 ** 8]), grpc.StatusCode.INVALID_ARGUMENT)
    bad("a message over the cap", lambda: c.upload("x" * (1536 * 1024), chunk=1 << 30),
        grpc.StatusCode.RESOURCE_EXHAUSTED)
    bad("chat that does not match the context", lambda: c.generate(Q1, context_id=ring.id, chat=False),
        grpc.StatusCode.INVALID_ARGUMENT)
    bad("max_tokens out of range", lambda: c.generate(Q1, context_id=ring.id, chat=True, max_tokens=10 ** 6),
        grpc.StatusCode.INVALID_ARGUMENT)
    bad("an unknown method", lambda: c.channel.unary_unary("/starring.v1.Starring/Nope")(b""),
        grpc.StatusCode.UNIMPLEMENTED)

    # invalid UTF-8 is replaced, not rejected: text field 1 of a ContextChunk, by hand
    raw = b"hello \xff\xfe world \xc3"
    chunk = b"\x0a" + bytes([len(raw)]) + raw + b"\x1a\x06\x0a\x04full"
    create = c.channel.stream_stream("/starring.v1.Starring/CreateContext", request_serializer=lambda b: b,
                                     response_deserializer=pb.ContextEvent.FromString)
    ready = [ev.ready for ev in create(iter([chunk]), timeout=120) if ev.HasField("ready")]
    t.check(len(ready) == 1 and ready[0].n_tokens > 3 and ready[0].mode == "full",
            f"invalid UTF-8 is replaced, not rejected ({ready[0].n_tokens if ready else '-'} tokens)")
    if ready:
        c.drop(ready[0].id)

    # garbage on the gRPC port: that connection closes, the daemon serves
    s = socket.create_connection(("127.0.0.1", d.port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)))
    s.settimeout(10)
    t.check(drain(s) and c.serving(), "garbage bytes on the gRPC port: the connection closes, the daemon serves")
    s.close()
    # a half-open connection (half a preface) holds nothing up and is closed
    s = socket.create_connection(("127.0.0.1", d.port))
    s.sendall(b"PRI * HTTP/2.0\r\n")
    ok = c.serving() and len(c.contexts()) == 2
    s.settimeout(15)
    t.check(ok and drain(s), "a half-open gRPC connection: others are served, it is closed")
    s.close()
    # a frame over the cap on the control port
    s = socket.create_connection(("127.0.0.1", d.control))
    s.sendall(b"\xff\xff\xff\xff")
    s.settimeout(10)
    closed = drain(s)
    s.close()
    t.check(closed and c.serving() and d.wait_log("over the cap"),
            "a frame over the cap on the control port: closed, logged, the daemon serves")
    s = socket.create_connection(("127.0.0.1", d.control))
    s.sendall(b"\x00\x00\x00\x02\x10\x01")  # a heartbeat before any Join
    s.settimeout(10)
    t.check(drain(s) and c.serving(), "a control connection that does not Join first is closed")
    s.close()

    # 7. while a context prefills, a question on another keeps producing
    # tokens; the client of the prefill cancels: it stops within a chunk
    interleave_and_cancel(t, d, c, ctx_text, ring_s)
    _, text5, _ = c.generate(Q1, context_id=ring.id, chat=True, max_tokens=16)
    t.check(text5 == text, "after the cancelled prefill the next request is served")

    # 8. a deadline during the prefill: the context is dropped, its KV returns
    before = c.stats()
    code, _ = code_of(lambda: c.upload(ctx_text[:6000], mode="ring", timeout=1.0))
    t.check(code == grpc.StatusCode.DEADLINE_EXCEEDED, f"a deadline during the prefill: DEADLINE_EXCEEDED ({code})")
    st = wait_idle(c)
    t.check(st.contexts == before.contexts and st.kv_bytes == before.kv_bytes,
            f"its KV returns (contexts {st.contexts}, KV {st.kv_bytes} bytes, as before)")
    _, text4, _ = c.generate(Q1, context_id=ring.id, chat=True, max_tokens=16)
    t.check(text4 == text, "the next request is served")

    # 9. drop frees the KV
    before = c.stats()
    dropped = c.drop(star.id)
    st = c.stats()
    t.check(dropped.state == "dropped" and st.contexts == before.contexts - 1 and
            st.kv_bytes == before.kv_bytes - sum(s.kv_bytes for s in star.shards),
            f"drop frees the KV ({before.kv_bytes} -> {st.kv_bytes} bytes)")
    code, msg = code_of(lambda: c.generate(Q1, context_id=star.id, chat=True))
    t.check(code == grpc.StatusCode.NOT_FOUND, f"a dropped context is NOT_FOUND ({code})")
    c.drop(ring.id)
    st = c.stats()
    t.check(st.contexts == 0 and st.kv_bytes == 0 and st.queue_depth == 0,
            f"nothing is left (contexts {st.contexts}, KV {st.kv_bytes}, queue {st.queue_depth})")
    c.close()


SHORT = "The capital of France is"
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. " * 20


def interleave_and_cancel(t, d, c, ctx_text, ring_s):
    short_alone = c.generate(SHORT, max_tokens=6)[:2]
    short = {}

    def ask_short():
        cl = d.client()
        try:
            short["got"] = cl.generate(SHORT, max_tokens=6)[:2]
            short["at"] = time.time()
        finally:
            cl.close()

    before = c.stats()
    times = []
    gen = c.api.Generate(pb.GenerateRequest(prompt=FILLER, max_tokens=4000))

    def consume():
        try:
            for ev in gen:
                if ev.HasField("token"):
                    times.append(time.time())
        except grpc.RpcError:
            pass

    th = threading.Thread(target=consume)
    th.start()
    t0 = time.time()
    while len(times) < 3 and time.time() - t0 < 120:
        time.sleep(0.05)
    opts = pb.ContextOptions(mode="ring", chat=True)
    up = c.api.CreateContext(iter([pb.ContextChunk(text=ctx_text, options=opts)]))
    prog = []
    th_short = threading.Thread(target=ask_short)
    try:
        for ev in up:
            if ev.HasField("progress"):
                prog.append((time.time(), ev.progress.done, ev.progress.total))
                if len(prog) == 2:
                    th_short.start()
            if len(prog) >= 5 or ev.HasField("ready"):
                break
    except grpc.RpcError as e:
        t.note(f"upload: {e.code()} {e.details()}")
    t_cancel = time.time()
    up.cancel()
    if not t.check(len(prog) >= 5, f"progress of the second prefill: {[p[1] for p in prog]}"):
        gen.cancel()
        th.join()
        return
    start = prog[0][0]
    mid = [x for x in times if start <= x <= t_cancel]
    gaps = [b - a for a, b in zip(times, times[1:]) if b > start and a < t_cancel]
    chunk = max(b[0] - a[0] for a, b in zip(prog[1:], prog[2:]))
    worst = max(gaps) if gaps else t_cancel - start
    t.note(f"during {len(prog) - 1} chunks of the prefill ({t_cancel - start:.1f} s, a chunk up to {chunk:.2f} s): "
           f"{len(mid)} tokens of the other question, the worst gap {worst:.2f} s")
    t.check(len(mid) >= len(prog) and worst <= chunk + 1.0,
            f"a question on another context goes on while a context prefills ({len(mid)} tokens, worst gap "
            f"{worst:.2f} s, a chunk {chunk:.2f} s)")
    th_short.join(timeout=120)
    t.check(short.get("got") == short_alone and short.get("at", t_cancel + 1) < t_cancel,
            f"a short request (its own small context) is answered in the middle of the prefill, as alone "
            f"({short.get('got')}, {short.get('at', 0) - prog[1][0]:.1f} s after it was sent)")
    dones = [p[1] for p in prog]
    t.check(dones[0] == 0 and all(a < b < prog[0][2] for a, b in zip(dones, dones[1:])),
            f"its progress events arrive with done rising ({dones} of {prog[0][2]})")
    # mpirun forwards the workers' log lines late on a busy machine: the
    # time is the worker's own stamp of the line
    t_stop = d.wait_log("was cancelled at", stamp=True)
    took = (t_stop or time.time()) - t_cancel
    t.check(t_stop is not None and took < 2 * chunk + 1.0,
            f"a cancel mid-prefill stops it within a chunk ({took:.2f} s; a chunk {chunk:.2f} s, the whole prefill "
            f"{ring_s:.0f} s)")
    gen.cancel()
    th.join()
    st = wait_idle(c)
    t.check(st.contexts == before.contexts and st.kv_bytes == before.kv_bytes and st.queue_depth == 0 and
            st.cancelled >= before.cancelled + 2 and st.prefills == before.prefills + 2,
            f"the cancelled prefill holds no KV and no queue slot (contexts {st.contexts}, KV {st.kv_bytes} bytes, "
            f"queue {st.queue_depth}, cancelled {st.cancelled - before.cancelled}, prefills "
            f"{st.prefills - before.prefills}: the two questions' own)")


def wait_idle(c, timeout=120):
    """Stats once nothing is in flight (a cancelled prefill or question has ended)."""
    t0 = time.time()
    while True:
        st = c.stats()
        if st.queue_depth == 0 or time.time() - t0 > timeout:
            return st
        time.sleep(0.2)


def drain(s):
    """True once the peer closes the connection (reads until EOF)."""
    try:
        while s.recv(65536):
            pass
        return True
    except (socket.timeout, OSError):
        return False


if __name__ == "__main__":
    sys.exit(main())
