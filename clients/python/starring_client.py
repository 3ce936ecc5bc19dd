"""An example client of starringd's gRPC API, and the support of its tests.

The stubs are generated from proto/ with grpcio-tools when this module is
imported (into a temporary directory), so that they always match the
contract. The health stubs are generated under another module name
(sr_health), since a top-level package "grpc" would hide grpcio itself.

    python3 clients/python/starring_client.py --server 127.0.0.1:7070 upload FILE
    python3 clients/python/starring_client.py ask ID "question"
    python3 clients/python/starring_client.py health
"""
import argparse
import atexit
import importlib
import os
import shutil
import sys
import tempfile

import grpc
from grpc_tools import protoc

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _stubs():
    out = tempfile.mkdtemp(prefix="starring-stubs-")
    atexit.register(shutil.rmtree, out, True)
    src = os.path.join(out, "protos")
    os.makedirs(os.path.join(src, "starring", "v1"))
    os.makedirs(os.path.join(src, "sr_health"))
    shutil.copy(os.path.join(ROOT, "proto/starring/v1/starring.proto"), os.path.join(src, "starring/v1"))
    shutil.copy(os.path.join(ROOT, "proto/grpc/health/v1/health.proto"), os.path.join(src, "sr_health"))
    args = ["grpc_tools.protoc", "-I" + src, "--python_out=" + out, "--grpc_python_out=" + out,
            "starring/v1/starring.proto", "sr_health/health.proto"]
    if protoc.main(args) != 0:
        raise RuntimeError("grpc_tools.protoc failed on proto/")
    sys.path.insert(0, out)
    return (importlib.import_module("starring.v1.starring_pb2"), importlib.import_module("starring.v1.starring_pb2_grpc"),
            importlib.import_module("sr_health.health_pb2"), importlib.import_module("sr_health.health_pb2_grpc"))


pb, pb_grpc, health_pb, health_grpc = _stubs()


class Client:
    """The API over one channel."""

    def __init__(self, server="127.0.0.1:7070"):
        self.channel = grpc.insecure_channel(server)
        self.api = pb_grpc.StarringStub(self.channel)
        self.health = health_grpc.HealthStub(self.channel)

    def close(self):
        self.channel.close()

    def serving(self, timeout=5):
        r = self.health.Check(health_pb.HealthCheckRequest(), timeout=timeout)
        return r.status == health_pb.HealthCheckResponse.SERVING

    def upload(self, text=None, tokens=None, mode="", chat=False, name="", chunk=65536, on_progress=None,
               block_size=0, anchor_size=0, timeout=None):
        """Uploads a context; returns the Context once it is prefilled."""
        opts = pb.ContextOptions(mode=mode, chat=chat, name=name, block_size=block_size, anchor_size=anchor_size)

        def chunks():
            first = True
            if tokens is not None:
                for i in range(0, max(len(tokens), 1), chunk):
                    yield pb.ContextChunk(tokens=tokens[i:i + chunk], options=opts if first else None)
                    first = False
            else:
                t = text or ""
                for i in range(0, max(len(t), 1), chunk):
                    yield pb.ContextChunk(text=t[i:i + chunk], options=opts if first else None)
                    first = False

        ready = None
        for ev in self.api.CreateContext(chunks(), timeout=timeout):
            if ev.HasField("progress") and on_progress:
                on_progress(ev.progress.done, ev.progress.total)
            if ev.HasField("ready"):
                ready = ev.ready
        return ready

    def generate(self, prompt, context_id="", chat=False, max_tokens=0, on_text=None, timeout=None, **kw):
        """Returns (token ids, text, Done)."""
        req = pb.GenerateRequest(context_id=context_id, prompt=prompt, chat=chat, max_tokens=max_tokens, **kw)
        ids, text, done = [], [], None
        for ev in self.api.Generate(req, timeout=timeout):
            if ev.HasField("token"):
                if ev.token.id >= 0:
                    ids.append(ev.token.id)
                text.append(ev.token.text)
                if on_text:
                    on_text(ev.token.text)
            elif ev.HasField("done"):
                done = ev.done
        return ids, "".join(text), done

    def stats(self):
        return self.api.GetStats(pb.StatsRequest())

    def contexts(self):
        return list(self.api.ListContexts(pb.ListContextsRequest()).contexts)

    def drop(self, context_id):
        return self.api.DropContext(pb.ContextRef(id=context_id))


def main():
    ap = argparse.ArgumentParser(description="an example client of starringd")
    ap.add_argument("--server", default="127.0.0.1:7070")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("upload")
    up.add_argument("file")
    up.add_argument("--mode", default="")
    up.add_argument("--chat", action="store_true")
    ask = sub.add_parser("ask")
    ask.add_argument("id")
    ask.add_argument("question")
    ask.add_argument("--chat", action="store_true")
    ask.add_argument("-n", type=int, default=0)
    for name in ("ls", "stats", "health"):
        sub.add_parser(name)
    drop = sub.add_parser("drop")
    drop.add_argument("id")
    a = ap.parse_args()
    c = Client(a.server)
    if a.cmd == "upload":
        with open(a.file, encoding="utf-8", errors="replace") as f:
            ctx = c.upload(f.read(), mode=a.mode, chat=a.chat,
                           on_progress=lambda d, t: print(f"prefill {d}/{t} tokens", file=sys.stderr))
        print(ctx.id)
    elif a.cmd == "ask":
        _, _, done = c.generate(a.question, context_id=a.id, chat=a.chat, max_tokens=a.n,
                                on_text=lambda t: print(t, end="", flush=True))
        print()
        print(f"{done.generated_tokens} tokens, first after {done.time_to_first_token_s:.3f} s, "
              f"{done.tokens_per_s:.1f} tok/s, prefill reused: {done.prefill_reused}", file=sys.stderr)
    elif a.cmd == "ls":
        for ctx in c.contexts():
            print(ctx.id, ctx.n_tokens, ctx.mode, ctx.state, ctx.name)
    elif a.cmd == "stats":
        print(c.stats())
    elif a.cmd == "health":
        print("SERVING" if c.serving() else "NOT_SERVING")
    elif a.cmd == "drop":
        print(c.drop(a.id).state)


if __name__ == "__main__":
    main()
