"""The C forward pass (build/starring-run --dump-logits) against the numpy
reference (ref_model.py): max |a - b| / max |b| of the logit vector under
1e-3 at several positions of a ~1k-token prompt on SmolLM2 ($SR_MODEL), and
on tiny random models of each tensor type (scripts/make-tiny-model).

With an f16 or bf16 cache the reference rounds K and V the same way, so the
comparison measures the arithmetic, not the storage format; an f32 cache
checks the arithmetic alone."""
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ref_model import RefModel  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("BUILD", "build")
RUN = os.path.join(ROOT, BUILD, "starring-run")
TOL = 1e-3

n_test = 0
n_fail = 0


def report(ok, what):
    global n_test, n_fail
    n_test += 1
    if not ok:
        n_fail += 1
    print("%s %d - %s" % ("ok" if ok else "not ok", n_test, what), flush=True)


def c_logits(model, ids, positions, vocab, extra=()):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "logits.bin")
        cmd = [RUN, "-m", model, "--ids", " ".join(map(str, ids)), "--dump-logits", out,
               "--dump-positions", ",".join(map(str, positions)), "-t", "2"] + list(extra)
        # passive: on a machine shared with other tests, spinning threads wait
        # out whole time slices at every barrier
        env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "passive"))
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            print("# %s failed: %s" % (" ".join(cmd[:2] + cmd[4:]), r.stderr.strip()[-500:]))
            return None
        return np.fromfile(out, dtype=np.float32).reshape(len(positions), vocab)


def compare(name, model, ids, positions, ref, kv="f16", extra=(), tol=TOL):
    want = ref.forward(ids, positions, kv_round=None if kv == "f32" else kv)
    got = c_logits(model, ids, positions, ref.vocab, ["--kv-type", kv] + list(extra))
    if got is None:
        report(False, "%s: starring-run ran" % name)
        return
    worst = 0.0
    for i, p in enumerate(positions):
        rel = float(np.max(np.abs(got[i] - want[i])) / np.max(np.abs(want[i])))
        worst = max(worst, rel)
        if rel >= tol:
            print("# %s position %d: relative difference %.3g" % (name, p, rel))
    same_top = all(int(np.argmax(got[i])) == int(np.argmax(want[i])) for i in range(len(positions)))
    report(worst < tol and same_top,
           "%s kv %s: max relative logit difference %.2g over positions %s" % (name, kv, worst, positions))


TEXT = """The river starts high in the mountains, where snow melts in the spring and runs down
through narrow valleys. Farmers along its banks grow wheat, barley and apples, and every autumn
the villages hold a market where people trade grain, cheese, wool and honey. In 1887 a great flood
washed away three bridges; the town council then built a stone dam and a canal that still carries
water to the mills. Today the old mill is a museum. Children visit it with their teachers to learn
how flour was made, how the wheel turned, and why the miller kept a cat. A short walk from the
museum there is a library with a garden, a small cafe and a bookshop that sells maps of the region.
def area(width, height):
    return width * height
for i in range(10):
    print(i, area(i, 2 * i + 1))
"""


