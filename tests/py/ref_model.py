"""An independent numpy forward pass of a Llama-family GGUF model (llama, qwen2).

Reads the file with gguf.GGUFReader, dequantizes every weight with
gguf.quants.dequantize and runs all positions at once in float32 or float64:
RMSNorm, Q/K/V (+ bias), RoPE (adjacent pairs for llama, halves for qwen2),
causal GQA softmax attention, SwiGLU MLP, final norm, tied or separate head.

kv_round="f16"/"bf16" rounds K and V as a cache of that type stores them, so
that a comparison with the C runtime measures the arithmetic, not the
storage format.

    python3 tests/py/ref_model.py MODEL.gguf 1 2 3 ...   # prints the argmax of the last logits
"""
import sys

import numpy as np
import gguf
from gguf.quants import dequantize


def _field(r, key, default=None):
    f = r.fields.get(key)
    if f is None:
        return default
    v = f.contents()
    return v


def _round_bf16(a):
    u = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


class RefModel:
    def __init__(self, path, dtype=np.float32):
        r = gguf.GGUFReader(path)
        self.dtype = dtype
        arch = _field(r, "general.architecture")
        if arch not in ("llama", "qwen2"):
            raise ValueError("unsupported architecture %r" % arch)
        self.arch = arch
        g = lambda k, d=None: _field(r, "%s.%s" % (arch, k), d)
        self.dim = int(g("embedding_length"))
        self.n_layer = int(g("block_count"))
        self.n_head = int(g("attention.head_count"))
        self.n_head_kv = int(g("attention.head_count_kv", self.n_head))
        self.head_dim = int(g("attention.key_length", self.dim // self.n_head))
        self.rope_dim = int(g("rope.dimension_count", self.head_dim))
        self.eps = float(g("attention.layer_norm_rms_epsilon", 1e-5))
        self.theta = float(g("rope.freq_base", 10000.0))
        self.scaling = g("rope.scaling.type", "none")
        self.factor = float(g("rope.scaling.factor", 1.0))
        self.low = float(g("rope.scaling.low_freq_factor", 1.0))
        self.high = float(g("rope.scaling.high_freq_factor", 4.0))
        self.orig_ctx = float(g("rope.scaling.original_context_length", 0))
        self.t = {}
        for t in r.tensors:
            a = np.asarray(t.data)
            if t.tensor_type not in (gguf.GGMLQuantizationType.F32,):
                a = dequantize(a, t.tensor_type)
            shape = [int(x) for x in reversed(list(t.shape))]  # numpy order: rows, then ne0
            self.t[t.name] = np.asarray(a, dtype=dtype).reshape(shape)
        self.vocab = self.t["token_embd.weight"].shape[0]
        self.out = self.t.get("output.weight", self.t["token_embd.weight"])

    def _rope(self, x, pos):
        # x: [n, heads, head_dim]; rotates the first rope_dim dims of each head
        half = self.rope_dim // 2
        inv = self.theta ** (-2.0 * np.arange(half, dtype=np.float64) / self.rope_dim)
        if "rope_freqs.weight" in self.t:  # llama3 factors as a tensor
            inv = inv / self.t["rope_freqs.weight"].astype(np.float64)
        elif self.scaling == "llama3":  # Meta's formula from the original context length
            wavelen = 2 * np.pi / inv
            smooth = (self.orig_ctx / wavelen - self.low) / (self.high - self.low)
            mid = (1 - smooth) * inv / self.factor + smooth * inv
            inv = np.where(wavelen > self.orig_ctx / self.low, inv / self.factor,
                           np.where(wavelen < self.orig_ctx / self.high, inv, mid))
        elif self.scaling == "linear":
            inv = inv / self.factor
        ang = pos[:, None].astype(np.float64) * inv[None, :]
        cos = np.cos(ang).astype(self.dtype)[:, None, :]
        sin = np.sin(ang).astype(self.dtype)[:, None, :]
        x = x.copy()
        if self.arch == "llama":  # adjacent pairs (2i, 2i+1)
            a = x[:, :, 0:self.rope_dim:2].copy()
            b = x[:, :, 1:self.rope_dim:2].copy()
            x[:, :, 0:self.rope_dim:2] = a * cos - b * sin
            x[:, :, 1:self.rope_dim:2] = a * sin + b * cos
        else:  # halves (i, i + rope_dim/2)
            a = x[:, :, :half].copy()
            b = x[:, :, half:self.rope_dim].copy()
            x[:, :, :half] = a * cos - b * sin
            x[:, :, half:self.rope_dim] = a * sin + b * cos
        return x

    def _norm(self, x, w):
        ms = np.mean(x * x, axis=-1, keepdims=True)
        return x / np.sqrt(ms + self.eps) * w

    def forward(self, tokens, positions, kv_round=None):
        """Logits [len(positions), vocab] at the given prompt positions."""
        tokens = np.asarray(tokens, dtype=np.int64)
        n = len(tokens)
        pos = np.arange(n)
        x = self.t["token_embd.weight"][tokens].astype(self.dtype)
        hd, H, Hkv = self.head_dim, self.n_head, self.n_head_kv
        group = H // Hkv
        mask = np.triu(np.full((n, n), -np.inf, dtype=self.dtype), k=1)
        for l in range(self.n_layer):
            p = "blk.%d." % l
            h = self._norm(x, self.t[p + "attn_norm.weight"])
            q = h @ self.t[p + "attn_q.weight"].T
            k = h @ self.t[p + "attn_k.weight"].T
            v = h @ self.t[p + "attn_v.weight"].T
            if p + "attn_q.bias" in self.t:
                q = q + self.t[p + "attn_q.bias"]
                k = k + self.t[p + "attn_k.bias"]
                v = v + self.t[p + "attn_v.bias"]
            q = self._rope(q.reshape(n, H, hd), pos)
            k = self._rope(k.reshape(n, Hkv, hd), pos)
            v = v.reshape(n, Hkv, hd)
            if kv_round == "f16":
                k = k.astype(np.float16).astype(self.dtype)
                v = v.astype(np.float16).astype(self.dtype)
            elif kv_round == "bf16":
                k = _round_bf16(k).astype(self.dtype)
                v = _round_bf16(v).astype(self.dtype)
            att = np.empty((n, H, hd), dtype=self.dtype)
            for hq in range(H):
                kh = k[:, hq // group, :]
                vh = v[:, hq // group, :]
                s = (q[:, hq, :] @ kh.T) / np.sqrt(hd) + mask
                s = s - s.max(axis=1, keepdims=True)
                e = np.exp(s)
                att[:, hq, :] = (e / e.sum(axis=1, keepdims=True)) @ vh
            x = x + att.reshape(n, H * hd) @ self.t[p + "attn_output.weight"].T
            h = self._norm(x, self.t[p + "ffn_norm.weight"])
            gate = h @ self.t[p + "ffn_gate.weight"].T
            up = h @ self.t[p + "ffn_up.weight"].T
            x = x + (gate / (1.0 + np.exp(-gate)) * up) @ self.t[p + "ffn_down.weight"].T
        rows = self._norm(x[np.asarray(positions)], self.t["output_norm.weight"])
        return rows @ self.out.T


if __name__ == "__main__":
    m = RefModel(sys.argv[1])
    ids = [int(a) for a in sys.argv[2:]]
    print(int(np.argmax(m.forward(ids, [len(ids) - 1])[0])))
