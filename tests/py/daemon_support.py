"""Support for the daemon tests: start starringd under mpirun, TAP lines.

The client and its stubs (generated from proto/ at import) are
clients/python/starring_client.py."""
import calendar
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

from paths import BUILD, ROOT, model_path  # noqa: F401 (the tests import them from here)

sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
import starring_client  # noqa: E402
import grpc  # noqa: E402


def code_of(fn):
    """The gRPC status code and details that fn() ends with (OK, "" when it returns)."""
    try:
        fn()
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for_port(port, proc, what, timeout=60, pause=0.01):
    """Waits until 127.0.0.1:port accepts a connection (True), or timeout s
    (False); RuntimeError with the end of its log if proc (alive(),
    log_text()), the process that is to listen there, exits first."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if not proc.alive():
            raise RuntimeError(f"{what} exited: " + proc.log_text()[-2000:])
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(pause)
    return False


def wait_serving(addr, timeout=60, want=True):
    """Waits until the daemon at addr says it is serving (want False: that it is not)."""
    c = starring_client.Client(addr)
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            try:
                if c.serving(timeout=2) == want:
                    return True
            except Exception:
                pass
            time.sleep(0.1)
        return False
    finally:
        c.close()


def read_log(path):
    with open(path, errors="replace") as f:
        return f.read()


def serve_and_stop(t, d, body, serves="the cluster serves", log_chars=4000):
    """Waits for Daemon d to serve (a failed check `serves` with the end of
    its log if it does not), runs body(), checks that d is still up; then
    stops d and checks its exit status, with the end of its log if any check
    failed. Returns whether d served."""
    try:
        if not (d.wait_port() and d.wait_serving()):
            t.check(False, serves)
            t.note(d.log_text()[-3000:])
            return False
        body()
        t.check(d.alive(), "the daemon is still up")
    finally:
        rc = d.stop()
        t.check(rc in (0, 1), f"the daemon stops on SIGTERM (mpirun {rc})")
        if t.failed:
            t.note(d.log_text()[-log_chars:])
    return True


def passkey_context(path, *args):
    """scripts/make-passkey's text (args: its own), written to path too."""
    text = subprocess.run([os.path.join(ROOT, "scripts", "make-passkey")] + list(args), capture_output=True,
                          text=True, check=True).stdout
    with open(path, "w") as f:
        f.write(text)
    return text


def reference_run(ctx_path, question, n=16):
    """The single-process answer (starring-run, greedy, chat) to question
    after the context file, started in the background: read its stdout."""
    return subprocess.Popen([os.path.join(ROOT, BUILD, "starring-run"), "-m", model_path(), "--chat", "-f", ctx_path,
                             "-p", question, "-n", str(n), "--temp", "0", "-t", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, OMP_WAIT_POLICY="passive"))


def mpirun(np):
    cmd = ["mpirun", "--oversubscribe", "-np", str(np)]
    if os.getuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    return cmd


