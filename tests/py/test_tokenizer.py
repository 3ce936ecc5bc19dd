#!/usr/bin/env python3
"""starring-tokenize against an independent tokenizer.

Builds a Hugging Face `tokenizers` BPE from the same GGUF's vocabulary and
merges (read with the `gguf` package), with SmolLM2's own pre-tokenizer
(individual digits, then byte-level with the gpt2 regex) and its special
tokens, and compares token ids for a set of strings; then checks that
text -> ids -> text round-trips byte for byte, invalid UTF-8 included.
Prints TAP lines; exits non-zero on any failure."""
import os
import random
import subprocess
import sys
import tempfile
import time
import unicodedata

import gguf
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from paths import BUILD, ROOT, model_path

BIN = os.path.join(ROOT, BUILD, "starring-tokenize")
TMP = tempfile.mkdtemp(prefix="sr-tok-")

n_test = 0
n_fail = 0


def report(ok, what, detail=""):
    global n_test, n_fail
    n_test += 1
    if not ok:
        n_fail += 1
    print(f"{'ok' if ok else 'not ok'} {n_test} - {what}")
    if not ok and detail:
        for line in str(detail).splitlines()[:12]:
            print(f"# {line}")
    sys.stdout.flush()


def hf_tokenizer(path):
    r = gguf.GGUFReader(path)
    f = r.fields
    pre = f["tokenizer.ggml.pre"].contents()
    assert f["tokenizer.ggml.model"].contents() == "gpt2", "this test knows byte-level BPE models only"
    assert pre == "smollm", f"no reference pre-tokenizer for {pre!r}"
    tokens = f["tokenizer.ggml.tokens"].contents()
    types = f["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ", 1)) for m in f["tokenizer.ggml.merges"].contents()]
    tk = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    # SmolLM2's tokenizer.json: Sequence[Digits(individual_digits), ByteLevel(add_prefix_space=False)]
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                           for i in range(len(tokens)) if types[i] == 3])
    return tk, tokens


def run(args, data=None):
    return subprocess.run([BIN, "-m", MODEL] + args, input=data, capture_output=True, timeout=60)


def encode_file(raw, extra=()):
    p = os.path.join(TMP, "in.txt")
    with open(p, "wb") as fh:
        fh.write(raw)
    out = run(["-f", p, "--no-bos"] + list(extra))
    if out.returncode != 0:
        raise RuntimeError(out.stderr.decode(errors="replace"))
    return [int(x) for x in out.stdout.split()], out.stderr.decode()


def decode_ids(ids):
    p = os.path.join(TMP, "ids.txt")
    with open(p, "w") as fh:
        fh.write(" ".join(map(str, ids)))
    out = run(["--decode", "-f", p])
    if out.returncode != 0:
        raise RuntimeError(out.stderr.decode(errors="replace"))
    return out.stdout


def first_diff(a, b, tokens):
    i = next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), min(len(a), len(b)))
    return (f"lengths {len(a)} vs {len(b)}; first difference at {i}:\n"
            f"starring {[tokens[x] for x in a[max(0, i - 2):i + 4]]}\n"
            f"hf       {[tokens[x] for x in b[max(0, i - 2):i + 4]]}")


CASES = [
    ("ascii sentence", "Hello world! The quick brown fox jumps over the lazy dog."),
    ("contractions", "I'm sure they'll say it's what we'd've done, isn't it? DON'T"),
    ("accents", "café naïve Ångström Über façade résumé São Paulo"),
    ("cjk", "日本語の文章です。中文，한국어 텍스트"),
    ("emoji", "hi 👋🏽 family 👨‍👩‍👧 ok 😀🎉"),
    ("code", "def f(x):\n    return x**2  # comment\n\nclass A:\n\tpass\n"),
    ("numbers", "1234567 3.14159 -42 1e-9 0x1F 2024-11-24 $1,000,000"),
    ("whitespace runs", "a  b   c\t\td \n\n\nend   "),
    ("only spaces", "     "),
    ("leading and trailing", "  lead\n trail  \n"),
    ("crlf", "line one\r\nline two\r\n\r\n"),
    ("unicode spaces", "no\u00a0break\u3000ideographic\u2028sep\u2009thin"),
    ("punctuation", "...!!!??? --- ((( ))) {{}} \"quoted\" `tick` «guillemets» — dash"),
    ("mixed scripts", "Москва Αθήνα القاهرة עברית हिन्दी ไทย"),
    ("special tokens", "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"),
    ("special tokens glued", "x<|endoftext|>y<|im_end|><|im_start|><repo_name>z"),
    ("partial special", "<|im_start <|im_end| <| |>"),
    ("empty", ""),
]


def test_cases(tk, tokens):
    for name, text in CASES:
        try:
            got, _ = encode_file(text.encode())
            want = tk.encode(text, add_special_tokens=False).ids
            report(got == want, f"ids match Hugging Face: {name}", first_diff(got, want, tokens))
        except Exception as e:  # noqa: BLE001 - reported as a failure
            report(False, f"ids match Hugging Face: {name}", e)


def test_no_special(tk, tokens):
    text = "<|im_start|>user\nHi<|im_end|>"
    got, _ = encode_file(text.encode(), ["--no-special"])
    tk.encode_special_tokens = True
    want = tk.encode(text, add_special_tokens=False).ids
    tk.encode_special_tokens = False
    report(got == want and 1 not in got and 2 not in got, "--no-special encodes special-token text as plain text",
           first_diff(got, want, tokens))


