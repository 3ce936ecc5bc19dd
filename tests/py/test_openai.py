"""starringd's OpenAI-compatible HTTP API with the official `openai` client
against a real cluster under mpirun (ring mode: exact, so greedy tokens
match the single-process runtime): models, chat and text completions,
streaming with usage, curl -N, a follow-up that reuses the resident prompt
of a ~6k-token document (cached_tokens, and a time to first token that is
a small fraction of the first), context_id through extra_body, the same
greedy tokens as gRPC and build/starring-run, bad requests each with its
status and error object (the daemon serving the next one), a raw-socket
client that leaves mid-stream (the work stops: GetStats counts it), and
the API key on both APIs."""
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import grpc

sys.path.insert(0, os.path.dirname(__file__))
from daemon_support import BUILD, ROOT, Daemon, Tap, model_path, mpirun, serve_and_stop, starring_client  # noqa: E402

try:
    import openai
except ImportError:
    openai = None


def raw(port, method, path, body=b"", headers=None):
    """One HTTP request on a fresh connection: (status, parsed JSON or text)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    try:
        return r.status, json.loads(data)
    except ValueError:
        return r.status, data.decode(errors="replace")


def is_error(obj, code=None):
    e = obj.get("error") if isinstance(obj, dict) else None
    return (isinstance(e, dict) and isinstance(e.get("message"), str) and e["message"] and "type" in e
            and (code is None or e.get("code") == code))


def stream_chat(client, messages, max_tokens):
    """Streams a chat completion: (text, time to first token, usage)."""
    t0 = time.time()
    ttft, text, usage = None, "", None
    for ch in client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=max_tokens,
                                             temperature=0, stream=True, stream_options={"include_usage": True}):
        if ch.choices and ch.choices[0].delta.content:
            if ttft is None:
                ttft = time.time() - t0
            text += ch.choices[0].delta.content
        if ch.usage:
            usage = ch.usage
    return text, ttft, usage


MODEL_NAME = os.path.basename(model_path()).replace(".gguf", "")


def document():
    """About 6k tokens of varied text with a fact to find in it."""
    parts = []
    for i in range(225):
        parts.append(f"Entry {i}: the warehouse in district {i % 17} shipped {i * 37 % 1000} crates of "
                     f"{['apples', 'copper', 'paper', 'glass', 'salt'][i % 5]} on day {i % 30 + 1}.")
        if i == 110:
            parts.append("The secret password of the archive is BLUE-HERON-42.")
    return " ".join(parts)


def main():
    t = Tap()
    if openai is None:
        print("1..0 # SKIP the openai package is not installed (scripts/install-deps)")
        return 0
    d = Daemon(2, "--mode", "ring", "--max-message", "256K", "--max-tokens", "512", http=True)
    if not serve_and_stop(t, d, lambda: run(t, d)):
        return t.done()
    auth(t)
    return t.done()


def run(t, d):
    port = d.http_port
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=300)

    st, h = raw(port, "GET", "/health")
    t.check(st == 200 and h.get("status") == "ok", f"GET /health: 200 ok ({st} {h})")
    models = client.models.list()
    t.check([m.id for m in models.data] == [MODEL_NAME], f"GET /v1/models lists the model ({[m.id for m in models.data]})")

    # the same greedy tokens through HTTP, gRPC and starring-run
    prompt = "The three primary colors are"
    c = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=12, temperature=0)
    http_text = c.choices[0].text
    t.check(c.object == "text_completion" and http_text and c.usage.completion_tokens == 12 and
            c.choices[0].finish_reason == "length",
            f"a completion: {http_text!r}, {c.usage.completion_tokens} tokens, {c.choices[0].finish_reason}")
    g = d.client()
    try:
        _, grpc_text, _ = g.generate(prompt, max_tokens=12, temperature=0)
    finally:
        g.close()
    run_out = subprocess.run([os.path.join(ROOT, BUILD, "starring-run"), "-m", model_path(), "-p", prompt, "-n", "12",
                              "--temp", "0", "-t", "1"], capture_output=True, text=True, timeout=120)
    t.check(http_text == grpc_text, f"the same greedy text through HTTP and gRPC ({http_text!r} / {grpc_text!r})")
    t.check(run_out.stdout.strip() == http_text.strip(),
            f"the same greedy text as starring-run ({run_out.stdout.strip()!r})")
    # the same prompt again: its kept context is reused
    c2 = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=12, temperature=0)
    t.check(c2.choices[0].text == http_text and c2.usage.prompt_tokens_details.cached_tokens == c.usage.prompt_tokens - 1,
            f"the same prompt again reuses all but its last token ({c2.usage.prompt_tokens_details.cached_tokens} "
            f"of {c.usage.prompt_tokens} cached), same text")

    # a conversation of three turns: each reuses all the turns before it
    # (the second turn's question was kept on the query worker), with the
    # same greedy text as asking the whole last prompt anew
    p, seen = "Q: What is the capital of France?\nA:", []
    for q in ("\nQ: And of Italy?\nA:", "\nQ: And of Spain?\nA:", None):
        r = client.completions.create(model=MODEL_NAME, prompt=p, max_tokens=8, temperature=0)
        seen.append((r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens))
        if q:
            p += r.choices[0].text + q
    g = d.client()
    try:
        _, fresh, _ = g.generate(p, max_tokens=8, temperature=0)
    finally:
        g.close()
    t.check(seen[1][1] == seen[0][0] - 1 and seen[2][1] == seen[1][0] and r.choices[0].text == fresh,
            f"three turns: (prompt, cached) tokens {seen}, the last answer as asked anew ({fresh!r})")

    msgs = [{"role": "user", "content": "Name a fruit that is yellow."}]
    cc = client.chat.completions.create(model=MODEL_NAME, messages=msgs, max_tokens=10, temperature=0)
    t.check(cc.object == "chat.completion" and cc.choices[0].message.role == "assistant" and cc.choices[0].message.content
            and cc.usage.prompt_tokens > 10 and cc.usage.total_tokens == cc.usage.prompt_tokens + cc.usage.completion_tokens,
            f"a chat completion: {cc.choices[0].message.content!r}, usage {cc.usage.prompt_tokens}+{cc.usage.completion_tokens}")
    text, ttft, usage = stream_chat(client, msgs, 10)
    t.check(text == cc.choices[0].message.content and usage and usage.completion_tokens == cc.usage.completion_tokens,
            f"streamed: the same text, usage in the last chunk ({text!r}, {usage})")

    if shutil.which("curl"):
        out = subprocess.run(["curl", "-sN", f"http://127.0.0.1:{port}/v1/chat/completions", "-H",
                              "Content-Type: application/json", "-d",
                              json.dumps({"messages": [{"role": "user", "content": "Count to three."}], "max_tokens": 5, "temperature": 0, "stream": True,
                                          "return_progress": True})],
                             capture_output=True, text=True, timeout=120).stdout
        events = [ln[6:] for ln in out.splitlines() if ln.startswith("data: ")]
        chunks = [json.loads(e) for e in events[:-1]]
        toks = [ch for ch in chunks if ch.get("choices") and ch["choices"][0]["delta"].get("content")]
        t.check(events and events[-1] == "[DONE]" and len(toks) == 5 and
                any("prompt_progress" in ch for ch in chunks),
                f"curl -N: {len(toks)} token events, prompt_progress, data: [DONE]")
    else:
        t.check(True, "curl -N # SKIP curl is not installed (scripts/install-deps)")

    # a ~6k-token document, then a follow-up that repeats it
    doc = document()
    turn1 = [{"role": "user", "content": doc + "\n\nWhat is the secret password of the archive?"}]
    a1, ttft1, u1 = stream_chat(client, turn1, 12)
    turn2 = turn1 + [{"role": "assistant", "content": a1},
                     {"role": "user", "content": "How many crates did entry 5 ship?"}]
    a2, ttft2, u2 = stream_chat(client, turn2, 12)
    cached = u2.prompt_tokens_details.cached_tokens if u2 and u2.prompt_tokens_details else 0
    t.note(f"reuse: first turn {u1.prompt_tokens} prompt tokens, time to first token {ttft1:.2f} s; "
           f"follow-up {u2.prompt_tokens} prompt tokens ({cached} cached), time to first token {ttft2:.2f} s "
           f"({ttft2 / ttft1:.3f} of the first)")
    t.check(u1.prompt_tokens > 5000 and u1.prompt_tokens_details.cached_tokens == 0,
            f"the document is {u1.prompt_tokens} tokens, none cached the first time")
    t.check(cached == u1.prompt_tokens - 1, f"the follow-up reuses the first prompt ({cached} cached tokens)")
    t.check(ttft2 < 0.25 * ttft1, f"the follow-up's time to first token is a small fraction ({ttft2:.2f} s / {ttft1:.2f} s)")

    # context_id through extra_body: a context uploaded by gRPC
    g = d.client()
    try:
        ctx = g.upload(text="Alice has three cats and a dog named Rex.")
        stats0 = g.stats()
    finally:
        g.close()
    ci = client.completions.create(model=MODEL_NAME, prompt=" The dog is named", max_tokens=4, temperature=0,
                                   extra_body={"context_id": ctx.id})
    t.check(ci.usage.prompt_tokens_details.cached_tokens == ctx.n_tokens and "Rex" in ci.choices[0].text,
            f"context_id through extra_body: {ci.choices[0].text!r}, {ci.usage.prompt_tokens_details.cached_tokens} cached")
    st, e = raw(port, "POST", "/v1/completions", json.dumps({"prompt": "x", "context_id": "ffff"}).encode())
    t.check(st == 404 and is_error(e), f"an unknown context_id: 404 ({st} {e})")

    bad_requests(t, client, port)

    # a raw client that leaves mid-stream: the work stops
    s = socket.create_connection(("127.0.0.1", port))
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0, "stream": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)
    got = b""
    while got.count(b"data: ") < 3:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    s.close()
    g = d.client()
    try:
        stopped = False
        for _ in range(100):
            st1 = g.stats()
            if st1.cancelled > stats0.cancelled and st1.generated_tokens < stats0.generated_tokens + 100:
                stopped = True
                break
            time.sleep(0.1)
        t.check(got.count(b"data: ") >= 3 and stopped,
                f"a client gone mid-stream: its question is cancelled (cancelled {stats0.cancelled} -> {st1.cancelled}, "
                f"{st1.generated_tokens - stats0.generated_tokens} tokens since)")
    finally:
        g.close()
    c3 = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=12, temperature=0)
    t.check(c3.choices[0].text == http_text, "and the daemon serves the next request")


def bad_requests(t, client, port):
    def api_error(what, fn, cls, code=None):
        try:
            fn()
            t.check(False, f"{what}: refused")
        except cls as e:
            t.check(is_error(e.body if "error" in (e.body or {}) else {"error": e.body}, code),
                    f"{what}: {e.status_code}, {e.body}")

    chat = client.chat.completions.create
    m = [{"role": "user", "content": "hi"}]
    api_error("temperature 'hot'", lambda: chat(model=MODEL_NAME, messages=m, temperature="hot"), openai.BadRequestError)
    api_error("temperature 5", lambda: chat(model=MODEL_NAME, messages=m, temperature=5), openai.BadRequestError)
    api_error("max_tokens 0", lambda: chat(model=MODEL_NAME, messages=m, max_tokens=0), openai.BadRequestError)
    api_error("max_tokens over --max-tokens", lambda: chat(model=MODEL_NAME, messages=m, max_tokens=100000),
              openai.BadRequestError)
    api_error("n = 2", lambda: chat(model=MODEL_NAME, messages=m, n=2), openai.BadRequestError)
    api_error("an unknown model", lambda: chat(model="gpt-unknown", messages=m), openai.NotFoundError, "model_not_found")
    api_error("no messages", lambda: chat(model=MODEL_NAME, messages=[]), openai.BadRequestError)
    api_error("a role that does not exist", lambda: chat(model=MODEL_NAME, messages=[{"role": "wizard", "content": "x"}]),
              openai.BadRequestError)
    api_error("an empty prompt", lambda: client.completions.create(model=MODEL_NAME, prompt=""), openai.BadRequestError)
    api_error("two stop strings", lambda: client.completions.create(model=MODEL_NAME, prompt="a", stop=["x", "y"]),
              openai.BadRequestError)
    st, e = raw(port, "POST", "/v1/chat/completions", b'{"messages": [', {"Content-Type": "application/json"})
    t.check(st == 400 and is_error(e) and "not JSON" in e["error"]["message"], f"malformed JSON: 400 ({st} {e})")
    st, e = raw(port, "POST", "/v1/completions", b'{"prompt": "' + b"a" * 300000 + b'"}')
    t.check(st == 413 and is_error(e, "request_too_large"), f"a body over --max-message: 413 ({st} {e})")
    st, e = raw(port, "GET", "/v1/nothing")
    t.check(st == 404 and is_error(e), f"an unknown path: 404 ({st} {e})")
    st, e = raw(port, "GET", "/v1/chat/completions")
    t.check(st == 405 and is_error(e), f"GET on a POST route: 405 ({st})")
    c = client.chat.completions.create(model=MODEL_NAME, messages=m, max_tokens=3, temperature=0)
    t.check(c.choices[0].message.content is not None, "after the bad requests the next one is served")


def auth(t):
    key = "s3cret-key-for-the-test"
    kf = tempfile.NamedTemporaryFile("w", prefix="starring-key-", delete=False)
    kf.write(key + "\n")
    kf.close()
    # beyond loopback without a key: refused at start
    out = subprocess.run(mpirun(2) + [os.path.join(ROOT, BUILD, "starringd"), "--model", model_path(), "--listen",
                                      "0.0.0.0:0", "--http-listen", "off", "-t", "1"],
                         capture_output=True, text=True, timeout=60)
    t.check(out.returncode != 0 and "--api-key-file" in (out.stdout + out.stderr),
            "listening beyond loopback without a key: starringd refuses to start and says what to do")
    d = Daemon(1, "--api-key-file", kf.name, http=True)
    try:
        if not (d.wait_port() and d.wait_serving()):
            t.check(False, "the cluster with a key serves (health needs no key)")
            return
        port = d.http_port
        st, h = raw(port, "GET", "/health")
        t.check(st == 200, "HTTP /health needs no key")
        for what, hdr in (("no key", {}), ("a wrong key", {"Authorization": "Bearer nope"})):
            st, e = raw(port, "POST", "/v1/completions", json.dumps({"prompt": "a", "max_tokens": 1}).encode(), hdr)
            t.check(st == 401 and is_error(e, "invalid_api_key"), f"HTTP with {what}: 401 ({st} {e})")
        good = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        c = good.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=2, temperature=0)
        t.check(c.usage.completion_tokens == 2, "HTTP with the key: served")
        try:
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()
            t.check(False, "the openai client with a wrong key: AuthenticationError")
        except openai.AuthenticationError:
            t.check(True, "the openai client with a wrong key: AuthenticationError")
        ch = grpc.insecure_channel(d.addr)
        stub = starring_client.pb_grpc.StarringStub(ch)
        for what, md in (("no key", None), ("a wrong key", [("authorization", "Bearer nope")])):
            try:
                stub.GetStats(starring_client.pb.StatsRequest(), metadata=md, timeout=10)
                t.check(False, f"gRPC with {what}: UNAUTHENTICATED")
            except grpc.RpcError as e:
                t.check(e.code() == grpc.StatusCode.UNAUTHENTICATED, f"gRPC with {what}: {e.code()}")
        s = stub.GetStats(starring_client.pb.StatsRequest(), metadata=[("authorization", "Bearer " + key)], timeout=10)
        t.check(s.workers == 1, "gRPC with the key: served")
        ch.close()
        log = d.log_text()
        t.check("refused" in log and "127.0.0.1:" in log and key not in log,
                "refusals are logged with the peer's address, never the key")
    finally:
        d.stop()
        os.unlink(kf.name)


if __name__ == "__main__":
    sys.exit(main())
