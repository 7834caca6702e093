/* ASAD's draw on the CPU in one pass per matrix: the fused kernel behind `dropmae.race_top_k`
 * and `dropmae.asad_drop_indices` (compiled on first use by `dropmae._race_kernel`, loaded with
 * ctypes; without a C compiler dropmae runs the same algorithm in torch ops).
 *
 * It computes what the torch path computes, in the same order, per (sample, head) matrix:
 *   weights    W from the logits: A = softmax(row), f_tem(i) = max over the other frame of A
 *              + 1e-6, r(i) = f_tem(i) / (sum over own frame, j != i, of A + (h - 1) 1e-6),
 *              W[i, c] = r(i) (A[i, c] + 1e-6), 0 on the diagonal  (`dropmae.asad_weights`);
 *   threshold  t: Newton on every RACE_STRIDE-th weight     (`dropmae.race_threshold`);
 *   race       the K smallest keys E_j / W_j, E_j = -log(1 - u_j) ~ Exp(1) (`dropmae.race_top_k`).
 * Its uniforms: u_j = k_j 2^-53 with k_j a uniform 53-bit integer whose top 8 bits are the byte
 * b_j (so u_j >= b_j / 256) and whose low 45 bits come from a second, independent word; 1 - u_j
 * is then exact in double, and E_j is computed in double (the keys too). The words come from a
 * counter-based generator (splitmix64: word c of stream s is mix(s + (c + 1) * GAMMA)), keyed
 * per matrix from one 64-bit seed that the caller draws from torch's generator, so
 * `torch.manual_seed` fixes every draw, and b_j and the low bits of u_j are functions of j:
 * the fallback (step 4 of `race_top_k`) recomputes exactly the uniforms the pruned pass saw.
 * Exactness: a position whose byte already gives b_j >= 256 W_j t has key >= t (the test uses
 * 256 t (1 + 2^-16), above the float rounding of the product); if at least K keys lie below t,
 * the K smallest keys are among the others, so selecting the K smallest candidate keys is
 * selecting the K smallest of all keys (the exponential race: the law of multinomial sampling
 * without replacement); with fewer, every key is computed (same u_j) and the K smallest taken.
 * The exact selection: keys below t into 2048 equal buckets of [0, t) (a monotone map, so a
 * lower bucket holds only smaller keys), the buckets below the K-th key taken whole, then a
 * radix select on the bits of the (non-negative double) keys of that one bucket; exact ties,
 * of probability ~2^-50, go to the lower index.
 * The math functions are written out (exp in float for the softmax, relative error < 1e-7;
 * log in double for the keys, < 3e-16, as fdlibm) so that the compiler vectorises the loops
 * (-fno-trapping-math, no -ffast-math: inf and NaN keep their meaning). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define GAMMA 0x9e3779b97f4a7c15ULL
#define RACE_STRIDE 17
#define RACE_MARGIN 3.0
#define RACE_NEWTON_STEPS 4

static inline uint64_t mix64(uint64_t z) {                       /* splitmix64's output function */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static inline float exp_f(float x) {                   /* Cephes expf; x <= 0 here, rel err < 1e-7 */
    x = x < -87.0f ? -87.0f : x;
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, 4);
    return p * s;
}

static inline double log_d(double x) {                 /* fdlibm log, x normal > 0; < 1 ulp */
    uint64_t ix;
    memcpy(&ix, &x, 8);
    ix += (uint64_t)(0x3ff00000 - 0x3fe6a09e) << 32;            /* x = 2^k m, m in [sqrt(.5), sqrt(2)) */
    double k = (double)((int64_t)(ix >> 52) - 0x3ff);
    ix = (ix & 0x000fffffffffffffULL) + ((uint64_t)0x3fe6a09e << 32);
    double m;
    memcpy(&m, &ix, 8);
    double f = m - 1.0, hfsq = 0.5 * f * f, s = f / (2.0 + f), z = s * s, w = z * z;
    double t1 = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01));
    double t2 = z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01
                + w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
    return s * (hfsq + t1 + t2) + k * 1.90821492927058770002e-10 - hfsq + f + k * 6.93147180369123816490e-01;
}

/* The stream of matrix m: b_j = byte j % 8 of word j / 8; the low 45 bits of u_j from word
 * n8 + j, n8 = ceil(n / 8). */
static inline uint64_t word(uint64_t s, uint64_t c) { return mix64(s + (c + 1) * GAMMA); }

/* t per `dropmae.race_threshold`: about K + RACE_MARGIN sd keys below it; INFINITY if the
 * subsample cannot hold that many. sub: scratch of n / RACE_STRIDE + 1 floats. */