def text_ids(model, n):
    """Token ids of TEXT, word by word through the vocabulary (no tokenizer
    needed: realistic text, unlike random ids), repeated up to n."""
    import gguf
    r = gguf.GGUFReader(model)
    f = r.fields["tokenizer.ggml.tokens"]
    vocab = {bytes(f.parts[i]).decode("utf-8", "replace"): j for j, i in enumerate(f.data)}
    ids = []
    for line in TEXT.split("\n"):
        for w in line.split(" "):
            for cand in ("\u0120" + w, w):
                if cand in vocab:
                    ids.append(vocab[cand])
                    break
        ids.append(vocab["\u010a"])
    return (ids * (n // len(ids) + 1))[:n]


def smollm2():
    model = os.environ.get("SR_MODEL") or subprocess.run(
        [os.path.join(ROOT, "scripts", "fetch-model")], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    # float64: a float32 numpy pass alone drifts ~6e-4 from it on this model
    ref = RefModel(model, dtype=np.float64)
    ids = text_ids(model, 1024)
    positions = [0, 1, 137, 511, 512, 800, len(ids) - 1]
    # f32 KV: the arithmetic alone (the C pass lands within ~1e-5)
    compare("SmolLM2 %d tokens" % len(ids), model, ids, positions, ref, "f32")
    # f16 KV, the default, against a reference rounding K and V the same way:
    # what is left is where the two round a value to neighbouring halves
    compare("SmolLM2 %d tokens" % len(ids), model, ids, positions, ref, "f16")
    # bf16 keeps 8 bits, so those neighbour flips weigh 8x more: 1e-2
    compare("SmolLM2 300 tokens (batch 100, block 64)", model, ids[:300], [99, 100, 299], ref, "bf16",
            ["--batch", "100", "--block-size", "64"], tol=1e-2)


def tiny():
    maker = os.path.join(ROOT, "scripts", "make-tiny-model")
    if not os.path.exists(maker):
        print("# scripts/make-tiny-model is missing: tiny models not tested")
        report(False, "tiny models: scripts/make-tiny-model exists")
        return
    cases = [(t, "llama") for t in ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q6_K")]
    cases += [("Q8_0", "qwen2"), ("F16", "qwen2")]
    with tempfile.TemporaryDirectory() as d:
        for typ, arch in cases:
            path = os.path.join(d, "tiny-%s-%s.gguf" % (arch, typ))
            args = [maker, path, "--type", typ] + (["--arch", arch] if arch != "llama" else [])
            r = subprocess.run(args, capture_output=True, text=True)
            if r.returncode != 0:
                print("# %s: %s" % (" ".join(args), r.stderr.strip()[-300:]))
                report(False, "tiny %s %s: model made" % (arch, typ))
                continue
            ref = RefModel(path, dtype=np.float64)
            rng = np.random.default_rng(11)
            ids = list(rng.integers(0, ref.vocab, size=300))
            compare("tiny %s %s" % (arch, typ), path, ids, [0, 5, 150, 299], ref, "f16", ["--batch", "64"])


def rope_scaling():
    """RoPE scaling on a tiny F32 model rewritten with scaling metadata (and
    no tokenizer: the logit dump takes ids): linear, llama3 from metadata, and
    llama3 as a rope_freqs.weight tensor holding the same factors."""
    import gguf
    maker = os.path.join(ROOT, "scripts", "make-tiny-model")
    if not os.path.exists(maker):
        return
    with tempfile.TemporaryDirectory() as d:
        base = os.path.join(d, "base.gguf")
        subprocess.run([maker, base, "--type", "F32"], check=True, capture_output=True)
        r = gguf.GGUFReader(base)
        head_dim = 64  # make-tiny-model: dim 256, 4 heads
        inv = 10000.0 ** (-2.0 * np.arange(head_dim // 2) / head_dim)
        wavelen = 2 * np.pi / inv
        orig, factor, low, high = 64, 8.0, 1.0, 4.0
        smooth = (orig / wavelen - low) / (high - low)
        scaled = np.where(wavelen > orig / low, inv / factor,
                          np.where(wavelen < orig / high, inv, (1 - smooth) * inv / factor + smooth * inv))
        variants = {
            "linear x4": ({"rope.scaling.type": "linear", "rope.scaling.factor": 4.0}, None),
            "llama3 metadata": ({"rope.scaling.type": "llama3", "rope.scaling.factor": factor,
                                 "rope.scaling.original_context_length": orig,
                                 "rope.scaling.low_freq_factor": low, "rope.scaling.high_freq_factor": high}, None),
            "llama3 rope_freqs tensor": ({}, (inv / scaled).astype(np.float32)),
        }
        rng = np.random.default_rng(5)
        ids = None
        logits = {}
        for name, (meta, freqs) in variants.items():
            path = os.path.join(d, name.replace(" ", "_") + ".gguf")
            w = gguf.GGUFWriter(path, "llama")
            for key, f in r.fields.items():
                if key.startswith("llama."):
                    v = f.contents()
                    if isinstance(v, float):
                        w.add_float32(key, v)
                    elif isinstance(v, int):
                        w.add_uint32(key, v)
            for key, v in meta.items():
                full = "llama." + key
                if isinstance(v, str):
                    w.add_string(full, v)
                elif isinstance(v, float):
                    w.add_float32(full, v)
                else:
                    w.add_uint32(full, v)
            for t in r.tensors:
                w.add_tensor(t.name, np.asarray(t.data, dtype=np.float32).reshape(
                    [int(x) for x in reversed(list(t.shape))]))
            if freqs is not None:
                w.add_tensor("rope_freqs.weight", freqs)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
            ref = RefModel(path, dtype=np.float64)
            if ids is None:
                ids = list(rng.integers(0, ref.vocab, size=400))
            compare("tiny rope %s" % name, path, ids, [10, 200, 399], ref, "f32")
            logits[name] = c_logits(path, ids, [399], ref.vocab, ["--kv-type", "f32"])
        a, b = logits["llama3 metadata"], logits["llama3 rope_freqs tensor"]
        report(a is not None and b is not None and float(np.max(np.abs(a - b))) < 1e-4 * float(np.max(np.abs(b))),
               "llama3 scaling from metadata equals the rope_freqs.weight tensor")
        base_ref = RefModel(base, dtype=np.float64)
        plain = base_ref.forward(ids, [399])
        report(float(np.max(np.abs(plain - b))) > 1e-2 * float(np.max(np.abs(b))),
               "the scaling changes the logits (the test can fail)")


def main():
    if not os.path.exists(RUN):
        print("1..1\nnot ok 1 - %s exists (run make)" % RUN)
        return 1
    smollm2()
    tiny()
    rope_scaling()
    print("1..%d" % n_test)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
