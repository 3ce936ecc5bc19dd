/* Tokenizer and chat template: SmolLM2's byte-level BPE (ids checked against
 * Hugging Face tokenizers), special tokens, byte round trips, pieces, EOG,
 * ChatML; and tiny in-memory GGUF vocabularies for SentencePiece, the other
 * pre-tokenizers and the Llama chat formats. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/status.h"
#include "tests/unit/gguf_build.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"
#include "tests/support/rng.h"
#include "tests/unit/support_model.h"

static sr_tokenizer *smol; /* SmolLM2's tokenizer, shared by the model tests */

static int smol_setup(void **state) {
    char buf[4096];
    const char *path = sr_test_model_path(buf, sizeof buf);
    if (!path) {
        fprintf(stderr, "SR_MODEL is not set and the model is not cached: run scripts/fetch-model\n");
        return -1;
    }
    sr_gguf *g = NULL;
    if (sr_gguf_open(&g, path)) {
        fprintf(stderr, "%s\n", sr_error_msg());
        return -1;
    }
    int rc = sr_tok_from_gguf(&smol, g);
    sr_gguf_close(g); /* the tokenizer keeps no pointer into the file */
    if (rc) fprintf(stderr, "%s\n", sr_error_msg());
    return rc ? -1 : 0;
}

static int smol_teardown(void **state) {
    sr_tok_free(smol);
    smol = NULL;
    return 0;
}

static void expect_ids(const sr_tokenizer *t, const char *text, size_t len, int special, int bos, const int32_t *want,
                       int64_t n_want) {
    int32_t *ids = NULL;
    int64_t n = -1;
    int rc = sr_tok_encode(t, text, len, special, bos, &ids, &n);
    if (rc) fail_msg("encode: %s", sr_error_msg());
    if (n != n_want) {
        for (int64_t i = 0; i < n; i++) print_message("got[%lld] = %d\n", (long long)i, ids[i]);
        fail_msg("\"%.*s\": %lld ids, want %lld", (int)len, text, (long long)n, (long long)n_want);
    }
    for (int64_t i = 0; i < n; i++)
        if (ids[i] != want[i]) fail_msg("\"%.*s\": id %lld is %d, want %d", (int)len, text, (long long)i, ids[i], want[i]);
    free(ids);
}

#define EXPECT(t, text, special, bos, ...)                                                             \
    do {                                                                                               \
        static const int32_t want_[] = {__VA_ARGS__};                                                  \
        expect_ids((t), (text), strlen(text), (special), (bos), want_, sizeof(want_) / sizeof(int32_t)); \
    } while (0)

/* the same for text with NUL bytes: an explicit length */
#define EXPECT_N(t, text, len, special, bos, ...)                                                \
    do {                                                                                         \
        static const int32_t want_[] = {__VA_ARGS__};                                            \
        expect_ids((t), (text), (len), (special), (bos), want_, sizeof(want_) / sizeof(int32_t)); \
    } while (0)

/* ids from Hugging Face tokenizers built from the same vocabulary and merges */
static void test_known_encodings(void **state) {
    EXPECT(smol, "Hello world", 1, 1, 19556, 905);
    EXPECT(smol, "caf\xc3\xa9 na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e \xf0\x9f\x91\x8b\xf0\x9f\x8f\xbd", 1, 1,
           83, 1939, 2756, 15486, 46494, 17097, 241, 115, 40993, 179, 120, 248, 15107, 235, 229, 10813, 233, 138);
    /* digits one by one (SmolLM2's pre-tokenizer), whitespace runs */
    EXPECT(smol, "x = 12345;\n\n  y", 1, 1, 104, 446, 216, 33, 34, 35, 36, 37, 43, 8866, 329);
    int32_t *ids = NULL;
    int64_t n = -1;
    assert_int_equal(sr_tok_encode(smol, "", 0, 1, 1, &ids, &n), SR_OK);
    assert_int_equal(n, 0); /* SmolLM2 asks for no BOS */
    assert_non_null(ids);   /* still an allocation */
    free(ids);
}

