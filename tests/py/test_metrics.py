"""starringd's Prometheus metrics (--metrics-listen) against a real cluster
under mpirun: /metrics scraped before and after a few requests (gRPC and
HTTP, one gRPC call failing with NOT_FOUND, one HTTP request on no route),
parsed by prometheus_client's own text parser (so the format is right):
requests by method and status, tokens out equal to the tokens generated,
the time-to-first-token, decode and prefill histograms, resident contexts,
KV bytes and budget per worker, workers up, control-plane bytes,
data-plane bytes per worker both ways (a Ring prefill over 2 workers moves
KV between them: each one's counters grow); and GetStats carries the same
figures."""
import http.client
import json
import os
import socket
import subprocess
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(__file__))
from daemon_support import Daemon, Tap, free_port, model_path, serve_and_stop  # noqa: E402

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    text_string_to_metric_families = None

WORKERS = 2
BUDGET = 256 << 20
GEN = "/starring.v1.Starring/Generate"
CREATE = "/starring.v1.Starring/CreateContext"
STATS = "/starring.v1.Starring/GetStats"


def request(port, method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"} if body is not None else {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r.getheader("Content-Type"), data.decode()


def scrape(port):
    """(content type, {family name: family}, {(sample name, frozen labels): value})."""
    st, ctype, text = request(port, "GET", "/metrics")
    assert st == 200, f"GET /metrics: {st} {text[:200]}"
    fams, samples = {}, {}
    for f in text_string_to_metric_families(text):
        fams[f.name] = f
        for s in f.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return ctype, fams, samples


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0)


def by_label(samples, name, key):
    return {dict(k[1])[key]: v for k, v in samples.items() if k[0] == name}


def main():
    t = Tap()
    if text_string_to_metric_families is None:
        print("1..0 # SKIP the prometheus_client package is not installed (scripts/install-deps)")
        return 0
    mport = free_port()
    d = Daemon(WORKERS, "--mode", "ring", "--kv-budget", str(BUDGET), "--max-tokens", "64",
               "--metrics-listen", f"127.0.0.1:{mport}", http=True)
    if not serve_and_stop(t, d, lambda: run(t, d, mport)):
        return t.done()
    port_in_use(t)
    return t.done()


def port_in_use(t):
    """A metrics port that is taken: the daemon does not start, and says which option."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    d = Daemon(1, "--metrics-listen", f"127.0.0.1:{s.getsockname()[1]}")
    try:
        d.proc.wait(timeout=60)
        log = d.log_text()
        t.check(d.proc.returncode != 0 and "--metrics-listen 127.0.0.1:" in log and "address already in use" in log,
                f"a metrics port in use: starringd exits ({d.proc.returncode}) naming --metrics-listen")
    except subprocess.TimeoutExpired:
        t.check(False, "a metrics port in use: starringd exits")
    finally:
        d.stop()
        s.close()


def data_plane_moved(mport, before, timeout=30):
    """Waits until every worker's data-plane counters (sent and received)
    are above those of the scrape `before`, and (the heartbeats of the
    workers come at their own times) until what they sent in all equals
    what they received."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        _, _, now = scrape(mport)
        grew = [by_label(now, n, "worker").get(str(w), 0) > by_label(before, n, "worker").get(str(w), 0)
                for n in ("starring_data_plane_sent_bytes_total", "starring_data_plane_received_bytes_total")
                for w in range(WORKERS)]
        total = [sum(by_label(now, n, "worker").values())
                 for n in ("starring_data_plane_sent_bytes_total", "starring_data_plane_received_bytes_total")]
        if all(grew) and total[0] == total[1]:
            return True
        time.sleep(0.2)
    return False