def random_text(rng, n):
    pool = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") + [" "] * 12 +
            list("\t\n\r.,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`") + list("éèàçñöüÅß日本語の文章中文한국어привет") +
            ["👋🏽", "👨‍👩‍👧", "😀", "'s", "'ll", "<|im_start|>", "<|im_end|>", "\u00a0", "\u3000", "  ", "\n\n"])
    return "".join(rng.choice(pool) for _ in range(n))


def random_codepoints(rng, n):
    out = []
    while len(out) < n:
        c = rng.randint(0, 0x10FFFF) if rng.random() < 0.3 else rng.randint(0, 0x3000)
        # unassigned code points differ between the Unicode versions of PCRE2 and the Rust regex
        if 0xD800 <= c <= 0xDFFF or unicodedata.category(chr(c)) == "Cn":
            continue
        out.append(chr(c))
    return "".join(out)


def test_long(tk, tokens):
    rng = random.Random(7)
    text = random_text(rng, 100_000)
    got, _ = encode_file(text.encode())
    want = tk.encode(text, add_special_tokens=False).ids
    report(got == want, f"100k random characters ({len(want)} tokens) match Hugging Face", first_diff(got, want, tokens))
    for seed in range(3):
        text = random_codepoints(random.Random(100 + seed), 20_000)
        got, _ = encode_file(text.encode())
        want = tk.encode(text, add_special_tokens=False).ids
        report(got == want, f"20k random assigned code points (seed {seed}) match Hugging Face",
               first_diff(got, want, tokens))


def test_roundtrip(tokens):
    # bytes with no token in SmolLM2's vocabulary (0xC0, 0xC1, 0xF5-0xFF and a
    # few controls) cannot survive any encoding; every other byte must
    byte_map = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cps = byte_map[:]
    k = 0
    for b in range(256):
        if b not in byte_map:
            byte_map.append(b)
            cps.append(256 + k)
            k += 1
    vocab = set(tokens)
    ok_bytes = bytes(sorted(b for b, c in zip(byte_map, cps) if chr(c) in vocab))
    report(len(ok_bytes) == 235, f"{len(ok_bytes)} of 256 bytes have a byte token")
    rng = random.Random(11)
    samples = [
        ("lone continuation bytes", b"abc\x80\x81\xbfdef"),
        ("truncated sequences", b"\xe6\x97 x \xf0\x9f\x98 y \xc3"),
        ("overlong and surrogate", b"\xe0\x80\xaf \xed\xa0\x80 \xf4\x90\x80\x80"),
        ("invalid inside special", b"<|im_\xe9start|> <|im_end|>\xe9"),
        ("nul and controls", b"a\x00b\x01\x02\x03\x1f\x7f c"),
    ]
    for i in range(6):
        n = rng.randint(1, 4000)
        samples.append((f"random bytes #{i} ({n})", bytes(rng.choice(ok_bytes) for _ in range(n))))
    for i in range(3):
        t = random_text(rng, 3000).encode()
        cut = bytearray(t)
        for _ in range(40):
            cut[rng.randrange(len(cut))] = rng.choice(ok_bytes)
        samples.append((f"text with corrupted bytes #{i}", bytes(cut)))
    for name, raw in samples:
        try:
            ids, _ = encode_file(raw)
            back = decode_ids(ids)
            report(back == raw, f"round trip: {name}", f"in  {raw[:60]!r}\nout {back[:60]!r}")
        except Exception as e:  # noqa: BLE001
            report(False, f"round trip: {name}", e)
    ids, _ = encode_file(b"x\xffy\xc0z")
    report(decode_ids(ids) == b"xyz", "bytes without a token are dropped, not turned into <|endoftext|>")


def test_chat_and_cli():
    out = run(["--chat", "-p", "What is the capital of France?"])
    ids = [int(x) for x in out.stdout.split()]
    text = decode_ids(ids).decode()
    want = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    report(out.returncode == 0 and text == want and ids[0] == 1 and ids.count(2) == 2,
           "--chat applies ChatML with SmolLM2's default system message", repr(text))
    out = run(["--chat", "--system", "Be brief.", "-p", "Hi"])
    text = decode_ids([int(x) for x in out.stdout.split()]).decode()
    report(text == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
           "--chat --system replaces the default system message", repr(text))
    out = run(["-p", "hello"], data=None)
    stdin = subprocess.run([BIN, "-m", MODEL], input=b"hello", capture_output=True, timeout=60)
    report(out.stdout == stdin.stdout and out.stdout.split() == [b"28120"], "text from -p and from stdin agree",
           f"{out.stdout!r} {stdin.stdout!r}")
    h = subprocess.run([BIN, "--help"], capture_output=True, text=True, timeout=60)
    report(h.returncode == 0 and "--decode" in h.stdout and "--no-special" in h.stdout, "--help describes the options")
    bad = subprocess.run([BIN, "-m", os.path.join(TMP, "missing.gguf"), "-p", "x"], capture_output=True, text=True,
                         timeout=60)
    report(bad.returncode != 0 and "missing.gguf" in bad.stderr, "a missing model is a clear error", bad.stderr)
    bad = run(["--decode", "-p", "12 99999999"])
    report(bad.returncode != 0 and "99999999" in bad.stderr.decode(), "--decode rejects an id outside the vocabulary",
           bad.stderr)


def main():
    global MODEL
    if not os.path.exists(BIN):
        print(f"1..1\nnot ok 1 - {BIN} exists (run make)")
        return 1
    MODEL = model_path()
    t0 = time.time()
    tk, tokens = hf_tokenizer(MODEL)
    test_cases(tk, tokens)
    test_no_special(tk, tokens)
    test_long(tk, tokens)
    test_roundtrip(tokens)
    test_chat_and_cli()
    print(f"# {n_test - n_fail}/{n_test} passed in {time.time() - t0:.1f}s")
    print(f"1..{n_test}")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