static void test_special_parsing(void **state) {
    const char *s = "<|im_start|>user\nHi<|im_end|>";
    EXPECT(smol, s, 1, 0, 1, 4093, 198, 26843, 2);
    EXPECT(smol, s, 0, 0, 44, 108, 306, 79, 3738, 108, 46, 4093, 198, 26843, 44, 108, 306, 79, 486, 108, 46);
    /* a special token glued to text and to another; longest match wins */
    EXPECT(smol, "a<|endoftext|><|im_end|>", 1, 0, 81, 0, 2);
}

static void decode_all(const sr_tokenizer *t, const int32_t *ids, int64_t n, char *out, size_t cap, size_t *len) {
    size_t o = 0;
    for (int64_t i = 0; i < n; i++) {
        int k = sr_tok_piece(t, ids[i], out + o, cap - o);
        if (k < 0) fail_msg("piece %d: %s", ids[i], sr_error_msg());
        o += (size_t)k;
    }
    *len = o;
}

static void test_roundtrip_bytes(void **state) {
    /* the bytes SmolLM2 has a token for: 235 of 256 (none for 0xC0, 0xC1,
     * 0xF5-0xFF and a few controls, which are dropped) */
    unsigned char ok[256];
    int n_ok = 0;
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        int32_t *ids = NULL;
        int64_t n = 0;
        assert_int_equal(sr_tok_encode(smol, &c, 1, 1, 0, &ids, &n), SR_OK);
        assert_true(n <= 1);
        if (n == 1) ok[n_ok++] = (unsigned char)b;
        free(ids);
    }
    assert_int_equal(n_ok, 235);
    enum { LEN = 3000 };
    char *text = malloc(LEN), *back = malloc(LEN + 64);
    assert_non_null(text);
    assert_non_null(back);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (int round = 0; round < 40; round++) {
        size_t len = 1 + sr_test_rng_next(&seed) % LEN;
        for (size_t i = 0; i < len; i++) {
            /* mostly ASCII and UTF-8 lead/continuation bytes, so that broken sequences are common */
            uint64_t r = sr_test_rng_next(&seed);
            text[i] = (char)(r % 3 == 0 ? ok[(r >> 8) % (uint64_t)n_ok] : r % 3 == 1 ? 'a' + (int)((r >> 8) % 26) : 0x80 + (int)((r >> 8) % 0x40));
            if (r % 17 == 0) text[i] = ' ';
        }
        int32_t *ids = NULL;
        int64_t n = 0;
        assert_int_equal(sr_tok_encode(smol, text, len, 1, 0, &ids, &n), SR_OK);
        size_t blen = 0;
        decode_all(smol, ids, n, back, LEN + 64, &blen);
        assert_int_equal(blen, len);
        assert_memory_equal(back, text, len);
        free(ids);
    }
    free(text);
    free(back);
}

static void test_pieces(void **state) {
    char buf[64];
    assert_int_equal(sr_tok_piece(smol, 216, buf, sizeof buf), 1); /* "Ġ" */
    assert_int_equal(buf[0], ' ');
    assert_int_equal(sr_tok_piece(smol, 198, buf, sizeof buf), 1); /* "Ċ" */
    assert_int_equal(buf[0], '\n');
    assert_int_equal(sr_tok_piece(smol, 142, buf, sizeof buf), 1); /* "Ã": a lone UTF-8 lead byte */
    assert_int_equal((unsigned char)buf[0], 0xc3);
    assert_int_equal(sr_tok_piece(smol, 119, buf, sizeof buf), 1); /* "©" stands for byte 0xA9 */
    assert_int_equal((unsigned char)buf[0], 0xa9);
    assert_int_equal(sr_tok_piece(smol, 905, buf, sizeof buf), 6);
    assert_memory_equal(buf, " world", 6);
    assert_int_equal(sr_tok_piece(smol, 1, buf, sizeof buf), 12); /* control tokens decode to their text */
    assert_memory_equal(buf, "<|im_start|>", 12);
    assert_int_equal(sr_tok_piece(smol, 905, buf, 3), SR_ERANGE);
    assert_int_equal(sr_tok_piece(smol, -1, buf, sizeof buf), SR_EINVAL);
    assert_int_equal(sr_tok_piece(smol, 49152, buf, sizeof buf), SR_EINVAL);
}

