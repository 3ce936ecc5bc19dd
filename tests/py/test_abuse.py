"""The client ports under abuse: starringd (a coordinator and a worker under
mpirun, the real model) with small limits, and on its gRPC and HTTP ports,
from raw sockets:

- garbage bytes; garbage after a valid HTTP/2 preface; an HTTP/2 frame over
  the frame size; a half-open connection (nothing sent, and half a preface
  then the write side shut); a slow client, one byte a second, on the
  HTTP/2 preface, on a call's headers and on a request message (HTTP: on a
  request body); a message over --max-message (from grpcio, and a prefix
  that claims 2 GiB); a body over the cap on HTTP; a flood of connections
  beyond --max-connections;
- each is refused or dropped, with a log line naming the peer's address,
  and while it lasts a grpcio client on its own channel is still served
  (a greedy answer equal to the one it got before, and health);
- the flood's refusals are logged at most once a second (the next line says
  how many went unlogged), and once it is gone new clients are served;
- an idle grpcio channel is sent GOAWAY after --idle-timeout and its next
  call reconnects and is served; an idle HTTP keep-alive connection closes.
"""
import http.client
import os
import selectors
import socket
import sys
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_support import code_of, Daemon, Tap, serve_and_stop, starring_client  # noqa: E402

pb = starring_client.pb
MAX_CONNS = 12
CLIENT_TIMEOUT = 1
IDLE_TIMEOUT = 4
MAX_MESSAGE = 64 << 10
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GEN = b"/starring.v1.Starring/Generate"


def frame(kind, flags, stream, payload):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


SETTINGS = frame(4, 0, 0, b"")


