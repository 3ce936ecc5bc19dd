"""Where the tests find the tree, the build and the model: shared by the
daemon tests (through daemon_support) and those that need no daemon."""
import os
import subprocess

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("BUILD", "build")


def model_path():
    """SR_MODEL, else the model scripts/fetch-model caches (its last line)."""
    m = os.environ.get("SR_MODEL")
    if m:
        return m
    out = subprocess.run([os.path.join(ROOT, "scripts", "fetch-model")], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]