static double race_threshold(const float *w, int64_t n, int64_t K, float *sub) {
    int64_t ns = 0, pos = 0;
    for (int64_t j = 0; j < n; j += RACE_STRIDE) sub[ns++] = w[j];
    double target = (K + RACE_MARGIN * sqrt((double)RACE_STRIDE * K)) / ((double)n / ns);
    float sum = 0;
    #pragma omp simd reduction(+:sum, pos)
    for (int64_t j = 0; j < ns; j++) { sum += sub[j]; pos += sub[j] > 0; }
    if (!(pos > target)) return INFINITY;
    double t = target / (sum > 1e-30f ? sum : 1e-30f);
    for (int it = 0; it < RACE_NEWTON_STEPS; it++) {
        float se = 0, swe = 0, tf = (float)t;
        #pragma omp simd reduction(+:se, swe)
        for (int64_t j = 0; j < ns; j++) {
            float e = exp_f(-sub[j] * tf);
            se += e;
            swe += sub[j] * e;
        }
        t += (target - ns + se) / (swe > 1e-30f ? swe : 1e-30f);
    }
    return t > 0 ? t : INFINITY;
}

/* Moves the `need` smallest keys' indices of (key, idx)[0:cnt] to out; radix select on the key
 * bits (non-negative doubles order as their bits), 11-bit digits from the exponent down. */
static void select_smallest(double *key, int32_t *idx, int64_t cnt, int64_t need, int32_t *out) {
    static const int shifts[6] = {52, 41, 30, 19, 8, 0};
    int64_t hist[2048];
    if (need > cnt) need = cnt;                       /* callers guarantee K positive weights */
    for (int level = 0; level < 6 && need > 0; level++) {
        int sh = shifts[level];
        uint64_t mask = level == 5 ? 255 : 2047;
        memset(hist, 0, sizeof hist);
        for (int64_t e = 0; e < cnt; e++) {
            uint64_t b;
            memcpy(&b, &key[e], 8);
            hist[(b >> sh) & mask]++;
        }
        int64_t below = 0, d = 0;
        while (below + hist[d] < need) below += hist[d++];
        int all = hist[d] == need - below;            /* the boundary digit's keys all fit */
        int64_t keep = 0;
        for (int64_t e = 0; e < cnt; e++) {
            uint64_t b;
            memcpy(&b, &key[e], 8);
            int64_t digit = (int64_t)((b >> sh) & mask);
            if (digit < d || (all && digit == d)) *out++ = idx[e];
            else if (digit == d) { key[keep] = key[e]; idx[keep++] = idx[e]; }
        }
        need = all ? 0 : need - below;
        cnt = keep;
    }
    for (int64_t e = 0; e < need; e++) *out++ = idx[e];   /* equal keys: the lower indices */
}

#define BUCKETS 2048

/* As select_smallest when at least `need` keys lie below t (the race's usual case), faster:
 * keys go to BUCKETS equal buckets of [0, t) by floor(key BUCKETS / t) (monotone in the key,
 * so a lower bucket holds only smaller keys; keys >= t into bucket BUCKETS); the buckets
 * below the one where the count reaches `need` are taken whole, and select_smallest picks the
 * rest among the few keys of that bucket. bucket: scratch of cnt int32. */
static void select_below(double *key, int32_t *idx, int32_t *bucket, int64_t cnt, int64_t need,
                         double t, int32_t *out) {
    int64_t hist[BUCKETS + 1] = {0};
    double scale = BUCKETS / t;
    #pragma omp simd
    for (int64_t e = 0; e < cnt; e++) {
        double b = key[e] * scale;
        bucket[e] = b < BUCKETS ? (int32_t)b : BUCKETS;
    }
    for (int64_t e = 0; e < cnt; e++) hist[bucket[e]]++;
    int64_t below = 0, d = 0;
    while (below + hist[d] < need) below += hist[d++];
    int64_t o = 0, keep = 0;
    for (int64_t e = 0; e < cnt; e++) {                               /* branch-free partition */
        int32_t b = bucket[e], i = idx[e];
        double k = key[e];
        out[o] = i;
        o += b < d;
        key[keep] = k;
        idx[keep] = i;
        keep += b == d;
    }
    select_smallest(key, idx, keep, need - below, out + below);
}

typedef struct {
    uint8_t *bytes;
    float *sub, *cw;
    int32_t *cb, *idx, *pick;
    double *key;
} scratch_t;

/* The positions j with b_j < w_j c256 (c256 = 256 t, or INFINITY: every w_j > 0), in order:
 * their index, byte and weight. Returns their count. */