def literal(name, value):
    """An HPACK literal header field without indexing, new name, no Huffman."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def headers(path, stream=1, end_stream=False):
    block = (literal(b":method", b"POST") + literal(b":scheme", b"http") + literal(b":path", path) +
             literal(b":authority", b"abuse") + literal(b"content-type", b"application/grpc") +
             literal(b"te", b"trailers"))
    return frame(1, 0x4 | (0x1 if end_stream else 0), stream, block)


def peer(s):
    host, port = s.getsockname()[:2]
    return f"{host}:{port}"


def closed(s, timeout=30):
    """True once the server closes the connection (reads to EOF or reset)."""
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
        return True
    except socket.timeout:
        return False
    except OSError:
        return True


def slowly(s, data, stop):
    """Sends data one byte a second until it is sent, stop is set, or the
    server closes the connection."""
    for b in data:
        if stop.is_set():
            return
        try:
            s.sendall(bytes([b]))
        except OSError:
            return
        stop.wait(1)


class Witness:
    """A grpcio client on its own channel that must keep being served."""

    def __init__(self, d):
        self.c = d.client()
        self.prompt = "The capital of France is"
        self.want = self.answer()

    def answer(self):
        ids, _, _ = self.c.generate(self.prompt, max_tokens=4, temperature=0, timeout=120)
        return ids

    def served(self):
        try:
            return self.c.serving(timeout=30) and self.answer() == self.want
        except grpc.RpcError:
            return False

    def close(self):
        self.c.close()


def main():
    t = Tap()
    d = Daemon(1, "--max-connections", str(MAX_CONNS), "--client-timeout", str(CLIENT_TIMEOUT),
               "--idle-timeout", str(IDLE_TIMEOUT), "--max-message", str(MAX_MESSAGE), http=True)
    serve_and_stop(t, d, lambda: attacks(t, d), serves="the daemon serves", log_chars=5000)
    return t.done()


def attacks(t, d):
    w = Witness(d)
    t.check(len(w.want) == 4, f"the witness's greedy answer: {w.want}")
    try:
        grpc_port(t, d, w)
        http_port(t, d, w)
        flood(t, d, w)
        idle(t, d)
    finally:
        w.close()


def abuse(t, d, w, what, send, log, slow=None):
    """Opens a connection to the gRPC port, sends `send` (slow: then those
    bytes one a second), checks that the witness is served meanwhile, that
    the server drops the connection, and that the log has a line with the
    peer and `log`."""
    port = d.http_port if what.startswith("HTTP") else d.port
    s = socket.create_connection(("127.0.0.1", port))
    who = peer(s)
    stop = threading.Event()
    th = None
    try:
        if send:
            s.sendall(send)
        if slow:
            th = threading.Thread(target=slowly, args=(s, slow, stop))
            th.start()
        ok = w.served()
        gone = closed(s)
    finally:
        stop.set()
        if th:
            th.join()
        s.close()
    logged = d.wait_log(who, timeout=10) and any(who in ln and log in ln for ln in d.log_text().splitlines())
    t.check(ok and gone and logged, f"{what}: others are served ({ok}), it is dropped ({gone}), the log names "
            f"{who} with '{log}' ({logged})")


def grpc_port(t, d, w):
    abuse(t, d, w, "gRPC garbage bytes", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)), "not HTTP/2")
    abuse(t, d, w, "gRPC garbage after the preface", PREFACE + SETTINGS + frame(0, 0, 0, b"garbage"),
          "the HTTP/2 of")
    abuse(t, d, w, "gRPC frame over the frame size", PREFACE + SETTINGS + frame(0, 0, 1, bytes(20000))[:9], "the HTTP/2 of")
    abuse(t, d, w, "gRPC half-open (nothing sent)", b"", "no HTTP/2 preface within")
    s = socket.create_connection(("127.0.0.1", d.port))
    who = peer(s)
    s.sendall(PREFACE[:10])
    s.shutdown(socket.SHUT_WR)
    gone = closed(s)
    s.close()
    t.check(gone and d.wait_log(f"{who}: it went away before its HTTP/2 preface"),
            f"gRPC half-open (half a preface, then the write side shut): dropped, {who} logged")
    abuse(t, d, w, "gRPC slow preface (1 byte/s)", b"", "no HTTP/2 preface within", slow=PREFACE)
    abuse(t, d, w, "gRPC slow frame (1 byte/s)", PREFACE + SETTINGS, "an HTTP/2 frame begun was not received whole",
          slow=headers(GEN))
    abuse(t, d, w, "gRPC slow headers (1 byte/s)", PREFACE + SETTINGS + headers(GEN)[:12],
          "the request headers of a call not received", slow=headers(GEN)[12:])
    body = pb.GenerateRequest(prompt="x" * 100).SerializeToString()
    msg = b"\x00" + len(body).to_bytes(4, "big") + body
    abuse(t, d, w, "gRPC slow request message (1 byte/s)", PREFACE + SETTINGS + headers(GEN) +
          frame(0, 0x1, 1, msg)[:10], "a request message of /starring.v1.Starring/Generate not received", slow=msg[1:])
    abuse(t, d, w, "gRPC silent call (headers, no message)", PREFACE + SETTINGS + headers(GEN),
          "the next request message of /starring.v1.Starring/Generate not received")

    # over --max-message: from grpcio (its status and message), and a prefix claiming 2 GiB (raw)
    big = "y" * (MAX_MESSAGE + 1000)
    code, details = code_of(lambda: w.c.generate(big, max_tokens=2, timeout=60))
    t.check(code == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-message" in details,
            f"a message over --max-message from grpcio: {code} '{details}'")
    t.check(d.wait_log("refused: RESOURCE_EXHAUSTED request message of"), "the refusal is logged")
    t.check(w.served(), "the same channel is served after its refused call")
    s = socket.create_connection(("127.0.0.1", d.port))
    who = peer(s)
    s.sendall(PREFACE + SETTINGS + headers(GEN) + frame(0, 0, 1, b"\x00\x80\x00\x00\x00"))
    s.settimeout(30)
    got = b""
    try:
        while b"grpc-status" not in got and b"\x00\x00\x00\x03" not in got[-13:]:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except OSError:
        pass
    s.close()
    t.check(b"RESOURCE_EXHAUSTED" in got or d.wait_log(f"{who} refused: RESOURCE_EXHAUSTED"),
            f"a raw prefix that claims 2 GiB: RESOURCE_EXHAUSTED, {who} logged")


def http_port(t, d, w):
    abuse(t, d, w, "HTTP garbage bytes", bytes(range(1, 256)) + b"\r\n\r\n", ": 400 ")
    abuse(t, d, w, "HTTP half-open (nothing sent)", b"", "no request within")
    abuse(t, d, w, "HTTP slow body (1 byte/s)",
          b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n",
          "did not send its request within", slow=b'{"prompt": "hello", "max_tokens": 2}' + b" " * 24)
    abuse(t, d, w, "HTTP slow headers (1 byte/s)", b"", "did not send its request within",
          slow=b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    abuse(t, d, w, "HTTP body over the cap",
          f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_MESSAGE + 1}\r\n\r\n".encode(), ": 413 ")


def first_answers(socks, timeout=10):
    """Each socket's first bytes from the server: b"" for a close (or a
    reset) before any, None if nothing came within timeout."""
    sel = selectors.DefaultSelector()
    got = {}
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    t0 = time.time()
    while len(got) < len(socks) and time.time() - t0 < timeout:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                got[s] = s.recv(65536)
            except OSError:
                got[s] = b""
            sel.unregister(s)
    sel.close()
    return [got.get(s) for s in socks]


def flood(t, d, w):
    """More connections than --max-connections on each port, while the
    witness's channel (already connected) is served. Each flood connection
    opens as a well-behaved client would (gRPC: the preface; HTTP: a
    keep-alive request), so that those let in stay until --idle-timeout;
    those over the limit are closed at once (gRPC: before the server's
    SETTINGS) or answered 503 (HTTP)."""
    # the witness holds one of the gRPC port's places
    for name, port, hello, over in (("gRPC", d.port, PREFACE + SETTINGS, 11),
                                    ("HTTP", d.http_port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 10)):
        def refused(first):
            return first == b"" if name == "gRPC" else first is not None and first.startswith(b"HTTP/1.1 503 ")

        what = f"{name.replace('HTTP', 'http')}: refusing"
        before = d.log_text().count(what)
        socks = []
        for _ in range(MAX_CONNS + 10):
            s = socket.create_connection(("127.0.0.1", port))
            try:
                s.sendall(hello)
            except OSError:
                pass
            socks.append(s)
        n_refused = sum(refused(f) for f in first_answers(socks))
        time.sleep(1.2)  # a refusal after the first one's second is logged, with the count of those unlogged
        late = socket.create_connection(("127.0.0.1", port))
        try:
            late.sendall(hello)
        except OSError:
            pass
        late_refused = refused(first_answers([late])[0])
        late.close()
        ok = w.served()
        for s in socks:
            s.close()
        t.check(ok and n_refused == over and late_refused,
                f"{name} flood of {len(socks)} connections over a limit of {MAX_CONNS}: the witness is served ({ok}), "
                f"{n_refused} refused, one more a second later too ({late_refused})")
        t0 = time.time()
        while time.time() - t0 < 30 and not any(what in ln and "more refused unlogged" in ln
                                                for ln in d.log_text().splitlines()):
            time.sleep(0.1)
        lines = d.log_text().count(what) - before
        t.check(2 <= lines <= 3, f"{name} flood: {lines} log lines for its {over + 1} refusals (one a second at most), the "
                f"second with the count of those unlogged")
        time.sleep(0.5)
    c = d.client()
    try:
        t.check(c.serving(timeout=30), "after the floods a new client is served")
    finally:
        c.close()


def idle(t, d):
    c = d.client()
    try:
        c.serving(timeout=30)
        closes = d.log_text().count("gRPC: closing the connection of 127.0.0.1:")
        time.sleep(IDLE_TIMEOUT + 2)
        idled = d.log_text().count(f"idle for {IDLE_TIMEOUT} s")
        t.check(idled >= 1 and c.serving(timeout=30),
                f"an idle grpcio channel is sent GOAWAY ({idled} logged), then reconnects and is served")
        t.check(d.log_text().count("gRPC: closing the connection of 127.0.0.1:") > closes, "the idle close is logged")
    finally:
        c.close()
    h = http.client.HTTPConnection("127.0.0.1", d.http_port, timeout=30)
    h.request("GET", "/v1/models")
    r = h.getresponse()
    r.read()
    h.sock.settimeout(IDLE_TIMEOUT + 20)
    t.check(r.status == 200 and closed(h.sock, IDLE_TIMEOUT + 20),
            f"an idle HTTP keep-alive connection is closed after --idle-timeout ({r.status})")
    h.close()


if __name__ == "__main__":
    sys.exit(main())
