"""Abuse of the control port, and frames forged after the join, against a
real coordinator and worker on loopback (the worker joins through a relay
of this test's own, which can write into the connection):

- a slow client (one byte a second) is dropped at --join-timeout;
- a frame over the cap before the join is refused at once;
- a flood of connections beyond --cluster-max-pending: the extra ones are
  closed at once, with a log line, while the worker keeps being served;
- a frame injected into the worker's joined connection (no MAC), and a
  sealed frame of the worker's replayed: the coordinator cuts the
  connection off naming the MAC; a forged Leave towards the worker: the
  worker cuts it off and does not leave; each time the worker joins again
  and the cluster answers.

Each check logs what it saw, so a failure says which one."""
import os
import socket
import struct
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from daemon_support import Cluster, Tap  # noqa: E402

JOIN_TIMEOUT = 2
MAX_PENDING = 4


class Relay:
    """Forwards whole control frames between the worker and the
    coordinator, and writes frames of its own between them on request."""

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.lock = threading.Lock()
        self.links = []        # (worker socket, coordinator socket) per connection
        self.last_up = None    # the last whole frame from the worker
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                w, _ = self.srv.accept()
            except OSError:
                return
            c = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.links.append((w, c))
            threading.Thread(target=self.pump, args=(w, c, True), daemon=True).start()
            threading.Thread(target=self.pump, args=(c, w, False), daemon=True).start()

    @staticmethod
    def read_exact(s, n):
        b = b""
        while len(b) < n:
            more = s.recv(n - len(b))
            if not more:
                raise OSError("closed")
            b += more
        return b

    def pump(self, src, dst, up):
        try:
            while True:
                head = self.read_exact(src, 4)
                frame = head + self.read_exact(src, struct.unpack(">I", head)[0])
                with self.lock:
                    if up:
                        self.last_up = frame
                    dst.sendall(frame)
        except OSError:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def inject(self, frame, up=True):
        """Writes frame into the newest connection, towards the coordinator (up) or the worker."""
        with self.lock:
            w, c = self.links[-1]
            (c if up else w).sendall(frame)

    def close(self):
        self.srv.close()


def frame(field, body):
    """A control Frame with one message field (a length-delimited protobuf field), length-prefixed."""
    def varint(n):
        out = b""
        while True:
            out += bytes([(n & 0x7f) | (0x80 if n > 0x7f else 0)])
            n >>= 7
            if not n:
                return out
    msg = varint(field << 3 | 2) + varint(len(body)) + body
    return struct.pack(">I", len(msg)) + msg


def closed_within(s, timeout):
    """Seconds until the peer closed s (reading what it sends), or None."""
    t0 = time.time()
    s.settimeout(timeout)
    try:
        while s.recv(4096):
            pass
        return time.time() - t0
    except OSError:
        return None


def main():
    t = Tap()
    tmp = tempfile.mkdtemp(prefix="starring-abuse-")
    cl = Cluster(tmp, 1, "--heartbeat", "0.2", "--join-timeout", str(JOIN_TIMEOUT), "--max-context", "512",
                 "--cluster-max-pending", str(MAX_PENDING))
    relay = None
    try:
        cl.wait_port(cl.cluster_port)
        relay = Relay(cl.cluster_port)
        cl.join = f"127.0.0.1:{relay.port}"
        w = cl.start_worker()
        t.check(cl.wait_serving(120), "the worker joins through the relay and the cluster serves")
        c = cl.client()

        def answers():
            _, text, _ = c.generate("Say hello.", chat=True, max_tokens=4, timeout=60)
            return len(text) > 0

        t.check(answers(), "and answers")

        # a slow client: one byte a second of a length prefix; dropped at the join timeout
        s = socket.create_connection(("127.0.0.1", cl.cluster_port))
        t0 = time.time()
        s.settimeout(0.05)
        dropped = None
        for i in range(JOIN_TIMEOUT + 6):
            try:
                s.sendall(b"\x00")
            except OSError:
                dropped = time.time() - t0
                break
            try:
                while True:
                    b = s.recv(4096)
                    if not b:
                        dropped = time.time() - t0
                        break
            except socket.timeout:
                pass
            except OSError:
                dropped = time.time() - t0
            if dropped is not None:
                break
            time.sleep(1)
        s.close()
        t.check(dropped is not None and dropped <= JOIN_TIMEOUT + 2 and
                cl.coordinator.wait_log(f"no join within {JOIN_TIMEOUT} s", 5),
                f"a client sending a byte a second is dropped at --join-timeout, logged ({dropped})")

        # a frame over the cap before the join: refused as soon as its length is read
        s = socket.create_connection(("127.0.0.1", cl.cluster_port))
        s.sendall(struct.pack(">I", 64 << 20))
        dt = closed_within(s, 5)
        s.close()
        t.check(dt is not None and dt < 2 and cl.coordinator.wait_log("is over the cap of 4096 bytes", 5),
                f"a 64 MiB frame before the join is refused at once, logged ({dt})")

        # a flood beyond --cluster-max-pending: the extra connections are closed at once
        flood = [socket.create_connection(("127.0.0.1", cl.cluster_port)) for _ in range(MAX_PENDING + 6)]
        time.sleep(0.3)
        extra = flood[MAX_PENDING:]
        closed = 0
        for s in extra:
            dt = closed_within(s, 1)
            closed += dt is not None and dt < 1
        t.check(closed == len(extra) and cl.coordinator.wait_log("(--cluster-max-pending)", 5),
                f"{len(extra)} connections beyond --cluster-max-pending {MAX_PENDING} are closed at once, logged "
                f"({closed} closed)")
        t.check(answers(), "and the worker is served while the flood holds its connections")
        for s in flood:
            s.close()

        def rejoined(n):
            """The worker proved the secret for the n-th time and the cluster serves."""
            t0 = time.time()
            while w.log_text().count("both proved the cluster secret") < n and time.time() - t0 < 30:
                time.sleep(0.05)
            return cl.wait_serving(60)

        # a frame without a MAC written into the joined connection, towards the coordinator
        relay.inject(frame(2, b"\x08\x00\x10\x63"))  # Heartbeat{worker 0, seq 99}
        t.check(cl.coordinator.wait_log("fails its MAC", 10), "an injected frame without a MAC is cut off by the "
                "coordinator, with a log line")
        t.check(rejoined(2) and answers(), "the worker joins again and the cluster answers")

        # a sealed frame of the worker's, replayed
        time.sleep(0.5)  # heartbeats go by
        relay.inject(relay.last_up)
        t.check(_wait_count(cl.coordinator, "fails its MAC", 2), "a replayed frame of the worker's is cut off too")
        t.check(rejoined(3) and answers(), "the worker joins again and the cluster answers")

        # a forged Leave towards the worker: it cuts the connection off instead of leaving
        relay.inject(frame(21, b"\x0a\x04gone"), up=False)
        t.check(_wait_count(w, "fails its MAC", 1) and w.alive() and "lets this worker go" not in w.log_text(),
                "a forged Leave is cut off by the worker, which stays")
        t.check(rejoined(4) and answers(), "the worker joins again and the cluster answers")
        c.close()
    finally:
        if relay:
            relay.close()
        rc, wrc = cl.stop()
    t.check(rc == 0 and wrc == [0], f"the coordinator and the worker stop cleanly ({rc}, {wrc})")
    if t.failed:
        t.note(cl.logs())
    return t.done()


def _wait_count(p, text, n, timeout=10):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if p.log_text().count(text) >= n:
            return True
        time.sleep(0.05)
    return False


if __name__ == "__main__":
    sys.exit(main())
