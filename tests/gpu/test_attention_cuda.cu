/* CUDA attention against the CPU library (attention/attention.h), then
 * timings. Prints TAP lines; without a usable CUDA device it prints one
 * SKIP line and exits 0.
 *
 * Correctness: random inputs over many shapes (odd sizes, nq > nk, nk = 1,
 * GQA 1/4/8, d 64/80/96/128, causal blocks before / overlapping / after the
 * queries, fully masked rows, decode shapes that take the split-KV path)
 * and K/V as f32, f16 and bf16. Outputs are
 * poisoned with NaN first, so unwritten elements fail. For 16-bit K/V the
 * kernel rounds Q to the KV type; the CPU reference gets the same rounded Q
 * and the same 16-bit K/V, so what remains is the rounding of P to 16 bits
 * (at most one unit roundoff of the KV type times max|v| in O; LSE is fp32
 * throughout). Merge: split-KV forwards merged on the device equal the
 * unsplit forward, and the device merge equals sr_attn_merge.
 *
 * Timing: causal prefill d=128, Hq=32, Hkv=8, nq=nk in {4k, 16k, 32k},
 * bf16 (plus f16 and f32 at 4k), TFLOP/s by sr_attn_flops; merge bandwidth.
 * Each timed run is spot-checked against a double reference. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "attention/cuda.h"
#include "tests/support/rng.h"

extern "C" {
#include "base/half.h"
#include "base/status.h"
}

static int n_test = 0, n_fail = 0;

static void tap(bool ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s %d - ", ok ? "ok" : "not ok", ++n_test);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    if (!ok) n_fail++;
}

/* A CUDA failure outside the code under test ends the program as a failure. */
#define CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            tap(false, "%s:%d: %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(e_));        \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

/* Device buffer owned by scope. */
struct dbuf {
    void *p = nullptr;
    explicit dbuf(size_t bytes) { CK(cudaMalloc(&p, bytes)); }
    ~dbuf() { cudaFree(p); }
    dbuf(const dbuf &) = delete;
    dbuf &operator=(const dbuf &) = delete;
    float *f() const { return static_cast<float *>(p); }
};

static uint64_t rng_state;

static float urand(float lo, float hi) { return sr_test_rng_float(&rng_state, lo, hi); }

static void fill(std::vector<float> &x, float lo, float hi) {
    for (auto &e : x) e = urand(lo, hi);
}

static const char *dt_name(int dt) { return dt == SR_DT_F32 ? "f32" : dt == SR_DT_F16 ? "f16" : "bf16"; }
static size_t dt_size(int dt) { return dt == SR_DT_F32 ? 4 : 2; }

/* x as dtype bytes (round to nearest even, as base/half.h) */
static std::vector<uint8_t> to_dtype(const std::vector<float> &x, int dt) {
    std::vector<uint8_t> out(x.size() * dt_size(dt));
    for (size_t i = 0; i < x.size(); i++) {
        if (dt == SR_DT_F32) {
            memcpy(&out[4 * i], &x[i], 4);
        } else {
            uint16_t h = dt == SR_DT_F16 ? sr_f32_to_f16(x[i]) : sr_f32_to_bf16(x[i]);
            memcpy(&out[2 * i], &h, 2);
        }
    }
    return out;
}

static float round_dt(float x, int dt) {
    if (dt == SR_DT_F16) return sr_f16_to_f32(sr_f32_to_f16(x));
    if (dt == SR_DT_BF16) return sr_bf16_to_f32(sr_f32_to_bf16(x));
    return x;
}

struct tol {
    double o_abs, o_rel, l_abs, l_rel;
};

/* P is rounded to the KV type before PV: O may move by up to the unit
 * roundoff (2^-8 bf16, 2^-11 f16) times max|v| = 1. */