static int64_t candidates(const float *w, const uint8_t *bytes, int64_t n, float c256, scratch_t *sc) {
    int64_t cnt = 0, j = 0;
#ifdef __AVX512F__
    __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 c = _mm512_set1_ps(c256);
    for (; j + 16 <= n; j += 16) {
        __m512 wv = _mm512_loadu_ps(w + j);
        __m512i bi = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(bytes + j)));
        __mmask16 m = _mm512_cmp_ps_mask(_mm512_cvtepi32_ps(bi), _mm512_mul_ps(wv, c), _CMP_LT_OQ);
        _mm512_storeu_si512(sc->idx + cnt, _mm512_maskz_compress_epi32(m, iota));
        _mm512_storeu_si512(sc->cb + cnt, _mm512_maskz_compress_epi32(m, bi));
        _mm512_storeu_ps(sc->cw + cnt, _mm512_maskz_compress_ps(m, wv));
        cnt += __builtin_popcount((unsigned)m);
        iota = _mm512_add_epi32(iota, _mm512_set1_epi32(16));
    }
#endif
    for (; j < n; j++) {
        sc->idx[cnt] = (int32_t)j;
        sc->cb[cnt] = bytes[j];
        sc->cw[cnt] = w[j];
        cnt += (float)bytes[j] < w[j] * c256;
    }
    return cnt;
}

/* Keys E_j / w_j of the candidates (sc->idx, cb, cw)[0:cnt] into sc->key; returns how many
 * are below t. u_j = (b_j 2^45 + the top 45 bits of word n8 + j) 2^-53. */
static int64_t keys(uint64_t s, int64_t n8, int64_t cnt, double t, scratch_t *sc) {
    int64_t below = 0;
    #pragma omp simd reduction(+:below)
    for (int64_t e = 0; e < cnt; e++) {
        uint64_t k = ((uint64_t)sc->cb[e] << 45) | (word(s, (uint64_t)(n8 + sc->idx[e])) >> 19);
        double y = (double)(int64_t)((1ULL << 53) - k) * 0x1p-53;              /* 1 - u, exact */
        double key = -log_d(y) / (double)sc->cw[e];
        sc->key[e] = key;
        below += key < t;
    }
    return below;
}

/* K of the n weights w into sc->pick, drawn by the pruned race with threshold t (NAN:
 * race_threshold). upto < 6 stops after a stage (profiling): 3 the bytes, 4 the candidates,
 * 5 their keys. */
static void race_one(const float *w, int64_t n, int64_t K, double t, uint64_t s, scratch_t *sc,
                     int upto) {
    int64_t n8 = (n + 7) / 8;
    if (isnan(t)) t = race_threshold(w, n, K, sc->sub);
    for (int64_t c = 0; c < n8; c++) {
        uint64_t x = word(s, (uint64_t)c);
        memcpy(sc->bytes + 8 * c, &x, 8);
    }
    if (upto == 3) return;
    float c256 = (float)(256.0 * t * (1.0 + 0x1p-16));      /* covers the float rounding */
    int64_t cnt = candidates(w, sc->bytes, n, c256, sc);
    if (upto == 4) return;
    int64_t below = keys(s, n8, cnt, t, sc);
    if (below < K && !isinf(t)) {                          /* step 4: complete the race, same u_j */
        cnt = candidates(w, sc->bytes, n, INFINITY, sc);
        below = keys(s, n8, cnt, t, sc);
    }
    if (upto == 5) return;
    if (below >= K && !isinf(t)) select_below(sc->key, sc->idx, sc->cb, cnt, K, t, sc->pick);
    else select_smallest(sc->key, sc->idx, cnt, K, sc->pick);
}

static int scratch_init(scratch_t *sc, int64_t n) {
    size_t m = (size_t)n + 16;
    sc->bytes = malloc(m + 8);
    sc->sub = malloc(sizeof(float) * m);
    sc->cw = malloc(sizeof(float) * m);
    sc->cb = malloc(sizeof(int32_t) * m);
    sc->idx = malloc(sizeof(int32_t) * m);
    sc->pick = malloc(sizeof(int32_t) * m);
    sc->key = malloc(sizeof(double) * m);
    return sc->bytes && sc->sub && sc->cw && sc->cb && sc->idx && sc->pick && sc->key;
}

static void scratch_free(scratch_t *sc) {
    free(sc->bytes);
    free(sc->sub);
    free(sc->cw);
    free(sc->cb);
    free(sc->idx);
    free(sc->pick);
    free(sc->key);
}

static uint64_t stream(uint64_t seed, int64_t m) { return mix64(seed + (uint64_t)m * 0xd1b54a32d192ed03ULL); }

/* race_top_k: rows m0..m1-1 of w (M, n) float32 contiguous; t (M,) double or NULL; out (M, K)
 * int64. Returns 0, or -1 when out of memory. */