static void test_eog_and_ids(void **state) {
    assert_int_equal(sr_tok_vocab_size(smol), 49152);
    assert_int_equal(sr_tok_bos(smol), 1);
    assert_int_equal(sr_tok_eos(smol), 2);
    assert_true(sr_tok_is_eog(smol, 2));  /* <|im_end|> */
    assert_true(sr_tok_is_eog(smol, 0));  /* <|endoftext|> */
    assert_false(sr_tok_is_eog(smol, 1)); /* <|im_start|> */
    assert_false(sr_tok_is_eog(smol, 19556));
    assert_false(sr_tok_is_eog(smol, -1));
    assert_false(sr_tok_is_eog(smol, 49152));
}

/* The chat prompt of a NUL-free user message, checked to be a C string of its length. */
static char *chat(const sr_tokenizer *t, const char *system, const char *user) {
    char *p = NULL;
    size_t n = 0;
    if (sr_tok_chat_prompt(t, system, user, strlen(user), &p, &n)) fail_msg("chat prompt: %s", sr_error_msg());
    assert_int_equal(n, strlen(p));
    return p;
}

static void test_chatml(void **state) {
    char *p = chat(smol, NULL, "What is the capital of France?");
    assert_non_null(p);
    assert_string_equal(p, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                           "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n");
    free(p);
    p = chat(smol, "Be brief.", "Hi");
    assert_non_null(p);
    assert_string_equal(p, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    /* the prompt's structure survives encoding as special tokens */
    int32_t *ids = NULL;
    int64_t n = 0;
    assert_int_equal(sr_tok_encode(smol, p, strlen(p), 1, 1, &ids, &n), SR_OK);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[n - 1], 198);
    int starts = 0, ends = 0;
    for (int64_t i = 0; i < n; i++) starts += ids[i] == 1, ends += ids[i] == 2;
    assert_int_equal(starts, 3);
    assert_int_equal(ends, 2);
    free(ids);
    free(p);
    size_t len = 1;
    assert_int_equal(sr_tok_chat_prompt(smol, NULL, NULL, 1, &p, &len), SR_EINVAL);
    assert_null(p);
    assert_int_equal(len, 0);
}

/* ---- tiny vocabularies in memory ---- */

typedef struct {
    const char *model, *pre, *tmpl;
    const char *const *tokens;
    const int32_t *types;
    const float *scores;
    int64_t n;
    const char *const *merges;
    int64_t n_merges;
} tiny;

static sr_tokenizer *tiny_build(const tiny *d, int want_rc) {
    sr_test_gguf_buf kv = {0}, b = {0};
    uint64_t n_kv = 0;
    if (d->model) sr_test_gguf_kv_str(&kv, "tokenizer.ggml.model", d->model), n_kv++;
    if (d->pre) sr_test_gguf_kv_str(&kv, "tokenizer.ggml.pre", d->pre), n_kv++;
    if (d->tmpl) sr_test_gguf_kv_str(&kv, "tokenizer.chat_template", d->tmpl), n_kv++;
    if (d->tokens) sr_test_gguf_kv_arr_str(&kv, "tokenizer.ggml.tokens", d->tokens, (uint64_t)d->n), n_kv++;
    if (d->types) sr_test_gguf_kv_arr_i32(&kv, "tokenizer.ggml.token_type", d->types, (uint64_t)d->n), n_kv++;
    if (d->merges) sr_test_gguf_kv_arr_str(&kv, "tokenizer.ggml.merges", d->merges, (uint64_t)d->n_merges), n_kv++;
    if (d->scores) {
        sr_test_gguf_buf arr = {0};
        sr_test_gguf_u32(&arr, SR_GGUF_F32);
        sr_test_gguf_u64(&arr, (uint64_t)d->n);
        sr_test_gguf_raw(&arr, d->scores, (size_t)d->n * sizeof(float));
        assert_int_equal(sr_buf_status(&arr), SR_OK);
        sr_test_gguf_kv_raw(&kv, "tokenizer.ggml.scores", SR_GGUF_ARRAY, arr.data, arr.len);
        sr_test_gguf_free(&arr);
        n_kv++;
    }
    sr_test_gguf_header(&b, 3, 0, n_kv);
    sr_test_gguf_raw(&b, kv.data, kv.len);
    assert_int_equal(sr_buf_status(&b), SR_OK);
    assert_int_equal(sr_buf_status(&kv), SR_OK);
    sr_gguf *g = NULL;
    int rc = sr_gguf_open_buffer(&g, b.data, b.len);
    if (rc) fail_msg("tiny GGUF: %s", sr_error_msg());
    sr_tokenizer *t = NULL;
    rc = sr_tok_from_gguf(&t, g);
    sr_gguf_close(g);
    sr_test_gguf_free(&kv);
    sr_test_gguf_free(&b);
    if (rc != want_rc) fail_msg("sr_tok_from_gguf returned %d, want %d (%s)", rc, want_rc, sr_error_msg());
    return t;
}