static tol tol_for(int dt) {
    if (dt == SR_DT_BF16) return {6e-3, 4e-3, 2e-4, 2e-5};
    if (dt == SR_DT_F16) return {1e-3, 1e-3, 2e-4, 2e-5};
    return {2e-5, 1e-4, 5e-5, 1e-5};
}

/* Counts |got - want| > atol + rtol |want| (infinities must match, NaN in
 * got always counts); prints the first few. */
static int64_t compare(const char *what, const float *got, const float *want, int64_t n, double atol, double rtol) {
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double g = got[i], w = want[i];
        bool ok;
        if (isnan(g)) ok = false;
        else if (isinf(w) || isinf(g)) ok = g == w;
        else ok = fabs(g - w) <= atol + rtol * fabs(w);
        if (!ok && bad++ < 4) printf("#   %s[%lld]: got %.7g want %.7g\n", what, (long long)i, g, w);
    }
    return bad;
}

struct shape {
    int d, hq, hkv;
    int64_t nq, nk;
    int causal;
    int64_t q0, k0;
    float scale;
};

static sr_attn_desc desc_of(const shape &s, int dt) {
    sr_attn_desc d;
    memset(&d, 0, sizeof d);
    d.nq = s.nq;
    d.nk = s.nk;
    d.n_head_q = s.hq;
    d.n_head_kv = s.hkv;
    d.head_dim = s.d;
    d.causal = s.causal;
    d.q_pos0 = s.q0;
    d.k_pos0 = s.k0;
    d.scale = s.scale;
    d.kv_dtype = dt;
    return d;
}

/* Forward on the device with outputs poisoned (NaN) first; returns the rc. */
static int gpu_forward(const sr_attn_desc *d, const float *q_dev, const void *k_dev, const void *v_dev, float *o_dev,
                       float *lse_dev) {
    const size_t rows = (size_t)d->nq * d->n_head_q;
    CK(cudaMemset(o_dev, 0xff, rows * d->head_dim * sizeof(float)));
    CK(cudaMemset(lse_dev, 0xff, rows * sizeof(float)));
    int rc = sr_attn_forward_cuda(d, q_dev, k_dev, v_dev, o_dev, lse_dev, nullptr);
    if (rc == SR_OK) CK(cudaDeviceSynchronize());
    return rc;
}

