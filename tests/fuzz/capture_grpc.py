#!/usr/bin/env python3
"""Captures what a real grpcio client sends for each call of the API, as
seeds of fuzz_grpc's corpus (tests/data/grpc/seed-NAME-sCODE: CODE is the
grpc-status that tests/unit/grpc_feed.c's methods answer its first call).
A socket server stands in for starringd: it sends its HTTP/2 SETTINGS,
records the client's bytes for a moment and hangs up, so the call never
gets an answer and the capture is the request alone. Each file's first
byte is fuzz_grpc's read-size selector (0: all at once).
    python3 tests/fuzz/capture_grpc.py [DIR]      (default tests/data/grpc)"""
import os
import socket
import sys
import threading
import time

import grpc

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
import starring_client  # noqa: E402

pb, health_pb = starring_client.pb, starring_client.health_pb
SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


def capture(call):
    """The bytes a fresh channel sends for call(client)."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    client = starring_client.Client(f"127.0.0.1:{ls.getsockname()[1]}")

    def run():
        try:
            call(client)
        except grpc.RpcError:
            pass

    th = threading.Thread(target=run)
    th.start()
    s, _ = ls.accept()
    s.sendall(SETTINGS + SETTINGS_ACK)
    got, t0 = b"", time.time()
    s.settimeout(0.1)
    while time.time() - t0 < 1.0:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        got += chunk
    s.close()
    ls.close()
    th.join()
    client.close()
    return got


def raw(path, body):
    return lambda c: c.channel.unary_unary(path, request_serializer=lambda b: b)(body, timeout=2)


def chunks():
    yield pb.ContextChunk(text="Alice has three cats. ", options=pb.ContextOptions(mode="ring", name="doc"))
    yield pb.ContextChunk(text="The dog is named Rex.")
    yield pb.ContextChunk(tokens=[1, 2, 3, 4])


CALLS = {
    "health-s0": lambda c: c.health.Check(health_pb.HealthCheckRequest(), timeout=2),
    "watch-s0": lambda c: list(c.health.Watch(health_pb.HealthCheckRequest(service="starring.v1.Starring"), timeout=2)),
    "stats-s0": lambda c: c.api.GetStats(pb.StatsRequest(), timeout=2),
    "list-s0": lambda c: c.api.ListContexts(pb.ListContextsRequest(), timeout=2),
    "get-s0": lambda c: c.api.GetContext(pb.ContextRef(id="0123456789abcdef"), timeout=2),
    "drop-s0": lambda c: c.api.DropContext(pb.ContextRef(id="0123456789abcdef"),
                                           metadata=[("authorization", "Bearer k")], timeout=2),
    "generate-s0": lambda c: list(c.api.Generate(pb.GenerateRequest(
        prompt="The capital of France is", max_tokens=4, temperature=0.5, top_k=40, stop="\n"), timeout=2)),
    "create-s0": lambda c: list(c.api.CreateContext(chunks(), timeout=2)),
    "bigmsg-s8": lambda c: list(c.api.Generate(pb.GenerateRequest(prompt="x" * 5000), timeout=2)),
    "unknown-s12": raw("/starring.v1.Starring/Nope", b""),
    "badmsg-s3": raw("/starring.v1.Starring/GetStats", b"\xff\xff\xff"),
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "data", "grpc")
    os.makedirs(out, exist_ok=True)
    for name, call in CALLS.items():
        data = capture(call)
        with open(os.path.join(out, f"seed-{name}"), "wb") as f:
            f.write(b"\x00" + data)
        print(f"seed-{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
