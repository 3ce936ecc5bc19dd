"""TAP checks of a JSON document, for the shell tests (tests/sh/tap.sh's
check_json runs this):

    python3 tests/sh/tap_json.py FILE N <<'PY'
    CHECKS = [("what is checked", lambda doc: ...), ...]
    PY

reads Python code on stdin that defines CHECKS, a list of (what, function of
the parsed document), and prints one TAP result per check, numbered from
N + 1, after a first one for "the JSON parses". Every check runs and
reports even when the document does not parse or an earlier check raises, so
a broken document or checker fails every check instead of dropping them.
Exits 1 if any result failed. The code may use pos(x): x is a finite number
above zero."""
import json
import math
import sys


def pos(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def main():
    path, n = sys.argv[1], int(sys.argv[2])
    failed = 0

    def tap(ok, what):
        nonlocal n, failed
        n += 1
        failed += not ok
        print(("ok" if ok else "not ok"), n, "-", what, flush=True)

    code = sys.stdin.read()
    env = {"pos": pos}
    try:
        exec(compile(code, "<checks>", "exec"), env)
        checks = env["CHECKS"]
    except Exception as e:
        tap(False, "the checks load (%s: %s)" % (type(e).__name__, e))
        return 1
    try:
        with open(path) as f:
            doc = json.load(f)
        err = None
    except Exception as e:
        doc, err = None, "%s: %s" % (type(e).__name__, e)
    tap(err is None, "the JSON parses%s" % (" (%s)" % err if err else ""))
    for what, fn in checks:
        if err is not None:
            tap(False, "%s (no document)" % what)
            continue
        try:
            tap(bool(fn(doc)), what)
        except Exception as e:
            tap(False, "%s (%s: %s)" % (what, type(e).__name__, e))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
