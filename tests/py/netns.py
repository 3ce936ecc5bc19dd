"""Hosts of a test in network namespaces of its own, so that what crosses
the network between them really crosses it (and can be cut).

Each host is a namespace with one veth link to a bridge in a hub
namespace, and an address of its own in a /24 chosen from the test's pid;
the test process reaches them over one more link from its own namespace.
close() (also on an exception, through `with`) kills what was started in
them and deletes the namespaces, which takes their links with them."""
import os
import subprocess


def _ip(*args, check=True):
    r = subprocess.run(["ip"] + list(args), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def unavailable():
    """Why namespaces cannot be made here, or None."""
    if os.getuid() != 0:
        return "network namespaces need root (ip netns add)"
    name = f"srprobe{os.getpid()}"
    r = _ip("netns", "add", name, check=False)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()}"
    r = _ip("-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "p1", check=False)
    _ip("netns", "del", name, check=False)
    if r.returncode != 0:
        return f"veth pairs cannot be made: {r.stderr.strip()}"
    return None


class Hosts:
    def __init__(self, names):
        pid = os.getpid()
        self.tag = f"sr{pid % 100000}"
        self.net = f"10.{200 + pid % 50}.{pid // 50 % 250}"
        self.hub = f"{self.tag}hub"
        self.names = list(names)
        self.ns = {}
        self.addrs = {}
        self.procs = []
        self.root_link = f"{self.tag}r"
        try:
            _ip("netns", "add", self.hub)
            _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.hub, "link", "set", "br0", "up")
            for i, n in enumerate(self.names):
                ns = f"{self.tag}{n}"
                _ip("netns", "add", ns)
                self.ns[n] = ns
                self.addrs[n] = f"{self.net}.{i + 1}"
                self._link(ns, f"h{i}", self.addrs[n])
            # the test process's own link, from its namespace
            _ip("link", "add", self.root_link, "type", "veth", "peer", "name", "hroot", "netns", self.hub)
            _ip("addr", "add", f"{self.net}.254/24", "dev", self.root_link)
            _ip("link", "set", self.root_link, "up")
            _ip("-n", self.hub, "link", "set", "hroot", "master", "br0", "up")
        except Exception:
            self.close()
            raise

    def _link(self, ns, hub_end, addr):
        _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", hub_end, "netns", self.hub)
        _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.hub, "link", "set", hub_end, "master", "br0", "up")

    def addr(self, name):
        return self.addrs[name]

    def wrap(self, name):
        """The command-line prefix that runs a program on host name."""
        return ["ip", "netns", "exec", self.ns[name]]

    def started(self, proc):
        """Registers a process (with .stop(sig)) for close() to kill."""
        self.procs.append(proc)
        return proc

    def cut(self, name, up=False):
        """Takes host name's link down (up=True: back up)."""
        i = self.names.index(name)
        _ip("-n", self.hub, "link", "set", f"h{i}", "up" if up else "down")

    def close(self):
        for p in self.procs:
            try:
                p.stop(9, timeout=10)
            except Exception:
                pass
        self.procs = []
        _ip("link", "del", self.root_link, check=False)
        for ns in list(self.ns.values()) + [self.hub]:
            _ip("netns", "del", ns, check=False)
        self.ns = {}

    def leftovers(self):
        """Namespaces of this test still there (none after close)."""
        out = _ip("netns", "list", check=False).stdout
        return [ln.split()[0] for ln in out.splitlines() if ln.startswith(self.tag)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
