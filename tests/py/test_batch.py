"""Batched decode across requests: starringd under mpirun (a coordinator and
2 workers, SmolLM2, --max-batch-decode 4) through the grpcio client:

- six questions at once, on five contexts (star and ring) and twice on one
  of them, each give exactly the token ids of the same question asked alone
  (greedy), and the coordinator ran steps of several generations at once
  but never more than --max-batch-decode;
- a question cancelled by its client mid-batch, and another whose deadline
  passes mid-batch, end; the others running beside them still give their
  single-request tokens, and the daemon serves the next question.
"""
import os
import re
import sys
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_support import Daemon, Tap, starring_client  # noqa: E402

pb = starring_client.pb
CAP = 4
TOKENS = 20
FACTS = [("Anna", "a red kite", "Lisbon"), ("Bruno", "a green bicycle", "Oslo"), ("Chen", "a blue violin", "Quito"),
         ("Dara", "a yellow boat", "Nairobi"), ("Emil", "a black piano", "Hanoi")]
QUESTION = "Who has what, and where do they live? Answer in one sentence."
LONG = "Write the numbers from 1 to 300, one per line."  # an answer that outlasts a cancel or a deadline


def context_text(i):
    name, thing, city = FACTS[i]
    filler = " ".join(f"Line {k}: the weather in {city} was mild and the market sold {k + i} apples." for k in range(12))
    return f"{name} owns {thing} and lives in {city}.\n{filler}\n"


def ask(d, ctx, out, key, max_tokens=TOKENS, cancel_after=None, timeout=None, prompt=QUESTION):
    cl = d.client()
    try:
        if cancel_after is None:
            out[key] = cl.generate(prompt, context_id=ctx, chat=True, max_tokens=max_tokens, timeout=timeout)[0]
            return
        stream = cl.api.Generate(pb.GenerateRequest(context_id=ctx, prompt=prompt, chat=True,
                                                    max_tokens=max_tokens), timeout=timeout)
        n = 0
        for ev in stream:
            n += ev.HasField("token")
            if n == cancel_after:
                stream.cancel()
                break
        out[key] = ("cancelled", n)
    except grpc.RpcError as e:
        out[key] = (e.code(), e.details())
    finally:
        cl.close()


def run_all(d, jobs):
    """jobs: key -> (args of ask); runs them at once, returns key -> result."""
    out = {}
    ths = [threading.Thread(target=ask, args=(d,) + args + (out, key), kwargs=kw) for key, (args, kw) in jobs.items()]
    for th in ths:
        th.start()
    for th in ths:
        th.join(timeout=300)
    return out


def batch_sizes(d):
    return [int(m) for m in re.findall(r"batched decode: a step of (\d+) generations", d.log_text())]


def main():
    t = Tap()
    d = Daemon(2, "--max-batch-decode", str(CAP), "--max-context", "4096")
    try:
        run(t, d)
    finally:
        rc = d.stop()
    t.check(rc == 0, f"starringd stops cleanly on SIGTERM (exit {rc})")
    if t.failed:
        t.note(d.log_text()[-4000:])
    return t.done()


def run(t, d):
    t.check(d.wait_port() and d.wait_serving(), "the daemon serves")
    c = d.client()
    ctxs = [c.upload(context_text(i), mode="ring" if i % 2 else "star", chat=True).id for i in range(len(FACTS))]
    t.check(len(ctxs) == len(FACTS), f"{len(ctxs)} contexts uploaded, star and ring")

    # each question alone: the reference
    t0 = time.time()
    single = [c.generate(QUESTION, context_id=x, chat=True, max_tokens=TOKENS)[0] for x in ctxs]
    t.note(f"alone: {time.time() - t0:.1f} s for {len(ctxs)} questions")
    t.check(all(len(s) > 3 for s in single) and len({tuple(s) for s in single}) == len(single),
            f"each context has an answer of its own ({[len(s) for s in single]} tokens)")

    # six at once: five contexts, and the first one twice
    jobs = {i: ((ctxs[i],), {}) for i in range(len(ctxs))}
    jobs["again"] = ((ctxs[0],), {})
    t0 = time.time()
    got = run_all(d, jobs)
    t.note(f"together: {time.time() - t0:.1f} s for {len(jobs)} questions")
    for i in range(len(ctxs)):
        t.check(got.get(i) == single[i], f"context {i} ({'ring' if i % 2 else 'star'}) asked beside the others: "
                f"the tokens of its single request ({len(single[i])})")
    t.check(got.get("again") == single[0], "the same context asked twice at once: both get its single-request tokens")
    sizes = batch_sizes(d)
    t.check(bool(sizes) and max(sizes) >= 3 and max(sizes) <= CAP,
            f"decode steps ran several generations at once, at most --max-batch-decode {CAP} (largest: {sizes})")

    # one cancelled and one past its deadline mid-batch; the others undisturbed
    jobs = {i: ((ctxs[i],), {}) for i in (1, 2, 3)}
    jobs["cancel"] = ((ctxs[0],), {"max_tokens": 1000, "cancel_after": 3, "prompt": LONG})
    jobs["deadline"] = ((ctxs[4],), {"max_tokens": 1000, "timeout": 2.0, "prompt": LONG})
    before = c.stats()
    got = run_all(d, jobs)
    t.check(got.get("cancel") == ("cancelled", 3), f"a question cancelled after 3 tokens ({got.get('cancel')})")
    t.check(isinstance(got.get("deadline"), tuple) and got["deadline"][0] == grpc.StatusCode.DEADLINE_EXCEEDED,
            f"a question past its deadline: DEADLINE_EXCEEDED ({got.get('deadline')})")
    for i in (1, 2, 3):
        t.check(got.get(i) == single[i], f"context {i} beside the cancelled ones: its single-request tokens")
    deadline = time.time() + 60
    while time.time() < deadline:
        st = c.stats()
        if st.cancelled >= before.cancelled + 2:
            break
        time.sleep(0.2)
    t.check(st.cancelled >= before.cancelled + 2, f"both count as cancelled ({st.cancelled - before.cancelled})")
    t.check(c.generate(QUESTION, context_id=ctxs[0], chat=True, max_tokens=TOKENS)[0] == single[0],
            "the next question on the cancelled one's context is served, with its answer")
    c.close()


if __name__ == "__main__":
    sys.exit(main())
