"""A partition: the coordinator and two workers each in a network namespace
of this test's own (tests/py/netns.py), each host its own address, the tcp
data plane between the workers, the client API reached over the network
with an API key.

- the cluster serves, and answers;
- one worker's link cut (veth down): a request then fails UNAVAILABLE,
  naming the worker, within the heartbeat timeout (10 heartbeats) and a
  few seconds; the coordinator and the other worker stay up, and the other
  worker serves alone;
- the link restored: the cut-off worker joins again, the cluster serves and
  answers;
- the coordinator's link cut: the workers notice its silence (10 of its
  heartbeats) and keep trying; restored, they join again and it answers;
- teardown kills the processes and leaves no namespace behind (also when a
  check fails).

A context is placed on the workers up, so while one is cut off the other
serves alone the requests that come after the loss."""
import os
import signal
import sys
import tempfile
import time

import grpc

sys.path.insert(0, os.path.dirname(__file__))
from daemon_support import Proc, Tap, code_of, model_path, secret_file  # noqa: E402
import netns  # noqa: E402
import starring_client  # noqa: E402

HEARTBEAT = 0.2
LATE = 10 * HEARTBEAT  # the coordinator's heartbeat timeout


def main():
    t = Tap()
    why = netns.unavailable()
    if why:
        print(f"1..0 # SKIP {why}")
        return 0
    # a SIGTERM (the test runner's timeout) still runs the teardown
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    tmp = tempfile.mkdtemp(prefix="starring-partition-")
    secret = secret_file(tmp)
    key_file = os.path.join(tmp, "api.key")
    key = os.urandom(16).hex()
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, key.encode())
    os.close(fd)
    auth = [("authorization", f"Bearer {key}")]
    hosts = netns.Hosts(["coord", "w0", "w1"])
    try:
        run(t, hosts, secret, key_file, auth)
    finally:
        hosts.close()
        left = hosts.leftovers()
        t.check(not left, f"teardown leaves no namespace of the test ({left})")
    return t.done()


def run(t, hosts, secret, key_file, auth):
    ca = hosts.addr("coord")
    common = ["--model", model_path(), "--cluster-secret-file", secret, "--heartbeat", str(HEARTBEAT),
              "--transport", "tcp", "--max-context", "512", "-t", "1"]
    co = hosts.started(Proc("coordinator", ["--role", "coordinator", "--listen", f"{ca}:7070", "--http-listen", "off",
                                            "--cluster-listen", f"{ca}:7071", "--api-key-file", key_file,
                                            "--workers", "2"] + common, wrap=hosts.wrap("coord")))
    t.check(co.wait_log("serving gRPC on", 60), "the coordinator listens on its host's address")
    ws = {n: hosts.started(Proc(n, ["--role", "worker", "--join", f"{ca}:7071",
                                    "--data-listen", f"{hosts.addr(n)}:7072"] + common, wrap=hosts.wrap(n)))
          for n in ("w0", "w1")}
    c = starring_client.Client(f"{ca}:7070")

    def serving(timeout):
        t0 = time.time()
        while time.time() - t0 < timeout:
            try:
                if c.serving(timeout=1):
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        return False

    def ask(timeout=60):
        req = starring_client.pb.GenerateRequest(prompt="Say hello.", chat=True, max_tokens=4)
        text = ""
        for ev in c.api.Generate(req, timeout=timeout, metadata=auth):
            if ev.HasField("token"):
                text += ev.token.text
        return text

    t.check(serving(120), "coordinator and workers in namespaces of their own: the cluster serves")
    code, _ = code_of(ask)
    t.check(code == grpc.StatusCode.OK, f"and answers over the network, with the API key ({code})")
    t.check(all(w.wait_log("data plane (tcp) open", 5) for w in ws.values()) and
            f"{hosts.addr('w1')}:" in co.log_text(), "the workers joined from their own addresses, tcp between them")

    # cut w1 off: a request then fails UNAVAILABLE naming it, within the heartbeat timeout
    gone = "1" if "worker 1 of 2: joined" in ws["w1"].log_text() else "0"
    hosts.cut("w1")
    t0 = time.time()
    code, msg = code_of(lambda: wait_unavailable(ask, LATE + 10))
    dt = time.time() - t0
    t.check(code == grpc.StatusCode.UNAVAILABLE and f"worker {gone}" in msg and dt < LATE + 10,
            f"w1's link cut: a request fails UNAVAILABLE naming worker {gone} after {dt:.1f} s ({code}: {msg!r})")
    t.check(co.wait_log("no heartbeat for", 5), "the coordinator dropped it for missed heartbeats")
    code, _ = code_of(ask)
    t.check(code == grpc.StatusCode.OK and "asks this worker to join again" not in ws["w0"].log_text() and co.alive() and
            ws["w0"].alive(), f"the coordinator and the other worker stay up; the other serves alone, joined ({code})")

    # restore the link: w1 joins again and the cluster answers
    hosts.cut("w1", up=True)
    t0 = time.time()  # the other serves meanwhile: wait for the cut-off one's own join
    while ws["w1"].log_text().count("both proved the cluster secret") < 2 and time.time() - t0 < 60:
        time.sleep(0.1)
    t.check(serving(60), "the link restored: the cut-off worker joins again and the cluster serves")
    t.check(ws["w1"].log_text().count("both proved the cluster secret") >= 2, "w1 proved the secret again")
    code, _ = code_of(ask)
    t.check(code == grpc.StatusCode.OK, f"and answers ({code})")

    # cut the coordinator off: the workers hear nothing from it, leave the session and keep trying
    marks = {n: len(w.log_text()) for n, w in ws.items()}
    hosts.cut("coord")
    t.check(all(wait_after(w, marks[n], "no frame from the coordinator for", 30) for n, w in ws.items()),
            "the coordinator's link cut: both workers notice its silence")
    hosts.cut("coord", up=True)
    t.check(serving(60), "restored, the workers join it again and it serves")
    code, _ = code_of(ask)
    t.check(code == grpc.StatusCode.OK and all(w.alive() for w in ws.values()) and co.alive(), f"and answers ({code})")
    c.close()
    if t.failed:
        for p in [co] + list(ws.values()):
            t.note(f"--- {p.name}\n{p.log_text()[-3000:]}")


def wait_after(p, mark, text, timeout):
    """Whether text turns up in p's log after its first mark characters, within timeout s."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if text in p.log_text()[mark:]:
            return True
        time.sleep(0.1)
    return False


def wait_unavailable(ask, timeout):
    """Asks until a request fails (the first may still be answered before the cut is noticed)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        ask(timeout=timeout)
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
