#!/usr/bin/env python3
"""scripts/make-tiny-model: one model of each tensor type (and qwen2, tied,
untied) read back with gguf.GGUFReader: tensor names, shapes and types,
metadata values, the tokenizer, weight statistics after dequantization, and
our Q6_K quantizer against the gguf package's dequantizer. Prints TAP."""
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import tempfile

import numpy as np

import gguf
from gguf import GGMLQuantizationType as Q
from gguf import quants

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "scripts", "make-tiny-model")

results = []


def check(ok, what, detail=""):
    results.append(bool(ok))
    n = len(results)
    print(f"{'ok' if ok else 'not ok'} {n} - {what}")
    if not ok and detail:
        print(f"# {detail}")


def load_script():
    loader = importlib.machinery.SourceFileLoader("make_tiny_model", SCRIPT)
    spec = importlib.util.spec_from_loader("make_tiny_model", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def make(path, *args):
    r = subprocess.run([sys.executable, SCRIPT, path, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"make-tiny-model {' '.join(args)} failed: {r.stderr.strip()}")


def field(reader, key):
    f = reader.fields[key]
    return f.contents()


def check_model(path, arch, qtype, layers, dim, heads, kv_heads, ffn, vocab, tied):
    name = f"{arch} {qtype.name}{' tied' if tied else ''}"
    r = gguf.GGUFReader(path)
    head_dim = dim // heads
    want = {"token_embd.weight": ([dim, vocab], qtype), "output_norm.weight": ([dim], Q.F32)}
    if not tied:
        want["output.weight"] = ([dim, vocab], qtype)
    for i in range(layers):
        b = f"blk.{i}"
        want[f"{b}.attn_norm.weight"] = ([dim], Q.F32)
        want[f"{b}.ffn_norm.weight"] = ([dim], Q.F32)
        want[f"{b}.attn_q.weight"] = ([dim, heads * head_dim], qtype)
        want[f"{b}.attn_k.weight"] = ([dim, kv_heads * head_dim], qtype)
        want[f"{b}.attn_v.weight"] = ([dim, kv_heads * head_dim], qtype)
        want[f"{b}.attn_output.weight"] = ([heads * head_dim, dim], qtype)
        want[f"{b}.ffn_gate.weight"] = ([dim, ffn], qtype)
        want[f"{b}.ffn_up.weight"] = ([dim, ffn], qtype)
        want[f"{b}.ffn_down.weight"] = ([ffn, dim], qtype)
        if arch == "qwen2":
            want[f"{b}.attn_q.bias"] = ([heads * head_dim], Q.F32)
            want[f"{b}.attn_k.bias"] = ([kv_heads * head_dim], Q.F32)
            want[f"{b}.attn_v.bias"] = ([kv_heads * head_dim], Q.F32)
    got = {t.name: ([int(x) for x in t.shape], t.tensor_type) for t in r.tensors}
    check(got == want, f"{name}: tensor names, shapes and types",
          f"missing {sorted(set(want) - set(got))}, extra {sorted(set(got) - set(want))}, "
          f"differ {[k for k in want if k in got and got[k] != want[k]]}")

    meta = {
        "general.architecture": arch,
        f"{arch}.block_count": layers,
        f"{arch}.embedding_length": dim,
        f"{arch}.feed_forward_length": ffn,
        f"{arch}.attention.head_count": heads,
        f"{arch}.attention.head_count_kv": kv_heads,
        f"{arch}.rope.dimension_count": head_dim,
        f"{arch}.context_length": 4096,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt2",
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    bad = {k: field(r, k) for k, v in meta.items() if k not in r.fields or field(r, k) != v}
    check(not bad, f"{name}: metadata values", f"wrong: {bad}")
    eps = field(r, f"{arch}.attention.layer_norm_rms_epsilon")
    base = field(r, f"{arch}.rope.freq_base")
    check(0 < eps <= 1e-5 and base >= 10000.0, f"{name}: norm epsilon and rope base", f"{eps} {base}")

    tokens = field(r, "tokenizer.ggml.tokens")
    types = field(r, "tokenizer.ggml.token_type")
    merges = field(r, "tokenizer.ggml.merges")
    byte_chars = load_script().bytes_to_unicode()
    ok = (len(tokens) == vocab and len(types) == vocab and tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
          and tokens[3:259] == [byte_chars[b] for b in range(256)] and list(types[:3]) == [3, 3, 3]
          and len(set(tokens)) == vocab)
    check(ok, f"{name}: tokenizer has {vocab} distinct tokens, specials then 256 byte tokens")
    # every merge joins two existing tokens into an existing token
    index = {t: i for i, t in enumerate(tokens)}
    merge_ok = len(merges) > 0
    for m in merges:
        a, b = m.split(" ")
        merge_ok &= a in index and b in index and (a + b) in index
    check(merge_ok, f"{name}: {len(merges)} merges join existing tokens into existing tokens")

    # weights: sane scales after dequantization, norms near 1
    stats_ok, detail = True, []
    for t in r.tensors:
        x = quants.dequantize(t.data, t.tensor_type).reshape(-1).astype(np.float64)
        if not np.all(np.isfinite(x)):
            stats_ok = False
            detail.append(f"{t.name} not finite")
        if t.name.endswith("norm.weight"):
            if abs(x.mean() - 1.0) > 0.05 or x.std() > 0.2:
                stats_ok = False
                detail.append(f"{t.name} mean {x.mean():.3f} std {x.std():.3f}")
        elif t.name.endswith(".weight") and len(t.shape) == 2:
            fan_in = int(t.shape[0])
            std = x.std()
            hi = 0.6 if t.name == "token_embd.weight" else 1.1 / np.sqrt(fan_in)
            lo = 0.4 if t.name == "token_embd.weight" else 0.2 / np.sqrt(fan_in)
            if not lo <= std <= hi:
                stats_ok = False
                detail.append(f"{t.name} std {std:.4f} not in [{lo:.4f}, {hi:.4f}]")
    check(stats_ok, f"{name}: weights finite, scaled by fan-in, norms near 1", "; ".join(detail[:5]))


def test_q6_k(mod):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 512)).astype(np.float32)
    x[0, :256] = 0.0   # an all-zero block
    x[1, 16:32] *= 100  # a sub-block with a far larger range
    q = mod.quantize_q6_k(x)
    check(q.shape == (8, 2 * 210) and q.dtype == np.uint8, "Q6_K: 210 bytes per block of 256")
    y = quants.dequantize(q, Q.Q6_K).reshape(x.shape)
    check(np.all(y[0, :256] == 0.0), "Q6_K: a zero block stays zero")
    # error per 16-value sub-block: half a step (amax/32), a whole step for
    # the clipped +32 end, plus the 8-bit rounding of the scale (0.5/128 of
    # the block's largest step, times 32)
    amax = np.abs(x).reshape(-1, 16).max(axis=1, keepdims=True)
    bmax = np.abs(x).reshape(-1, 256).max(axis=1).repeat(16).reshape(-1, 1)
    err = np.abs(y - x).reshape(-1, 16)
    bound = amax / 32.0 + bmax / 32.0 / 128.0 * 0.5 * 32 * 1.01
    check(np.all(err <= bound + 1e-6), "Q6_K: dequantized error within its bound",
          f"worst excess {(err - bound).max():.3g}")
    rel = np.sqrt(((y - x) ** 2).mean() / (x ** 2).mean())
    check(rel < 0.03, f"Q6_K: relative RMS error {rel:.4f} < 0.03 on Gaussian data")
    # values on the grid d * scale * (q - 32), with one scale at -128 and
    # each sub-block reaching q = -32, come back exactly
    d = np.float16(0.01)
    scales = rng.integers(-128, 128, size=16)
    scales[scales == 0] = 5
    scales[3] = -128
    qs = rng.integers(-31, 32, size=256)
    qs[::16] = -32
    grid = (np.float32(d) * np.repeat(scales, 16).astype(np.float32) * qs).astype(np.float32).reshape(1, 256)
    y = quants.dequantize(mod.quantize_q6_k(grid), Q.Q6_K).reshape(1, 256)
    check(np.array_equal(y, grid), "Q6_K: on-grid values round-trip exactly",
          f"max diff {np.abs(y - grid).max():.3g}")


def main():
    mod = load_script()
    test_q6_k(mod)
    with tempfile.TemporaryDirectory() as tmp:
        for t in ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q6_K"]:
            path = os.path.join(tmp, f"tiny-{t}.gguf")
            tied = t in ("Q8_0", "Q6_K")
            make(path, "--type", t, "--layers", "2", "--seed", "3", *(["--tied"] if tied else []))
            check_model(path, "llama", Q[t], 2, 256, 4, 2, 512, 512, tied)
        path = os.path.join(tmp, "tiny-qwen2.gguf")
        make(path, "--arch", "qwen2", "--type", "Q8_0", "--dim", "64", "--heads", "4", "--kv-heads", "1",
             "--ffn", "96", "--vocab", "300", "--layers", "3")
        check_model(path, "qwen2", Q.Q8_0, 3, 64, 4, 1, 96, 300, False)

        a, b, c = (os.path.join(tmp, n) for n in ("a.gguf", "b.gguf", "c.gguf"))
        make(a, "--type", "Q4_0", "--dim", "64", "--ffn", "64", "--vocab", "300", "--seed", "5")
        make(b, "--type", "Q4_0", "--dim", "64", "--ffn", "64", "--vocab", "300", "--seed", "5")
        make(c, "--type", "Q4_0", "--dim", "64", "--ffn", "64", "--vocab", "300", "--seed", "6")
        same = open(a, "rb").read() == open(b, "rb").read()
        differ = open(a, "rb").read() != open(c, "rb").read()
        check(same and differ, "the same seed gives the same file, another seed another")

        r = subprocess.run([sys.executable, SCRIPT, os.path.join(tmp, "x.gguf"), "--type", "Q6_K", "--dim", "64"],
                           capture_output=True, text=True)
        check(r.returncode != 0 and "multiples of 256" in r.stderr and not os.path.exists(os.path.join(tmp, "x.gguf")),
              "a shape the type cannot pack is refused with a message", r.stderr.strip())
    failed = results.count(False)
    print(f"1..{len(results)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