/* <unk> <s> </s> <0x00>..<0xFF> then words; scores favour "▁ab" over its parts */
enum { SPM_BYTE0 = 3, SPM_WORDS = 3 + 256 };
static const char *const spm_words[] = {"\xe2\x96\x81", "a", "b", "c", "\xe2\x96\x81" "a", "ab", "\xe2\x96\x81" "ab", "<tool>"};
static const float spm_word_scores[] = {-3, -4, -4, -4, -1, -2, -0.5f, 0};
enum { W_SP, W_A, W_B, W_C, W_SPA, W_AB, W_SPAB, W_TOOL, N_SPM_WORDS };

/* The first tokens of every SentencePiece test vocabulary: <unk>, <s>,
 * </s>, then the 256 byte tokens <0x00>..<0xFF>. */
static void spm_base_tokens(const char **tokens, int32_t *types) {
    static char bytes[256][8];
    tokens[0] = "<unk>", tokens[1] = "<s>", tokens[2] = "</s>";
    types[0] = 2, types[1] = 3, types[2] = 3;
    for (int i = 0; i < 256; i++) {
        snprintf(bytes[i], sizeof bytes[i], "<0x%02X>", i);
        tokens[SPM_BYTE0 + i] = bytes[i];
        types[SPM_BYTE0 + i] = 6;
    }
}

static sr_tokenizer *spm_build(void) {
    const char *tokens[SPM_WORDS + N_SPM_WORDS];
    int32_t types[SPM_WORDS + N_SPM_WORDS];
    float scores[SPM_WORDS + N_SPM_WORDS];
    spm_base_tokens(tokens, types);
    for (int i = 0; i < N_SPM_WORDS; i++) {
        tokens[SPM_WORDS + i] = spm_words[i];
        types[SPM_WORDS + i] = i == W_TOOL ? 4 : 1;
    }
    for (int i = 0; i < SPM_WORDS + N_SPM_WORDS; i++) scores[i] = i < SPM_WORDS ? 0 : spm_word_scores[i - SPM_WORDS];
    tiny d = {.model = "llama", .tokens = tokens, .types = types, .scores = scores, .n = SPM_WORDS + N_SPM_WORDS,
              .tmpl = "{{ bos_token }}[INST] <<SYS>>\\n{{ system }}\\n<</SYS>>\\n\\n{{ user }} [/INST]"};
    return tiny_build(&d, SR_OK);
}