int race_rows(const float *w, int64_t n, int64_t K, const double *t, uint64_t seed,
              int64_t m0, int64_t m1, int64_t *out) {
    scratch_t sc = {0};
    if (!scratch_init(&sc, n)) { scratch_free(&sc); return -1; }
    for (int64_t m = m0; m < m1; m++) {
        race_one(w + m * n, n, K, t ? t[m] : NAN, stream(seed, m), &sc, 6);
        for (int64_t e = 0; e < K; e++) out[m * K + e] = sc.pick[e];
    }
    scratch_free(&sc);
    return 0;
}

/* The spec's W of one (L, L) logit matrix into w (L, L/2); as `dropmae.asad_weights`. */
static void weights(const float *lg, int64_t L, float *w) {
    int64_t h = L / 2;
    float e[L];
    for (int64_t i = 0; i < L; i++) {
        const float *own = lg + i * L + (i < h ? 0 : h), *other = lg + i * L + (i < h ? h : 0);
        float omx = -INFINITY, cmx = -INFINITY, zo = 0, zc = 0;
        #pragma omp simd reduction(max:omx, cmx)
        for (int64_t j = 0; j < h; j++) {
            omx = own[j] > omx ? own[j] : omx;
            cmx = other[j] > cmx ? other[j] : cmx;
        }
        float mx = omx > cmx ? omx : cmx;                                    /* the row's max */
        #pragma omp simd reduction(+:zo, zc)
        for (int64_t j = 0; j < h; j++) {
            e[j] = exp_f(own[j] - mx);
            zo += e[j];
            zc += exp_f(other[j] - mx);
        }
        float inv = 1.0f / (zo + zc);                                        /* 1 / Z */
        float f_tem = exp_f(cmx - mx) * inv + 1e-6f;                         /* max A + 1e-6 */
        float r = f_tem / ((zo - e[i % h]) * inv + (float)(h - 1) * 1e-6f);  /* j != i */
        float *wr = w + i * h;
        #pragma omp simd
        for (int64_t j = 0; j < h; j++) wr[j] = r * (e[j] * inv + 1e-6f);
        wr[i % h] = 0.0f;
    }
}

/* asad_drop_indices: matrices m0..m1-1 of lg (M, L, L) float32 contiguous logits -> out (M, K)
 * int64 flat indices into each (L, L) matrix. upto < 6 stops early (profiling): 1 after W,
 * 2 after the threshold, 3-5 as race_one; out is then not written. Returns 0, or -1 when out of memory. */
int asad_rows(const float *lg, int64_t L, int64_t K, uint64_t seed, int upto, int64_t m0,
              int64_t m1, int64_t *out) {
    int64_t h = L / 2, n = L * h;
    scratch_t sc = {0};
    float *w = malloc(sizeof(float) * (size_t)n);
    if (!w || !scratch_init(&sc, n)) { free(w); scratch_free(&sc); return -1; }
    volatile double sink = 0;
    for (int64_t m = m0; m < m1; m++) {
        weights(lg + m * L * L, L, w);
        if (upto == 1) { sink += w[0]; continue; }
        double t = race_threshold(w, n, K, sc.sub);
        if (upto == 2) { sink += t; continue; }
        race_one(w, n, K, t, stream(seed, m), &sc, upto);
        if (upto < 6) { sink += sc.bytes[0]; continue; }
        for (int64_t e = 0; e < K; e++) {
            int64_t j = sc.pick[e], i = j / h, c = j % h;
            out[m * K + e] = i * L + c + (i >= h ? h : 0);
        }
    }
    free(w);
    scratch_free(&sc);
    return 0;
}

/* 1 when built with OpenMP: the *_par entries below then run on the process's OpenMP threads.
 * The library is linked against libgomp.so.1, which resolves to the copy torch has already
 * loaded, so these are torch's own intra-op threads: the ones that spin for a while after each
 * torch op and would otherwise compete with threads of our own for the cores. */
int race_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* race_rows / asad_rows over matrices 0..M-1 split into `threads` equal ranges, one per
 * OpenMP thread (serially without OpenMP); each matrix's draw depends on the seed and its
 * index only, so the split does not change the result. Returns 0, or -1 when out of memory. */
int race_rows_par(const float *w, int64_t n, int64_t K, const double *t, uint64_t seed,
                  int64_t M, int threads, int64_t *out) {
    int err = 0;
    #pragma omp parallel for num_threads(threads) schedule(static, 1) reduction(|:err)
    for (int i = 0; i < threads; i++)
        err |= race_rows(w, n, K, t, seed, M * i / threads, M * (i + 1) / threads, out);
    return err;
}

int asad_rows_par(const float *lg, int64_t L, int64_t K, uint64_t seed, int upto, int64_t M,
                  int threads, int64_t *out) {
    int err = 0;
    #pragma omp parallel for num_threads(threads) schedule(static, 1) reduction(|:err)
    for (int i = 0; i < threads; i++)
        err |= asad_rows(lg, L, K, seed, upto, M * i / threads, M * (i + 1) / threads, out);
    return err;
}