def run(t, d, mport):
    ctype, fams, before = scrape(mport)
    t.check(ctype and ctype.startswith("text/plain") and "version=0.0.4" in ctype, f"Content-Type {ctype}")
    want = {"starring_requests": "counter", "starring_generated_tokens": "counter", "starring_prompt_tokens": "counter",
            "starring_control_received_bytes": "counter", "starring_control_sent_bytes": "counter",
            "starring_prefill_seconds": "histogram", "starring_decode_seconds": "histogram",
            "starring_time_to_first_token_seconds": "histogram", "starring_queue_depth": "gauge",
            "starring_contexts": "gauge", "starring_kv_bytes": "gauge", "starring_kv_budget_bytes": "gauge",
            "starring_worker_up": "gauge", "starring_data_plane_sent_bytes": "counter",
            "starring_data_plane_received_bytes": "counter"}
    wrong = {n: (fams[n].type if n in fams else None) for n, ty in want.items() if n not in fams or fams[n].type != ty}
    t.check(not wrong, f"every family parses with its type ({len(fams)} families; wrong or missing: {wrong})")
    ups = by_label(before, "starring_worker_up", "worker")
    t.check(ups == {str(w): 1.0 for w in range(WORKERS)}, f"workers up: {ups}")
    budgets = by_label(before, "starring_kv_budget_bytes", "worker")
    t.check(budgets == {str(w): float(BUDGET) for w in range(WORKERS)}, f"the KV budget per worker: {budgets}")
    t.check(value(before, "starring_control_received_bytes_total") > 0, "control bytes from the joins and heartbeats")

    g = d.client()
    try:
        _, _, done1 = g.generate("The three primary colors are", max_tokens=8, temperature=0)
        ctx = g.upload(text="Alice has three cats and a dog named Rex.")
        _, _, done2 = g.generate(" The dog is named", context_id=ctx.id, max_tokens=5, temperature=0)
        try:
            g.generate("x", context_id="0123456789abcdef", max_tokens=2)
            code = None
        except grpc.RpcError as e:
            code = e.code()
        t.check(code == grpc.StatusCode.NOT_FOUND, f"a question over no context: {code}")
        st, _, body = request(d.http_port, "POST", "/v1/completions",
                              {"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0})
        usage = json.loads(body).get("usage", {}) if st == 200 else {}
        t.check(st == 200 and usage.get("completion_tokens") == 6, f"an HTTP completion: {st} {usage}")
        st404, _, _ = request(d.http_port, "GET", "/v1/nothing")
        t.check(st404 == 404, f"an HTTP request on no route: {st404}")
        # the workers' data-plane bytes come with their heartbeats (one a second)
        moved = data_plane_moved(mport, before)
        stats = g.stats()
        _, _, after = scrape(mport)
    finally:
        g.close()
    t.check(moved, "data-plane bytes grew on every worker both ways after the Ring prefill and questions")

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    req = "starring_requests_total"
    moved = {
        "grpc Generate OK": delta(req, api="grpc", method=GEN, code="0"),
        "grpc Generate NOT_FOUND": delta(req, api="grpc", method=GEN, code="5"),
        "grpc CreateContext OK": delta(req, api="grpc", method=CREATE, code="0"),
        "http /v1/completions 200": delta(req, api="http", method="/v1/completions", code="200"),
        "http other 404": delta(req, api="http", method="other", code="404"),
    }
    t.check(moved == {"grpc Generate OK": 2, "grpc Generate NOT_FOUND": 1, "grpc CreateContext OK": 1,
                      "http /v1/completions 200": 1, "http other 404": 1}, f"requests by method and status moved: {moved}")
    generated = done1.generated_tokens + done2.generated_tokens + usage.get("completion_tokens", 0)
    out = delta("starring_generated_tokens_total")
    t.check(out == generated == 19, f"tokens out moved by the tokens generated ({out}, answers say {generated})")
    fed = delta("starring_prompt_tokens_total")
    t.check(fed > 0, f"tokens in moved ({fed})")
    ttft = delta("starring_time_to_first_token_seconds_count")
    dec = delta("starring_decode_seconds_count")
    pre = delta("starring_prefill_seconds_count")
    t.check(ttft == 3 and dec == 3 and pre == 3, f"a time to first token and a decode per answer, a prefill per new "
            f"context: counts {ttft}, {dec}, {pre}")
    inf = value(after, "starring_time_to_first_token_seconds_bucket", le="+Inf")
    t.check(inf == value(after, "starring_time_to_first_token_seconds_count") and
            delta("starring_time_to_first_token_seconds_sum") > 0, "the +Inf bucket is the count, the sum moved")
    contexts = value(after, "starring_contexts")
    t.check(contexts == stats.contexts and contexts >= 1, f"resident contexts {contexts} (GetStats {stats.contexts})")
    kv = by_label(after, "starring_kv_bytes", "worker")
    t.check(sum(kv.values()) == stats.kv_bytes and all(v > 0 for v in kv.values()) and len(kv) == WORKERS,
            f"KV bytes per worker {kv} (GetStats {stats.kv_bytes} in all)")
    t.check(delta("starring_control_sent_bytes_total") > 0 and delta("starring_control_received_bytes_total") > 0,
            "control bytes moved both ways")

    # GetStats: the same figures (the scrape came after it: only the GetStats call itself differs)
    t.check(stats.generated_tokens == value(after, "starring_generated_tokens_total") and
            stats.prompt_tokens == value(after, "starring_prompt_tokens_total"),
            f"GetStats tokens out {stats.generated_tokens}, in {stats.prompt_tokens}")
    got = {(r.api, r.method, str(r.code)): r.count for r in stats.requests if r.method != STATS}
    scraped = {(dict(k[1])["api"], dict(k[1])["method"], dict(k[1])["code"]): v for k, v in after.items()
               if k[0] == req and dict(k[1])["method"] != STATS}
    t.check(got == scraped, f"GetStats requests are the scraped ones ({len(got)} series)")
    h = stats.time_to_first_token_seconds
    t.check(h.count == value(after, "starring_time_to_first_token_seconds_count") and len(h.counts) == len(h.bounds) + 1
            and h.counts[-1] == h.count and
            all(h.counts[i] == value(after, "starring_time_to_first_token_seconds_bucket", le=f"{b:g}")
                for i, b in enumerate(h.bounds)),
            f"GetStats' time-to-first-token histogram is the scraped one ({h.count} observations)")
    sent = by_label(after, "starring_data_plane_sent_bytes_total", "worker")
    got_ = by_label(after, "starring_data_plane_received_bytes_total", "worker")
    t.check(stats.data_sent_bytes == sum(w.data_sent_bytes for w in stats.worker) > 0 and
            stats.data_received_bytes == sum(w.data_received_bytes for w in stats.worker) > 0 and
            all(w.data_sent_bytes <= sent[str(w.worker)] and w.data_received_bytes <= got_[str(w.worker)]
                for w in stats.worker),
            f"GetStats: data-plane bytes per worker, sent {[w.data_sent_bytes for w in stats.worker]}, received "
            f"{[w.data_received_bytes for w in stats.worker]} (scraped after: {sent}, {got_})")
    # what one worker sends the other receives: a pair's totals agree once the heartbeats are in
    t.check(sum(sent.values()) == sum(got_.values()), f"bytes sent equal bytes received over the workers "
            f"({sum(sent.values())}, {sum(got_.values())})")
    t.check([w.up for w in stats.worker] == [True] * WORKERS and
            stats.control_sent_bytes <= value(after, "starring_control_sent_bytes_total"),
            "GetStats: workers up, control bytes")
    t.note(f"model {os.path.basename(model_path())}")


if __name__ == "__main__":
    sys.exit(main())