static void test_spm(void **state) {
    sr_tokenizer *t = spm_build();
    enum { SP = SPM_WORDS + W_SP, C = SPM_WORDS + W_C, SPA = SPM_WORDS + W_SPA, SPAB = SPM_WORDS + W_SPAB };
    /* "▁ab▁c": ▁+a -> ▁a, then ▁a+b -> ▁ab; no "▁c" token, so ▁ and c stay */
    EXPECT(t, "ab c", 1, 1, 1, SPAB, SP, C);
    EXPECT(t, "ab c", 1, 0, SPAB, SP, C);
    /* é has no token: byte fallback */
    EXPECT(t, "a\xc3\xa9", 1, 0, SPA, SPM_BYTE0 + 0xc3, SPM_BYTE0 + 0xa9);
    /* special tokens, and the space prefix again after them */
    EXPECT(t, "<s>a</s>", 1, 0, 1, SPA, 2);
    EXPECT(t, "<s>", 0, 0, SP, SPM_BYTE0 + '<', SPM_BYTE0 + 's', SPM_BYTE0 + '>');
    /* user-defined tokens split even without parse_special */
    EXPECT(t, "a<tool>", 0, 0, SPA, SPM_WORDS + W_TOOL);

    const char *text = "ab c\xc3\xa9\xff<s>x";
    int32_t *ids = NULL;
    int64_t n = 0;
    char back[64];
    size_t len = 0;
    assert_int_equal(sr_tok_encode(t, text, strlen(text), 1, 0, &ids, &n), SR_OK);
    decode_all(t, ids, n, back, sizeof back, &len);
    /* exact apart from the space prefixes SentencePiece adds */
    assert_int_equal(len, strlen(text) + 2);
    assert_memory_equal(back, " ab c\xc3\xa9\xff<s> x", len);
    free(ids);
    assert_true(sr_tok_is_eog(t, 2));
    assert_false(sr_tok_is_eog(t, 1));

    char *p = chat(t, "S", "U");
    assert_string_equal(p, "[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST]");
    free(p);
    p = chat(t, NULL, "U");
    assert_string_equal(p, "[INST] U [/INST]");
    free(p);
    sr_tok_free(t);
}

/* gpt2 byte alphabet (each byte's character) plus a few merged tokens */
static sr_tokenizer *bpe_build(const char *pre, const char *tmpl) {
    static char chars[256][4];
    const char *tokens[256 + 6];
    for (int b = 0, k = 0; b < 256; b++) {
        unsigned cp = b;
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
        if (!printable) cp = 256 + k++;
        if (cp < 0x80) chars[b][0] = (char)cp, chars[b][1] = 0;
        else chars[b][0] = (char)(0xc0 | (cp >> 6)), chars[b][1] = (char)(0x80 | (cp & 0x3f)), chars[b][2] = 0;
        tokens[b] = chars[b];
    }
    const char *extra[] = {"12", "123", "45", "xyz", "<|im_end|>", "<|eot_id|>"};
    int32_t types[256 + 6];
    for (int i = 0; i < 256 + 6; i++) types[i] = i >= 256 + 4 ? 3 : 1;
    for (int i = 0; i < 6; i++) tokens[256 + i] = extra[i];
    static const char *const merges[] = {"1 2", "12 3", "4 5", "q r"};
    tiny d = {.model = "gpt2", .pre = pre, .tmpl = tmpl, .tokens = tokens, .types = types, .n = 256 + 6,
              .merges = merges, .n_merges = 4};
    return tiny_build(&d, SR_OK);
}