static void test_forward(const shape &s, int dt) {
    const sr_attn_desc d = desc_of(s, dt);
    const size_t nqe = (size_t)s.nq * s.hq * s.d, nke = (size_t)s.nk * s.hkv * s.d, rows = (size_t)s.nq * s.hq;
    std::vector<float> q(nqe), k(nke), v(nke);
    fill(q, -2.f, 2.f);
    fill(k, -2.f, 2.f);
    fill(v, -1.f, 1.f);
    std::vector<uint8_t> kb = to_dtype(k, dt), vb = to_dtype(v, dt);
    std::vector<float> q_ref(q);
    for (auto &e : q_ref) e = round_dt(e, dt);

    std::vector<float> o_ref(nqe), lse_ref(rows);
    sr_attn_kv kv = sr_attn_kv_dense(kb.data(), vb.data());
    int rc = sr_attn_forward(&d, q_ref.data(), &kv, o_ref.data(), lse_ref.data(), 0);

    dbuf qd(nqe * 4), kd(kb.size()), vd(vb.size()), od(nqe * 4), ld(rows * 4);
    CK(cudaMemcpy(qd.p, q.data(), nqe * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(kd.p, kb.data(), kb.size(), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(vd.p, vb.data(), vb.size(), cudaMemcpyHostToDevice));
    int grc = gpu_forward(&d, qd.f(), kd.p, vd.p, od.f(), ld.f());
    std::vector<float> o(nqe), lse(rows);
    CK(cudaMemcpy(o.data(), od.p, nqe * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(lse.data(), ld.p, rows * 4, cudaMemcpyDeviceToHost));

    /* rows that see no key, from the positions alone: q0 + i < k0 */
    int64_t want_empty = 0;
    if (s.causal) want_empty = std::min(std::max(s.k0 - s.q0, (int64_t)0), s.nq) * s.hq;
    int64_t got_empty = 0;
    for (size_t i = 0; i < rows; i++) got_empty += lse[i] == -INFINITY;

    const tol t = tol_for(dt);
    int64_t bad_o = 0, bad_l = 0;
    if (rc == SR_OK && grc == SR_OK) {
        bad_o = compare("O", o.data(), o_ref.data(), (int64_t)nqe, t.o_abs, t.o_rel);
        bad_l = compare("LSE", lse.data(), lse_ref.data(), (int64_t)rows, t.l_abs, t.l_rel);
    } else {
        printf("#   cpu rc %d, cuda rc %d: %s\n", rc, grc, sr_error_msg());
    }
    tap(rc == SR_OK && grc == SR_OK && bad_o == 0 && bad_l == 0 && got_empty == want_empty,
        "forward %s d=%d Hq=%d Hkv=%d nq=%lld nk=%lld causal=%d q0=%lld k0=%lld (bad O %lld, bad LSE %lld, "
        "empty rows %lld of %lld expected)",
        dt_name(dt), s.d, s.hq, s.hkv, (long long)s.nq, (long long)s.nk, s.causal, (long long)s.q0, (long long)s.k0,
        (long long)bad_o, (long long)bad_l, (long long)got_empty, (long long)want_empty);
}

/* KV cut into pieces (and one piece placed after every query, so fully
 * masked), each run on the device and merged there, against the unsplit
 * device forward and against sr_attn_merge of the same pieces. */
static void test_split_merge(int dt) {
    const shape s = {128, 8, 2, 150, 300, 1, 200, 0, 0.f};
    const int64_t cuts[] = {0, 70, 200, 300};
    const int n_pieces = 3, n_parts = n_pieces + 1;
    const sr_attn_desc d = desc_of(s, dt);
    const size_t nqe = (size_t)s.nq * s.hq * s.d, nke = (size_t)s.nk * s.hkv * s.d, rows = (size_t)s.nq * s.hq;
    const size_t key_bytes = (size_t)s.hkv * s.d * dt_size(dt);
    std::vector<float> q(nqe), k(nke), v(nke);
    fill(q, -2.f, 2.f);
    fill(k, -2.f, 2.f);
    fill(v, -1.f, 1.f);
    std::vector<uint8_t> kb = to_dtype(k, dt), vb = to_dtype(v, dt);
    dbuf qd(nqe * 4), kd(kb.size()), vd(vb.size()), od(nqe * 4), ld(rows * 4), md(nqe * 4), mld(rows * 4);
    CK(cudaMemcpy(qd.p, q.data(), nqe * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(kd.p, kb.data(), kb.size(), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(vd.p, vb.data(), vb.size(), cudaMemcpyHostToDevice));
    int rc = gpu_forward(&d, qd.f(), kd.p, vd.p, od.f(), ld.f());

    std::vector<dbuf *> po, pl;
    const float *op[n_parts], *lp[n_parts];
    for (int p = 0; p < n_parts && rc == SR_OK; p++) {
        po.push_back(new dbuf(nqe * 4));
        pl.push_back(new dbuf(rows * 4));
        sr_attn_desc dp = d;
        const char *kp = static_cast<const char *>(kd.p), *vp = static_cast<const char *>(vd.p);
        if (p < n_pieces) {
            dp.nk = cuts[p + 1] - cuts[p];
            dp.k_pos0 = s.k0 + cuts[p];
            kp += cuts[p] * key_bytes;
            vp += cuts[p] * key_bytes;
        } else {
            dp.nk = 5;
            dp.k_pos0 = s.q0 + s.nq; /* after every query row */
        }
        rc = gpu_forward(&dp, qd.f(), kp, vp, po[p]->f(), pl[p]->f());
        op[p] = po[p]->f();
        lp[p] = pl[p]->f();
    }
    if (rc == SR_OK) rc = sr_attn_merge_cuda(n_parts, op, lp, (int64_t)rows, s.d, md.f(), mld.f(), nullptr);
    if (rc == SR_OK) CK(cudaDeviceSynchronize());

    std::vector<float> o(nqe), lse(rows), mo(nqe), ml(rows), co(nqe), cl(rows);
    std::vector<std::vector<float>> ho(n_parts, std::vector<float>(nqe)), hl(n_parts, std::vector<float>(rows));
    int64_t bad_full = -1, bad_cpu = -1;
    if (rc == SR_OK) {
        CK(cudaMemcpy(o.data(), od.p, nqe * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(lse.data(), ld.p, rows * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(mo.data(), md.p, nqe * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(ml.data(), mld.p, rows * 4, cudaMemcpyDeviceToHost));
        const float *hop[n_parts], *hlp[n_parts];
        for (int p = 0; p < n_parts; p++) {
            CK(cudaMemcpy(ho[p].data(), op[p], nqe * 4, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(hl[p].data(), lp[p], rows * 4, cudaMemcpyDeviceToHost));
            hop[p] = ho[p].data();
            hlp[p] = hl[p].data();
        }
        rc = sr_attn_merge(n_parts, hop, hlp, (int64_t)rows, s.d, co.data(), cl.data());
        const tol t = tol_for(dt);
        bad_full = compare("split O", mo.data(), o.data(), (int64_t)nqe, t.o_abs, t.o_rel) +
                   compare("split LSE", ml.data(), lse.data(), (int64_t)rows, t.l_abs, t.l_rel);
        bad_cpu = compare("merge O", mo.data(), co.data(), (int64_t)nqe, 1e-6, 1e-5) +
                  compare("merge LSE", ml.data(), cl.data(), (int64_t)rows, 1e-6, 1e-6);
    } else {
        printf("#   rc %d: %s\n", rc, sr_error_msg());
    }
    for (auto p : po) delete p;
    for (auto p : pl) delete p;
    tap(rc == SR_OK && bad_full == 0, "split KV in %d pieces + 1 masked, merged on device = unsplit forward (%s, %lld bad)",
        n_pieces, dt_name(dt), (long long)bad_full);
    tap(rc == SR_OK && bad_cpu == 0, "device merge of those parts = sr_attn_merge (%s, %lld bad)", dt_name(dt),
        (long long)bad_cpu);
}

/* Many parts (more than one launch takes), some empty, every row of part 0
 * aliased by the output, odd head_dim (scalar path) and even (float4). */
static void test_merge(int n_parts, int64_t rows, int head_dim, bool alias) {
    const size_t n = (size_t)rows * head_dim;
    std::vector<std::vector<float>> ho(n_parts, std::vector<float>(n)), hl(n_parts, std::vector<float>(rows));
    for (int p = 0; p < n_parts; p++) {
        fill(ho[p], -1.f, 1.f);
        for (int64_t r = 0; r < rows; r++) {
            /* row 0: every part empty; otherwise about one part in five */
            bool empty = r == 0 || urand(0.f, 1.f) < 0.2f;
            hl[p][r] = empty ? -INFINITY : urand(-5.f, 5.f);
            if (empty)
                for (int c = 0; c < head_dim; c++) ho[p][r * head_dim + c] = 0.f;
        }
    }
    std::vector<dbuf *> bufs;
    const float *op[64], *lp[64], *hop[64], *hlp[64];
    for (int p = 0; p < n_parts; p++) {
        bufs.push_back(new dbuf(n * 4));
        bufs.push_back(new dbuf(rows * 4));
        CK(cudaMemcpy(bufs[2 * p]->p, ho[p].data(), n * 4, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(bufs[2 * p + 1]->p, hl[p].data(), rows * 4, cudaMemcpyHostToDevice));
        op[p] = bufs[2 * p]->f();
        lp[p] = bufs[2 * p + 1]->f();
        hop[p] = ho[p].data();
        hlp[p] = hl[p].data();
    }
    std::vector<float> co(n), cl(rows), go(n), gl(rows);
    int rc = sr_attn_merge(n_parts, hop, hlp, rows, head_dim, co.data(), cl.data());
    dbuf od(n * 4), ld(rows * 4);
    float *o = alias ? const_cast<float *>(op[0]) : od.f(), *l = alias ? const_cast<float *>(lp[0]) : ld.f();
    int grc = sr_attn_merge_cuda(n_parts, op, lp, rows, head_dim, o, l, nullptr);
    int64_t bad = -1;
    if (rc == SR_OK && grc == SR_OK) {
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(go.data(), o, n * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(gl.data(), l, rows * 4, cudaMemcpyDeviceToHost));
        bad = compare("merge O", go.data(), co.data(), (int64_t)n, 1e-6, 1e-5) +
              compare("merge LSE", gl.data(), cl.data(), rows, 1e-6, 1e-6);
    } else {
        printf("#   cpu rc %d, cuda rc %d: %s\n", rc, grc, sr_error_msg());
    }
    for (auto b : bufs) delete b;
    tap(bad == 0 && gl[0] == -INFINITY,
        "merge %d parts, %lld rows, head_dim %d%s = sr_attn_merge (%lld bad; all-empty row gives -inf)", n_parts,
        (long long)rows, head_dim, alias ? ", output aliasing part 0" : "", (long long)bad);
}

static void test_errors(void) {
    dbuf a(1 << 20), b(1 << 20), c(1 << 20), o(1 << 20), l(1 << 16);
    shape s = {64, 4, 4, 16, 16, 0, 0, 0, 0.f};
    sr_attn_desc d = desc_of(s, SR_DT_BF16);
    int rc = sr_attn_forward_cuda(&d, a.f(), b.p, c.p, o.f(), l.f(), nullptr);
    CK(cudaDeviceSynchronize());
    tap(rc == SR_OK, "valid call returns SR_OK (rc %d)", rc);
    d.head_dim = 48;
    rc = sr_attn_forward_cuda(&d, a.f(), b.p, c.p, o.f(), l.f(), nullptr);
    tap(rc == SR_EUNSUPPORTED, "head_dim 48 is refused with SR_EUNSUPPORTED (rc %d: %s)", rc, sr_error_msg());
    d.head_dim = 64;
    d.n_head_q = 6;
    rc = sr_attn_forward_cuda(&d, a.f(), b.p, c.p, o.f(), l.f(), nullptr);
    tap(rc == SR_EINVAL, "n_head_q 6 over n_head_kv 4 is refused with SR_EINVAL (rc %d: %s)", rc, sr_error_msg());
    d.n_head_q = 4;
    std::vector<float> host(1 << 18);
    rc = sr_attn_forward_cuda(&d, host.data(), b.p, c.p, o.f(), l.f(), nullptr);
    tap(rc == SR_EINVAL, "host q is refused with SR_EINVAL (rc %d: %s)", rc, sr_error_msg());
    rc = sr_attn_forward_cuda(&d, a.f() + 1, b.p, c.p, o.f(), l.f(), nullptr);
    tap(rc == SR_EINVAL, "misaligned q is refused with SR_EINVAL (rc %d: %s)", rc, sr_error_msg());
}

/* Element idx of a K/V array of type dt, as a double. */
static double kv_at(const void *p, int dt, size_t idx) {
    if (dt == SR_DT_F32) return static_cast<const float *>(p)[idx];
    const uint16_t x = static_cast<const uint16_t *>(p)[idx];
    return dt == SR_DT_F16 ? sr_f16_to_f32(x) : sr_bf16_to_f32(x);
}

/* O row and LSE of (row i, head h) in double from the inputs as the kernel
 * sees them (Q rounded to the KV type); default scale. */
static void ref_row(const sr_attn_desc &d, const float *q, const void *k, const void *v, int64_t i, int h, double *o,
                    double *lse) {
    const int D = d.head_dim, hk = h / (d.n_head_q / d.n_head_kv);
    const double scale = 1.0 / sqrt((double)D);
    const int64_t end = d.causal ? std::min(d.nk, d.q_pos0 + i - d.k_pos0 + 1) : d.nk;
    std::vector<double> qr(D), s(std::max(end, (int64_t)1));
    for (int c = 0; c < D; c++) qr[c] = round_dt(q[(i * d.n_head_q + h) * D + c], d.kv_dtype);
    double m = -INFINITY;
    for (int64_t j = 0; j < end; j++) {
        double acc = 0;
        for (int c = 0; c < D; c++) acc += qr[c] * kv_at(k, d.kv_dtype, (size_t)(j * d.n_head_kv + hk) * D + c);
        s[j] = acc * scale;
        m = std::max(m, s[j]);
    }
    double sum = 0;
    for (int c = 0; c < D; c++) o[c] = 0;
    for (int64_t j = 0; j < end; j++) {
        const double p = exp(s[j] - m);
        sum += p;
        for (int c = 0; c < D; c++) o[c] += p * kv_at(v, d.kv_dtype, (size_t)(j * d.n_head_kv + hk) * D + c);
    }
    for (int c = 0; c < D; c++) o[c] = end > 0 ? o[c] / sum : 0.0;
    *lse = end > 0 ? m + log(sum) : -INFINITY;
}

static double median(std::vector<double> x) {
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
}

/* Causal prefill timings; every run spot-checked on a few rows. */
static void bench(void) {
    const int D = 128, HQ = 32, HKV = 8, REPS = 5;
    const int64_t nmax = 32768;
    const size_t nqe = (size_t)nmax * HQ * D, nke = (size_t)nmax * HKV * D;
    std::vector<float> q(nqe), kf(nke), vf(nke);
    fill(q, -2.f, 2.f);
    fill(kf, -2.f, 2.f);
    fill(vf, -1.f, 1.f);
    dbuf qd(nqe * 4), kd(nke * 4), vd(nke * 4), od(nqe * 4), ld((size_t)nmax * HQ * 4);
    CK(cudaMemcpy(qd.p, q.data(), nqe * 4, cudaMemcpyHostToDevice));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));

    printf("# causal prefill, d=%d, Hq=%d, Hkv=%d, median of %d runs\n", D, HQ, HKV, REPS);
    printf("# %-5s %8s %10s %10s %12s %12s\n", "kv", "nq=nk", "ms", "TFLOP/s", "spot|dO|", "spot|dLSE|");
    struct run { int dt; int64_t n; };
    const run runs[] = {{SR_DT_BF16, 4096}, {SR_DT_BF16, 16384}, {SR_DT_BF16, 32768}, {SR_DT_F16, 4096},
                        {SR_DT_F16, 16384}, {SR_DT_F32, 4096}};
    int last_dt = -1;
    std::vector<uint8_t> kb, vb;
    for (const run &r : runs) {
        if (r.dt != last_dt) {
            kb = to_dtype(kf, r.dt);
            vb = to_dtype(vf, r.dt);
            CK(cudaMemcpy(kd.p, kb.data(), kb.size(), cudaMemcpyHostToDevice));
            CK(cudaMemcpy(vd.p, vb.data(), vb.size(), cudaMemcpyHostToDevice));
            last_dt = r.dt;
        }
        shape s = {D, HQ, HKV, r.n, r.n, 1, 0, 0, 0.f};
        sr_attn_desc d = desc_of(s, r.dt);
        int rc = gpu_forward(&d, qd.f(), kd.p, vd.p, od.f(), ld.f()); /* warm-up */
        std::vector<double> ms;
        for (int i = 0; i < REPS && rc == SR_OK; i++) {
            CK(cudaEventRecord(e0));
            rc = sr_attn_forward_cuda(&d, qd.f(), kd.p, vd.p, od.f(), ld.f(), nullptr);
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float t;
            CK(cudaEventElapsedTime(&t, e0, e1));
            ms.push_back(t);
        }
        if (rc != SR_OK) {
            tap(false, "bench %s nq=nk=%lld: rc %d: %s", dt_name(r.dt), (long long)r.n, rc, sr_error_msg());
            continue;
        }
        /* spot check: first, last and random rows */
        double worst_o = 0, worst_l = 0;
        const tol t = tol_for(r.dt);
        bool ok = true;
        std::vector<double> o_ref(D);
        std::vector<float> o_got(D);
        for (int c = 0; c < 12; c++) {
            const int64_t i = c == 0 ? 0 : c == 1 ? r.n - 1 : (int64_t)urand(0.f, (float)r.n) % r.n;
            const int h = c % HQ;
            double lse_ref;
            ref_row(d, q.data(), kb.data(), vb.data(), i, h, o_ref.data(), &lse_ref);
            float lse_got;
            CK(cudaMemcpy(o_got.data(), od.f() + (i * HQ + h) * D, D * 4, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(&lse_got, ld.f() + i * HQ + h, 4, cudaMemcpyDeviceToHost));
            for (int e = 0; e < D; e++) {
                const double err = fabs(o_got[e] - o_ref[e]);
                worst_o = std::max(worst_o, err);
                ok = ok && err <= t.o_abs + t.o_rel * fabs(o_ref[e]);
            }
            const double el = fabs(lse_got - lse_ref);
            worst_l = std::max(worst_l, el);
            ok = ok && el <= t.l_abs + t.l_rel * fabs(lse_ref);
        }
        const double m = median(ms);
        printf("# %-5s %8lld %10.3f %10.1f %12.2e %12.2e\n", dt_name(r.dt), (long long)r.n, m,
               sr_attn_flops(&d) / (m * 1e-3) / 1e12, worst_o, worst_l);
        tap(ok, "bench %s causal nq=nk=%lld: spot check of 12 rows against a double reference", dt_name(r.dt),
            (long long)r.n);
    }

    /* merge bandwidth: rows of a 16k x 32-head prefill, equal LSE so every
     * part is read */
    const int64_t rows = 16384 * HQ;
    const size_t n = (size_t)rows * D;
    printf("# merge, %lld rows x d=%d, median of %d runs\n", (long long)rows, D, REPS);
    printf("# %-6s %10s %10s\n", "parts", "ms", "GB/s");
    for (int n_parts : {2, 4}) {
        std::vector<dbuf *> bufs;
        const float *op[4], *lp[4];
        for (int p = 0; p < n_parts; p++) {
            bufs.push_back(new dbuf(n * 4));
            bufs.push_back(new dbuf(rows * 4));
            CK(cudaMemset(bufs[2 * p]->p, 0, n * 4));
            CK(cudaMemset(bufs[2 * p + 1]->p, 0, rows * 4));
            op[p] = bufs[2 * p]->f();
            lp[p] = bufs[2 * p + 1]->f();
        }
        int rc = sr_attn_merge_cuda(n_parts, op, lp, rows, D, od.f(), ld.f(), nullptr);
        std::vector<double> ms;
        for (int i = 0; i < REPS && rc == SR_OK; i++) {
            CK(cudaEventRecord(e0));
            rc = sr_attn_merge_cuda(n_parts, op, lp, rows, D, od.f(), ld.f(), nullptr);
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            float t;
            CK(cudaEventElapsedTime(&t, e0, e1));
            ms.push_back(t);
        }
        float lse0 = NAN;
        if (rc == SR_OK) CK(cudaMemcpy(&lse0, ld.f(), 4, cudaMemcpyDeviceToHost));
        for (auto b : bufs) delete b;
        if (rc != SR_OK) {
            tap(false, "bench merge %d parts: rc %d: %s", n_parts, rc, sr_error_msg());
            continue;
        }
        const double m = median(ms), bytes = (double)(n_parts + 1) * (double)(n + rows) * 4.0;
        printf("# %-6d %10.3f %10.1f\n", n_parts, m, bytes / (m * 1e-3) / 1e9);
        /* n equal parts with LSE 0 merge to LSE log(n) */
        tap(fabsf(lse0 - logf((float)n_parts)) < 1e-6f, "bench merge %d parts: LSE of equal parts is log(n) (%g)",
            n_parts, (double)lse0);
    }
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
}

int main(int argc, char **argv) {
    const bool timings = !(argc > 1 && strcmp(argv[1], "--no-bench") == 0);
    if (argc > 1 && timings) {
        fprintf(stderr, "usage: %s [--no-bench]   (--no-bench: correctness only, no timings)\n", argv[0]);
        return 2;
    }
    if (!sr_cuda_available()) {
        printf("ok 1 - cuda attention # SKIP no CUDA device (%s)\n", sr_error_msg());
        printf("1..1\n");
        return 0;
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("# device: %s, sm_%d%d, %d SMs\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);

    const shape shapes[] = {
        {64, 4, 4, 1, 1, 0, 0, 0, 0.f},            /* smallest */
        {80, 8, 2, 37, 100, 0, 0, 0, 0.f},         /* odd sizes, GQA 4 */
        {96, 8, 1, 130, 67, 1, 0, 0, 0.f},         /* nq > nk, GQA 8, causal from 0 */
        {128, 8, 8, 200, 200, 1, 0, 0, 0.f},       /* square causal: diagonal tiles */
        {128, 16, 2, 129, 257, 1, 1000, 0, 0.f},   /* keys before every query: nothing masked */
        {64, 8, 2, 70, 90, 1, 0, 500, 0.f},        /* keys after every query: all rows empty */
        {80, 4, 1, 65, 190, 1, 100, 50, 0.f},      /* overlapping */
        {96, 8, 2, 100, 64, 1, 10, 40, 0.2f},      /* first 30 rows empty, the rest partial; own scale */
        {64, 8, 2, 1000, 1500, 1, 500, 0, 0.f},    /* larger, several tiles each way */
        {80, 8, 8, 3, 1000, 0, 0, 0, 0.f},         /* decode-like: few rows, long KV */
        {96, 4, 4, 64, 64, 1, 0, 0, 0.f},          /* exactly one tile */
        {128, 8, 2, 5, 1, 1, 0, 2, 0.f},           /* nk = 1, rows 0-1 empty */
        {128, 32, 8, 333, 777, 1, 444, 0, 0.f},    /* many heads, ragged tiles */
        /* decode: few query tiles, so the KV range is split and merged */
        {128, 32, 8, 1, 5000, 1, 4999, 0, 0.f},    /* last position of a 5000-token context */
        {64, 8, 1, 8, 3000, 0, 0, 0, 0.f},         /* 8 rows, GQA 8 */
        {96, 4, 4, 4, 3000, 1, 1000, 0, 0.f},      /* later splits fully masked */
        {80, 2, 1, 2, 100003, 1, 100001, 0, 0.f},  /* long KV, odd length */
    };
    for (int dt : {SR_DT_F32, SR_DT_F16, SR_DT_BF16})
        for (const shape &s : shapes) test_forward(s, dt);
    test_split_merge(SR_DT_F32);
    test_split_merge(SR_DT_BF16);
    test_merge(40, 1000, 128, false);
    test_merge(3, 517, 6, false);
    test_merge(5, 300, 64, true);
    test_errors();
    if (timings) bench();
    printf("1..%d\n", n_test);
    return n_fail ? 1 : 0;
}