class Daemon:
    """starringd under mpirun: a coordinator and `workers` workers."""

    def __init__(self, workers, *args, http=False):
        """http: serve the OpenAI HTTP API too, on self.http_port (else off,
        so that parallel daemons do not share its default port)."""
        self.port, self.control = free_port(), free_port()
        self.http_port = free_port() if http else None
        args = list(args) + ["--http-listen", f"127.0.0.1:{self.http_port}" if http else "off"]
        self.log = tempfile.NamedTemporaryFile(prefix="starringd-", suffix=".log", delete=False)
        env = dict(os.environ, OMP_WAIT_POLICY="passive", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            mpirun(workers + 1) + [os.path.join(ROOT, BUILD, "starringd"), "--model", model_path(),
                                   "--listen", f"127.0.0.1:{self.port}", "--control", f"127.0.0.1:{self.control}",
                                   "-t", "1"] + list(args),
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.addr = f"127.0.0.1:{self.port}"

    def wait_port(self, timeout=60):
        return wait_for_port(self.port, self, "starringd", timeout, pause=0.005)

    def client(self):
        return starring_client.Client(self.addr)

    def wait_serving(self, timeout=60):
        return wait_serving(self.addr, timeout)

    def log_text(self):
        return read_log(self.log.name)

    def wait_log(self, text, timeout=30, stamp=False):
        """Waits for a log line with text (mpirun forwards lines late on a
        busy machine); with stamp, returns the line's own time (the log's
        ISO 8601 UTC stamp) instead of True."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            for line in self.log_text().splitlines():
                if text in line:
                    if not stamp:
                        return True
                    m = re.search(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)Z ", line)
                    if not m:
                        return None
                    return calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")) + float(m.group(2))
            time.sleep(0.05)
        return None if stamp else False

    def alive(self):
        return self.proc.poll() is None

    def coordinator_pid(self):
        m = re.search(r"coordinator/0\[(\d+)\]", self.log_text())
        return int(m.group(1)) if m else None

    def stop(self):
        """SIGTERM to the coordinator, which ends the workers; mpirun's exit
        status (mpirun itself ends a job it gets SIGTERM for with 1)."""
        if self.proc.poll() is None:
            pid = self.coordinator_pid()
            if pid:
                os.kill(pid, signal.SIGTERM)
            else:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Tap:
    def __init__(self):
        self.n = 0
        self.failed = 0

    def check(self, ok, what):
        self.n += 1
        if not ok:
            self.failed += 1
        print(f"{'ok' if ok else 'not ok'} {self.n} - {what}", flush=True)
        return ok

    def note(self, text):
        for line in str(text).splitlines():
            print(f"# {line}", flush=True)

    def done(self):
        print(f"1..{self.n}", flush=True)
        return 1 if self.failed else 0


def secret_file(directory, name="cluster.key"):
    """A fresh cluster secret (32 random bytes, mode 600) in directory."""
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(os.urandom(32))
    return path


class Proc:
    """One starringd process of a cluster without mpirun, its log in a file."""

    def __init__(self, name, args, wrap=()):
        """wrap: a command line that runs starringd (such as `ip netns exec NS`)."""
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"starringd-{name}-", suffix=".log", delete=False)
        env = dict(os.environ, OMP_WAIT_POLICY="passive", OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(list(wrap) + [os.path.join(ROOT, BUILD, "starringd")] + args, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def log_text(self):
        return read_log(self.log.name)

    def wait_log(self, text, timeout=30):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if text in self.log_text():
                return True
            time.sleep(0.05)
        return False

    def alive(self):
        return self.proc.poll() is None

    def wait(self, timeout=30):
        """The exit status, or None if it is still running after timeout."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Sends sig and waits timeout s for the exit (then SIGKILL); timeout 0: only sends it."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            if timeout and self.wait(timeout) is None:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Cluster:
    """starringd without mpirun: `--role coordinator` and `--role worker
    --join` as plain processes on loopback, with one cluster secret."""

    def __init__(self, directory, workers, *args):
        self.port, self.cluster_port = free_port(), free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.join = f"127.0.0.1:{self.cluster_port}"
        self.secret = secret_file(tempfile.mkdtemp(dir=directory))
        self.args = list(args)
        self.coordinator_args = [
            "--role", "coordinator", "--model", model_path(), "--listen", self.addr, "--http-listen", "off",
            "--cluster-listen", self.join, "--cluster-secret-file", self.secret, "--workers", str(workers)] + self.args
        self.coordinator = Proc("coordinator", self.coordinator_args)
        self.workers = []

    def restart_coordinator(self):
        """A new coordinator on the same ports and secret (the old one must be gone)."""
        self.coordinator = Proc("coordinator", self.coordinator_args)

    def start_worker(self, *args, secret=None):
        """A worker that joins the coordinator (with secret, another key
        file), with args of its own."""
        w = Proc(f"worker{len(self.workers)}", [
            "--role", "worker", "--model", model_path(), "--join", self.join,
            "--cluster-secret-file", secret or self.secret, "-t", "1"] + self.args + list(args))
        self.workers.append(w)
        return w

    def wait_port(self, port, timeout=60):
        return wait_for_port(port, self.coordinator, "the coordinator", timeout)

    def client(self):
        return starring_client.Client(self.addr)

    def wait_serving(self, timeout=60, want=True):
        return wait_serving(self.addr, timeout, want)

    def logs(self):
        return "\n".join(f"--- {p.name}\n{p.log_text()[-3000:]}" for p in [self.coordinator] + self.workers)

    def stop(self):
        """SIGTERM to the coordinator (which lets the workers go); its exit
        status, and the workers' (None for one still running)."""
        rc = self.coordinator.stop()
        wrc = [w.wait(30) if w.alive() else w.proc.returncode for w in self.workers]
        for w in self.workers:
            w.stop(signal.SIGKILL)
        return rc, wrc