static void test_bpe_pre_tokenizers(void **state) {
    enum { T12 = 256, T123, T45, TXYZ, IM_END, EOT };
    /* gpt2: one piece of digits, merged by rank; "xyz" has no merges */
    sr_tokenizer *t = bpe_build("gpt2", NULL);
    EXPECT(t, "12345 xyz", 1, 1, T123, T45, ' ', 'x', 'y', 'z');
    assert_true(sr_tok_is_eog(t, IM_END));
    assert_true(sr_tok_is_eog(t, EOT));
    char *p = chat(t, NULL, "U"); /* no template: ChatML, with no default system */
    assert_string_equal(p, "<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
    free(p);
    sr_tok_free(t);
    /* qwen2: digits one at a time */
    t = bpe_build("qwen2", NULL);
    EXPECT(t, "12345", 1, 1, '1', '2', '3', '4', '5');
    sr_tok_free(t);
    /* llama3: up to three digits per piece, and whole-token pieces skip merging */
    t = bpe_build("llama-bpe", "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}");
    EXPECT(t, "12345xyz", 1, 1, T123, T45, TXYZ);
    p = chat(t, "S", "U");
    assert_string_equal(p, "<|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
                           "<|start_header_id|>user<|end_header_id|>\n\nU<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\n");
    free(p);
    sr_tok_free(t);
    /* unknown pre-tokenizer: a warning and gpt2's regex */
    t = bpe_build("no-such-pre", "{% unknown template %}");
    EXPECT(t, "12345", 1, 1, T123, T45);
    p = chat(t, "S", "U");
    assert_string_equal(p, "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
    free(p);
    sr_tok_free(t);
}

static void test_bad_metadata(void **state) {
    static const char *const tokens[] = {"a", "b"};
    tiny d = {.model = "bert", .tokens = tokens, .n = 2};
    assert_null(tiny_build(&d, SR_EUNSUPPORTED));
    assert_non_null(strstr(sr_error_msg(), "bert"));
    d.model = "llama";
    d.tokens = NULL;
    assert_null(tiny_build(&d, SR_EFORMAT));
    assert_non_null(strstr(sr_error_msg(), "tokenizer.ggml.tokens"));
    d.model = "gpt2";
    d.tokens = tokens;
    assert_null(tiny_build(&d, SR_EFORMAT)); /* gpt2 needs merges */
    assert_non_null(strstr(sr_error_msg(), "merges"));
    assert_int_equal(sr_tok_from_gguf(NULL, NULL), SR_EINVAL);
}

/* ---- special tokens in bulk, NUL bytes, hostile templates ---- */

/* A SentencePiece vocabulary of <unk> <s> </s>, the 256 byte tokens, then
 * n_extra tokens (ids from SPM_WORDS on) of the given texts and types, so
 * that any text encodes. */
static sr_tokenizer *spm_extra_build(const char *const *extra, const int32_t *extra_types, int64_t n_extra,
                                     const char *tmpl) {
    int64_t n = SPM_WORDS + n_extra;
    const char **tokens = malloc((size_t)n * sizeof(*tokens));
    int32_t *types = malloc((size_t)n * sizeof(*types));
    assert_non_null(tokens);
    assert_non_null(types);
    spm_base_tokens(tokens, types);
    for (int64_t i = 0; i < n_extra; i++) tokens[SPM_WORDS + i] = extra[i], types[SPM_WORDS + i] = extra_types[i];
    tiny d = {.model = "llama", .tokens = tokens, .types = types, .n = n, .tmpl = tmpl};
    sr_tokenizer *t = tiny_build(&d, SR_OK);
    free(tokens);
    free(types);
    return t;
}

/* Overlapping special tokens: prefixes, suffixes and one text twice (control
 * first, then user-defined), so that the longest match, the first id of a
 * repeated text and the user-defined-only mode are all exercised. */
static const char *const sp_texts[] = {"<a>", "<a", "a>", "<", "<<a>>", "ab", "b<a", "<a>b", "aaa", "a<", "<a", "bb>"};
static const int32_t sp_types[] = {3, 4, 3, 4, 3, 4, 3, 3, 4, 3, 4, 4};
enum { N_SP = sizeof(sp_texts) / sizeof(sp_texts[0]) };

/* The old definition, one position at a time: the longest applicable token
 * starting at text[0] (the first id among equal texts), or -1. */
static int32_t ref_special_at(const char *text, size_t len, int parse_special, size_t *tl) {
    int32_t best = -1;
    size_t best_len = 0;
    for (int i = 0; i < N_SP; i++) {
        size_t n = strlen(sp_texts[i]);
        if ((!parse_special && sp_types[i] != 4) || n > len || n <= best_len) continue;
        if (memcmp(text, sp_texts[i], n) == 0) best = SPM_WORDS + i, best_len = n;
    }
    *tl = best_len;
    return best;
}

static void append_ids(int32_t **v, int64_t *n, const int32_t *ids, int64_t k) {
    *v = realloc(*v, (size_t)(*n + k + 1) * sizeof(**v));
    assert_non_null(*v);
    memcpy(*v + *n, ids, (size_t)k * sizeof(**v));
    *n += k;
}

static void test_special_tokens_match_reference(void **state) {
    sr_tokenizer *t = spm_extra_build(sp_texts, sp_types, N_SP, NULL);
    static const char alphabet[] = "<>ab ";
    uint64_t seed = 12345;
    char text[256];
    for (int round = 0; round < 400; round++) {
        size_t len = sr_test_rng_next(&seed) % sizeof text;
        for (size_t i = 0; i < len; i++) text[i] = alphabet[sr_test_rng_next(&seed) % (sizeof alphabet - 1)];
        for (int parse = 0; parse <= 1; parse++) {
            /* reference: split at the old matcher's tokens, encode the pieces between them alone */
            int32_t *want = NULL, *ids = NULL;
            int64_t n_want = 0, n = 0;
            size_t start = 0, pos = 0;
            while (pos <= len) {
                size_t tl = 0;
                int32_t id = pos < len ? ref_special_at(text + pos, len - pos, parse, &tl) : -2;
                if (id == -1) {
                    pos++;
                    continue;
                }
                if (pos > start) {
                    assert_int_equal(sr_tok_encode(t, text + start, pos - start, parse, 0, &ids, &n), SR_OK);
                    append_ids(&want, &n_want, ids, n);
                    free(ids);
                }
                if (id == -2) break;
                append_ids(&want, &n_want, &id, 1);
                pos += tl;
                start = pos;
            }
            expect_ids(t, text, len, parse, 0, want, n_want);
            free(want);
        }
    }
    sr_tok_free(t);
}

/* A crafted vocabulary of many control tokens sharing their first byte:
 * matching used to try every one of them at each '<' of the text, which at
 * these sizes takes minutes; the alarm turns such a regression into a
 * failure instead of a hang. */
static void test_many_special_tokens(void **state) {
    enum { N = 100000, SEGMENTS = 200000, TEXT_LEN = 9 };
    char (*texts)[TEXT_LEN + 1] = malloc((size_t)N * sizeof(*texts));
    const char **extra = malloc((size_t)N * sizeof(*extra));
    int32_t *types = malloc((size_t)N * sizeof(*types));
    char *text = malloc((size_t)SEGMENTS * (TEXT_LEN + 1));
    assert_non_null(texts);
    assert_non_null(extra);
    assert_non_null(types);
    assert_non_null(text);
    for (int i = 0; i < N; i++) {
        snprintf(texts[i], sizeof texts[i], "<t%06u>", (unsigned)i % 1000000u);
        extra[i] = texts[i];
        types[i] = 3;
    }
    alarm(120);
    sr_tokenizer *t = spm_extra_build(extra, types, N, NULL);
    /* each segment: a lone '<' (no token starts there) and then a token */
    size_t len = 0;
    for (int k = 0; k < SEGMENTS; k++) {
        text[len++] = '<';
        memcpy(text + len, texts[(int64_t)k * 7919 % N], TEXT_LEN);
        len += TEXT_LEN;
    }
    int32_t *raw = NULL, *ids = NULL;
    int64_t n_raw = 0, n = 0;
    assert_int_equal(sr_tok_encode(t, "<", 1, 1, 0, &raw, &n_raw), SR_OK);
    assert_int_equal(n_raw, 4); /* "▁<" as byte tokens: no word of the vocabulary covers it */
    assert_int_equal(raw[3], SPM_BYTE0 + '<');
    assert_int_equal(sr_tok_encode(t, text, len, 1, 0, &ids, &n), SR_OK);
    alarm(0);
    assert_int_equal(n, (int64_t)SEGMENTS * (n_raw + 1));
    for (int64_t k = 0; k < SEGMENTS; k++) {
        const int32_t *seg = ids + k * (n_raw + 1);
        if (memcmp(seg, raw, (size_t)n_raw * sizeof(*raw)) != 0) fail_msg("segment %lld: the lone '<' is not byte tokens", (long long)k);
        if (seg[n_raw] != SPM_WORDS + k * 7919 % N)
            fail_msg("segment %lld: token %d, want %lld", (long long)k, seg[n_raw], (long long)(SPM_WORDS + k * 7919 % N));
    }
    /* without parse_special they are text */
    free(ids);
    assert_int_equal(sr_tok_encode(t, text, 2 * (TEXT_LEN + 1), 0, 0, &ids, &n), SR_OK);
    for (int64_t i = 0; i < n; i++) assert_true(ids[i] < SPM_WORDS);
    free(ids);
    free(raw);
    free(text);
    free(types);
    free(extra);
    free(texts);
    sr_tok_free(t);
}

/* A NUL byte is a byte like any other: encoded (here as <0x00>) and kept by
 * the chat template. */
static void test_nul_bytes(void **state) {
    sr_tokenizer *t = spm_extra_build(sp_texts, sp_types, N_SP, NULL);
    EXPECT_N(t, "b\0b", 3, 1, 0, SPM_BYTE0 + 0xe2, SPM_BYTE0 + 0x96, SPM_BYTE0 + 0x81, SPM_BYTE0 + 'b', SPM_BYTE0 + 0, SPM_BYTE0 + 'b');
    char *p = NULL;
    size_t n = 0;
    assert_int_equal(sr_tok_chat_prompt(t, NULL, "x\0y", 3, &p, &n), SR_OK);
    static const char want[] = "<|im_start|>user\nx\0y<|im_end|>\n<|im_start|>assistant\n";
    assert_int_equal(n, sizeof want - 1);
    assert_memory_equal(p, want, n);
    free(p);
    sr_tok_free(t);
}

/* Chat templates of megabytes of repeated markers: the default-system scan
 * used to search the rest of the template once per marker. */
static void test_hostile_chat_template(void **state) {
    enum { REPEAT = 400000 };
    static const char marker[] = "<|im_start|>system\n", coded[] = "<|im_start|>system\n{x}",
                      last[] = "<|im_start|>system\nDefault<|im_end|>";
    char *tmpl = malloc(REPEAT * (sizeof coded - 1) + sizeof last);
    assert_non_null(tmpl);
    for (int variant = 0; variant < 2; variant++) {
        /* 0: markers and no <|im_end|> at all; 1: markers around template code, then a literal default */
        const char *m = variant ? coded : marker;
        size_t ml = strlen(m), len = 0;
        for (int i = 0; i < REPEAT; i++) memcpy(tmpl + len, m, ml), len += ml;
        if (variant) memcpy(tmpl + len, last, sizeof last - 1), len += sizeof last - 1;
        tmpl[len] = 0;
        alarm(120);
        sr_tokenizer *t = spm_extra_build(sp_texts, sp_types, N_SP, tmpl);
        char *p = chat(t, NULL, "U");
        alarm(0);
        assert_string_equal(p, variant ? "<|im_start|>system\nDefault<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
                                        : "<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n");
        free(p);
        sr_tok_free(t);
    }
    free(tmpl);
}

int main(void) {
    /* one group, so that the run prints one TAP plan; the tiny-vocabulary
     * tests build their own tokenizers and ignore the group's state */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_encodings), cmocka_unit_test(test_special_parsing),
        cmocka_unit_test(test_roundtrip_bytes), cmocka_unit_test(test_pieces),
        cmocka_unit_test(test_eog_and_ids),     cmocka_unit_test(test_chatml),
        cmocka_unit_test(test_spm),
        cmocka_unit_test(test_bpe_pre_tokenizers),
        cmocka_unit_test(test_bad_metadata),
        cmocka_unit_test(test_special_tokens_match_reference),
        cmocka_unit_test(test_many_special_tokens),
        cmocka_unit_test(test_nul_bytes),
        cmocka_unit_test(test_hostile_chat_template),
    };
    return cmocka_run_group_tests_name("tokenizer", tests, smol_setup, smol_teardown);
}
