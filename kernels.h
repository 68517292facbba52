/*
kernels.h: run.c's vector kernels, for the instruction set the compiler targets (-march=native, ...):
AVX-512 (F/BW/VL, VNNI, BF16, VBMI), AVX2 + FMA (+ AVX-VNNI), ARM NEON (+ dot product) or WebAssembly
SIMD128 (make wasm).

run.c includes this file once, after its plain C kernels, and calls what it defines: prepare_input,
matmul_rows, matmul_tokens, attention_scores, attention_values and argmax. Each has a plain twin in run.c, its name
with _plain added, and computes what the twin computes, in another order (the tests compare every
build with the plain one); where this build has no vector code for it, or under -DPLAIN, it calls the
twin. Needs only what run.c defines before the include: Config, Mat and the weight types W_*, Input,
quantised, bf16_to_f32 and the plain twins.
*/

// ----------------------------------------------------------------------------
// instruction sets, from the compiler's target macros
//
// A CPU with AVX-512 also has AVX2: where AVX-512 has no kernel for a weight type (q4, or q8_0/bf16
// without VNNI/BF16), the AVX2 one runs.

#if !defined(PLAIN) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define HAVE_AVX2 1         // 8-lane fma; int8 dot products of 32 bytes (see dot_u8s8)
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define HAVE_AVX512 1       // fp32 matmul: 16-lane fma
#if defined(__AVX512VNNI__)
#define HAVE_VNNI 1         // q8_0 matmul: int8 dot products (vpdpbusd)
#if defined(__AVX512VBMI__)
#define HAVE_VBMI 1         // q6 classifier read in 6 bits: bytes gathered (vpermb), bit fields cut (vpmultishiftqb)
#endif
#endif
#if defined(__AVX512BF16__)
#define HAVE_BF16 1         // bf16 matmul: bf16 pair dot products (vdpbf16ps)
#endif
#endif
#endif

#if !defined(PLAIN) && defined(__aarch64__) && defined(__ARM_NEON)
#include <arm_neon.h>
#define HAVE_NEON 1         // 4-lane fma; int8 products widened to int16 and paired into int32
#if defined(__ARM_FEATURE_DOTPROD)
#define HAVE_DOTPROD 1      // int8 dot products of 4 bytes per lane (sdot)
#endif
#endif

#if !defined(PLAIN) && defined(__wasm_simd128__)
#include <wasm_simd128.h>
#define HAVE_WASM 1         // 4-lane mul and add (SIMD128 has no fma); int8 widened to int16 pair products
#endif

// ----------------------------------------------------------------------------
// x86 matmul kernels (AVX2, AVX-512): W (rows, n) @ x (n), four rows at a time
//
// Four-row kernels (matmul4_*) compute rows w, w + q n, w + 2q n, w + 3q n into out[0], out[q],
// out[2q], out[3q], each the sum its plain twin computes for one row (dot_plain, dot_bf16_plain,
// dot_q8_plain, dot_q4_plain): each load of x serves four rows and the four sums are reduced together.
// The four rows come from the four quarters of the rows being computed, so that each is read as its
// own sequential stream: the hardware prefetchers follow four streams well, and adjacent rows read
// interleaved stream far slower (docs/run.md, "How it is fast"). With q = 0 they compute one row four
// times over, which is how the last rows that do not fill a quarter are done.

#ifdef HAVE_AVX2
static inline float hsum8(__m256 a) {  // the sum of 8 lanes
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

// out[0], out[q], out[2q], out[3q] = the lane sums of a, b, c, d
static inline void store_sum4(float *out, size_t q, __m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    __m128 sum = _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
    float o[4];
    _mm_storeu_ps(o, sum);
    out[0] = o[0], out[q] = o[1], out[2 * q] = o[2], out[3 * q] = o[3];
}

// acc + the dot products of unsigned bytes u and signed bytes s, 4 bytes per int32 lane: one
// vpdpbusd with VNNI; else vpmaddubsw (pairs into int16, which saturate only past 32767: the
// callers keep u <= 128 and |s| <= 127) and vpmaddwd by ones to widen the pairs
static inline __m256i dot_u8s8(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

// acc + dot_u8s8(u1, s1) + dot_u8s8(u2, s2) for u1, u2 <= 15 (q4's nibbles): without VNNI the two
// vpmaddubsw results (|pair| <= 2 * 15 * 127) are added as int16 and widened once
static inline __m256i dot2_u4s8(__m256i acc, __m256i u1, __m256i s1, __m256i u2, __m256i s2) {
#if defined(__AVX512VNNI__) || defined(__AVXVNNI__)
    return dot_u8s8(dot_u8s8(acc, u1, s1), u2, s2);
#else
    __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(u1, s1), _mm256_maddubs_epi16(u2, s2));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
#endif
}

// the four rows' fp32 sums a[r] += (their int sums i[r]) * (their group scales ws[r][g]) * x's scale
static inline void scale_add4(__m256 *a, const __m256i *i, const float *const *ws, int g, float xs) {
    for (int r = 0; r < 4; r++) { a[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i[r]), _mm256_set1_ps(ws[r][g] * xs), a[r]); }
}
#endif

// Tiles: every kernel computes its four rows for T tokens at once (T <= TILE_T, a constant
// wherever it is called, so that the compiler keeps the T x 4 sums in registers): out[t * os],
// out[t * os + q], ... for input x[t]. Each load of the weights serves the T tokens, and each (row,
// token) sum is accumulated in the same lanes, in the same order, as with T = 1, which is how one
// decoded token is computed: a prompt's logits are the bits its tokens get one at a time.
#ifndef TILE_T  // -DTILE_T=2 (or 3, 6) to time others
#if defined(HAVE_NEON) || defined(HAVE_WASM)
#define TILE_T 2    // 4-lane registers: two tokens' sums fill NEON's 32 (SIMD128's JIT has 16 on x86)
#else
#define TILE_T 4
#endif
#endif
#define TILE_INLINE static inline __attribute__((always_inline))

#ifdef HAVE_AVX512
static inline __m256 lo_plus_hi(__m512 a) {  // 16 lanes -> 8
    return _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
}

TILE_INLINE void matmul4_f32(float *out, size_t os, const float *w, const Input *x, int T, int n, size_t q) {
    const float *wr[4] = {w, w + q * n, w + 2 * q * n, w + 3 * q * n};
    __m512 s[TILE_T][4];
    for (int t = 0; t < T; t++) { for (int r = 0; r < 4; r++) { s[t][r] = _mm512_setzero_ps(); } }
    for (int j = 0; j < n; j += 16) {
        __mmask16 m = n - j >= 16 ? 0xFFFF : (__mmask16)((1u << (n - j)) - 1);
        __m512 wv[4];
        for (int r = 0; r < 4; r++) { wv[r] = _mm512_maskz_loadu_ps(m, wr[r] + j); }
        for (int t = 0; t < T; t++) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x[t].f + j);
            for (int r = 0; r < 4; r++) { s[t][r] = _mm512_fmadd_ps(wv[r], xv, s[t][r]); }
        }
    }
    for (int t = 0; t < T; t++) {
        store_sum4(out + t * os, q, lo_plus_hi(s[t][0]), lo_plus_hi(s[t][1]), lo_plus_hi(s[t][2]), lo_plus_hi(s[t][3]));
    }
}
#elif defined(HAVE_AVX2)
TILE_INLINE void matmul4_f32(float *out, size_t os, const float *w, const Input *x, int T, int n, size_t q) {
    const float *wr[4] = {w, w + q * n, w + 2 * q * n, w + 3 * q * n};
    __m256 s[TILE_T][4];
    for (int t = 0; t < T; t++) { for (int r = 0; r < 4; r++) { s[t][r] = _mm256_setzero_ps(); } }
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 wv[4];
        for (int r = 0; r < 4; r++) { wv[r] = _mm256_loadu_ps(wr[r] + j); }
        for (int t = 0; t < T; t++) {
            __m256 xv = _mm256_loadu_ps(x[t].f + j);
            for (int r = 0; r < 4; r++) { s[t][r] = _mm256_fmadd_ps(wv[r], xv, s[t][r]); }
        }
    }
    if (j < n) {  // the last n % 8 columns: lanes past n load as zero
        float wt[4][8] = {{0}};
        for (int r = 0; r < 4; r++) { for (int k = j; k < n; k++) { wt[r][k - j] = wr[r][k]; } }
        for (int t = 0; t < T; t++) {
            float xt[8] = {0};
            for (int k = j; k < n; k++) { xt[k - j] = x[t].f[k]; }
            __m256 xv = _mm256_loadu_ps(xt);
            for (int r = 0; r < 4; r++) { s[t][r] = _mm256_fmadd_ps(_mm256_loadu_ps(wt[r]), xv, s[t][r]); }
        }
    }
    for (int t = 0; t < T; t++) { store_sum4(out + t * os, q, s[t][0], s[t][1], s[t][2], s[t][3]); }
}
#endif

#ifdef HAVE_BF16
// vdpbf16ps multiplies bf16 pairs exactly and adds them in fp32; x = hi + lo (see prepare_input)
// keeps the activations at 16 significant bits, so only the weights are rounded
TILE_INLINE void matmul4_bf16(float *out, size_t os, const uint16_t *w, const Input *x, int T, int n, size_t q) {
    const uint16_t *wr[4] = {w, w + q * n, w + 2 * q * n, w + 3 * q * n};
    __m512 s[TILE_T][4];
    for (int t = 0; t < T; t++) { for (int r = 0; r < 4; r++) { s[t][r] = _mm512_setzero_ps(); } }
    for (int j = 0; j < n; j += 32) {
        __mmask32 m = n - j >= 32 ? 0xFFFFFFFFu : (__mmask32)((1u << (n - j)) - 1);
        __m512bh wv[4];
        for (int r = 0; r < 4; r++) { wv[r] = (__m512bh)_mm512_maskz_loadu_epi16(m, wr[r] + j); }
        for (int t = 0; t < T; t++) {
            __m512bh hi = (__m512bh)_mm512_maskz_loadu_epi16(m, x[t].hi + j);
            __m512bh lo = (__m512bh)_mm512_maskz_loadu_epi16(m, x[t].lo + j);
            for (int r = 0; r < 4; r++) { s[t][r] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(s[t][r], wv[r], hi), wv[r], lo); }
        }
    }
    for (int t = 0; t < T; t++) {
        store_sum4(out + t * os, q, lo_plus_hi(s[t][0]), lo_plus_hi(s[t][1]), lo_plus_hi(s[t][2]), lo_plus_hi(s[t][3]));
    }
}
#elif defined(HAVE_AVX2)
static inline __m256 bf16x8_load(const uint16_t *p) {  // 8 bf16 -> fp32: the bits moved up 16
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

TILE_INLINE void matmul4_bf16(float *out, size_t os, const uint16_t *w, const Input *x, int T, int n, size_t q) {
    // the weights widened to fp32 (exact), times x in fp32: the plain twin's products
    const uint16_t *wr[4] = {w, w + q * n, w + 2 * q * n, w + 3 * q * n};
    __m256 s[TILE_T][4];
    for (int t = 0; t < T; t++) { for (int r = 0; r < 4; r++) { s[t][r] = _mm256_setzero_ps(); } }
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 wv[4];
        for (int r = 0; r < 4; r++) { wv[r] = bf16x8_load(wr[r] + j); }
        for (int t = 0; t < T; t++) {
            __m256 xv = _mm256_loadu_ps(x[t].f + j);
            for (int r = 0; r < 4; r++) { s[t][r] = _mm256_fmadd_ps(wv[r], xv, s[t][r]); }
        }
    }
    for (int t = 0; t < T; t++) {
        float rest[4] = {0};  // the last n % 8 columns, added to lane 0
        for (int k = j; k < n; k++) {
            for (int r = 0; r < 4; r++) { rest[r] += bf16_to_f32(wr[r][k]) * x[t].f[k]; }
        }
        for (int r = 0; r < 4; r++) { s[t][r] = _mm256_add_ps(s[t][r], _mm256_setr_ps(rest[r], 0, 0, 0, 0, 0, 0, 0)); }
        store_sum4(out + t * os, q, s[t][0], s[t][1], s[t][2], s[t][3]);
    }
}
#endif

#ifdef HAVE_AVX2
// the four rows of a quantised kernel (rows w, w + q rows, ...: row_bytes each) and their scales
static inline void quarter_rows(const uint8_t **wr, const float **wsr, const void *w, const float *ws, size_t q,
                                size_t row_bytes, int ng) {
    for (int r = 0; r < 4; r++) { wr[r] = (const uint8_t *)w + r * q * row_bytes, wsr[r] = ws + r * q * ng; }
}

#ifdef HAVE_VBMI
// 32 weights of a q6 row from its 24 bytes (4 weights in each 3, weight k at bit 6k of their
// little-endian word), each level + 32 in a byte: 6 bytes (8 weights) into each 8-byte lane, then
// byte k of a lane is the lane's bits 6k .. 6k + 7, less the top two.
static inline __m256i q6_unpack32(const uint8_t *p) {
    const __m256i from = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 5, 5, 6, 7, 8, 9, 10, 11, 11, 11,
                                          12, 13, 14, 15, 16, 17, 17, 17, 18, 19, 20, 21, 22, 23, 23, 23);
    const __m256i bits = _mm256_set1_epi64x(0x2A241E18120C0600);  // 0, 6, 12, ..., 42
    __m256i v = _mm256_permutexvar_epi8(from, _mm256_maskz_loadu_epi8(0xFFFFFF, p));
    return _mm256_and_si256(_mm256_multishift_epi64_epi8(bits, v), _mm256_set1_epi8(63));
}
#endif

// q8_0 with gs % 32 == 0, four rows sharing each load of x (and its correction) and its scale.
// With AVX-512 VNNI, vpdpbusd takes the weight with its top bit flipped, w + 128 as unsigned, and
// the extra 128 * sum(x) per lane comes off through x->corr (see prepare_input); otherwise the
// unsigned operand is |w|, times x with w's sign. q6 (HAVE_VBMI): the rows are q4 files' q6 classifier
// as stored (3 bytes a 4 weights), each level + 32 the unsigned operand, 32 * sum(x) a lane, a quarter
// of x->corr, coming off: every lane's int sum is the q8_0 one of the same levels, so the bits equal
// the expanded matrix's (expand_q6, which builds without VBMI run).
TILE_INLINE void matmul4_q8(float *out, size_t os, const uint8_t *w, const float *ws, const Input *x, int T, int n,
                            int gs, size_t q, int q6) {
    int ng = n / gs;
    const uint8_t *wr[4];
    const float *wsr[4];
    quarter_rows(wr, wsr, w, ws, q, q6 ? (size_t)n / 4 * 3 : (size_t)n, ng);
    __m256 a[TILE_T][4];
    for (int t = 0; t < T; t++) { for (int r = 0; r < 4; r++) { a[t][r] = _mm256_setzero_ps(); } }
    for (int g = 0; g < ng; g++) {
        __m256i i[TILE_T][4];
        for (int t = 0; t < T; t++) {
#ifdef HAVE_VNNI
            __m256i corr = _mm256_loadu_si256((const __m256i *)(x[t].corr + g * 8));
            if (q6) { corr = _mm256_srai_epi32(corr, 2); }  // exact: corr is -128 times an int
#else
            __m256i corr = _mm256_setzero_si256();
#endif
            for (int r = 0; r < 4; r++) { i[t][r] = corr; }
        }
        for (int j = g * gs; j < (g + 1) * gs; j += 32) {
            __m256i wv[4];
#ifdef HAVE_VBMI
            if (q6) {
                for (int r = 0; r < 4; r++) { wv[r] = q6_unpack32(wr[r] + j / 4 * 3); }
            } else
#endif
            {
                for (int r = 0; r < 4; r++) { wv[r] = _mm256_loadu_si256((const __m256i *)(wr[r] + j)); }
#ifdef HAVE_VNNI
                for (int r = 0; r < 4; r++) { wv[r] = _mm256_xor_si256(wv[r], _mm256_set1_epi8((char)0x80)); }
#endif
            }
            for (int t = 0; t < T; t++) {
                __m256i xq = _mm256_loadu_si256((const __m256i *)(x[t].q + j));
                for (int r = 0; r < 4; r++) {
#ifdef HAVE_VNNI
                    i[t][r] = _mm256_dpbusd_epi32(i[t][r], wv[r], xq);
#else
                    i[t][r] = dot_u8s8(i[t][r], _mm256_sign_epi8(wv[r], wv[r]), _mm256_sign_epi8(xq, wv[r]));
#endif
                }
            }
        }
        for (int t = 0; t < T; t++) { scale_add4(a[t], i[t], wsr, g, x[t].s[g]); }
    }
    for (int t = 0; t < T; t++) { store_sum4(out + t * os, q, a[t][0], a[t][1], a[t][2], a[t][3]); }
}

// q4 with gs % 32 == 0: the nibbles are the unsigned operand as they are (0..15); the 8 they are
// stored above their value comes off as 8 * x->sum[g], put in lane 0 of the group's int sums.
// gs >= 64: 32 bytes hold weights b..b+31 (low nibbles) and half+b..half+b+31 (high ones);
// gs == 32: 16 bytes hold the whole group, widened to weights 0..15 | 16..31.
TILE_INLINE void matmul4_q4(float *out, size_t os, const uint8_t *w, const float *ws, const Input *x, int T, int n,
                            int gs, size_t q) {
    int ng = n / gs, half = gs / 2;
    const uint8_t *wr[4];
    const float *wsr[4];
    quarter_rows(wr, wsr, w, ws, q, n / 2, ng);
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256 a[TILE_T][4];
    for (int t = 0; t < T; t++) { for (int r = 0; r < 4; r++) { a[t][r] = _mm256_setzero_ps(); } }
    for (int g = 0; g < ng; g++) {
        __m256i i[TILE_T][4];
        for (int t = 0; t < T; t++) {
            for (int r = 0; r < 4; r++) { i[t][r] = _mm256_setr_epi32(-8 * x[t].sum[g], 0, 0, 0, 0, 0, 0, 0); }
        }
        size_t o = (size_t)g * half;
        if (gs == 32) {
            __m256i wv[4];
            for (int r = 0; r < 4; r++) {
                __m128i b = _mm_loadu_si128((const __m128i *)(wr[r] + o));
                wv[r] = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), m4);
            }
            for (int t = 0; t < T; t++) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(x[t].q + (size_t)g * gs));
                for (int r = 0; r < 4; r++) { i[t][r] = dot_u8s8(i[t][r], wv[r], xv); }
            }
        } else {
            for (int b = 0; b < half; b += 32) {
                __m256i lo[4], hi[4];
                for (int r = 0; r < 4; r++) {
                    __m256i wv = _mm256_loadu_si256((const __m256i *)(wr[r] + o + b));
                    lo[r] = _mm256_and_si256(wv, m4), hi[r] = _mm256_and_si256(_mm256_srli_epi16(wv, 4), m4);
                }
                for (int t = 0; t < T; t++) {
                    const int8_t *xg = x[t].q + (size_t)g * gs;
                    __m256i xlo = _mm256_loadu_si256((const __m256i *)(xg + b)), xhi = _mm256_loadu_si256((const __m256i *)(xg + half + b));
                    for (int r = 0; r < 4; r++) { i[t][r] = dot2_u4s8(i[t][r], lo[r], xlo, hi[r], xhi); }
                }
            }
        }
        for (int t = 0; t < T; t++) { scale_add4(a[t], i[t], wsr, g, x[t].s[g]); }
    }
    for (int t = 0; t < T; t++) { store_sum4(out + t * os, q, a[t][0], a[t][1], a[t][2], a[t][3]); }
}
#define VEC_Q8(gs) ((gs) % 32 == 0)  // the group sizes the four-row q8_0 and q4 kernels take
#define VEC_Q4(gs) ((gs) % 64 == 0 || (gs) == 32)

#ifdef HAVE_VNNI
// Packed q8_0 and q4 (AVX-512 VNNI): a matrix's rows in blocks of 16, side by side in 4-byte units,
// so that one 64-byte load holds 4 bytes of each of 16 rows and one vpdpbusd against 4 bytes of x
// (broadcast) adds a row's partial int sum in each lane: no horizontal sums, and each load of the
// weights serves up to TILE_Q tokens. pack_block writes the layout once, when the model is loaded.
// Every (row, token) result is the same arithmetic whatever T: per group, the exact int sum, then
// one fma of it with w_scale * x_scale into the fp32 sum, group by group. So decode (T = 1) and a
// prompt's tiles give the same bits; the plain twin (dot_q8_plain, dot_q4_plain) rounds otherwise.
// fp32 matrices are packed too, 16 rows side by side a weight at a time (a 64-byte vector of weight k
// of the 16 rows): an fma against x[k] broadcast adds to 16 rows' sums, each row's sum one fma per k
// in k's order, the same whatever the number of tokens and blocks a call takes.
#define PACK_ROWS 16
#define PACKS(type, gs) ((type) == W_F32 || (((type) == W_Q8 || (type) == W_Q4) && (gs) % 4 == 0))
#define TILE_Q 8  // tokens per packed call

// bytes a packed row takes: fp32 4n; q8_0 its n bytes; q4 a 4-byte unit per 8 weights (n / 2 rounded up to 4)
static size_t packed_row_bytes(int type, int n) {
    return type == W_F32 ? 4 * (size_t)n : type == W_Q8 ? (size_t)n : ((size_t)n + 7) / 8 * 4;
}

// Rows r .. r + 15 of a matrix (n columns, group size gs) into dst in the packed layout: unit u of
// the 16 rows at dst + 64u, row i's 4 bytes at + 4i. q8_0: unit u is bytes 4u .. 4u + 3, each + 128
// (the unsigned operand of vpdpbusd). q4: unit u holds weights 8u .. 8u + 3 in its low nibbles and
// 8u + 4 .. 8u + 7 in its high ones (the stored nibbles, + 8; past n: 8). Scales: dst_s[g * 16 + i]
// = row i's of group g. src (row_bytes a row) and dst may be the same memory where the sizes agree.
static void pack_block(uint8_t *dst, float *dst_s, const uint8_t *src, const float *src_s, size_t row_bytes, int n,
                       int gs, int type) {
    if (type == W_F32) {  // dst[k * 16 + i] = row i's weight k
        float *w = xmalloc(16 * row_bytes), *d = (float *)(void *)dst;
        memcpy(w, src, 16 * row_bytes);
        for (int k = 0; k < n; k++) {
            for (int i = 0; i < 16; i++) { d[k * 16 + i] = w[(size_t)i * n + k]; }
        }
        free(w);
        return;
    }
    int ng = n / gs, half = gs / 2;
    size_t units = packed_row_bytes(type, n) / 4;
    uint8_t *w = xmalloc(16 * row_bytes), *wt = xmalloc((size_t)n + 8);
    float *s = xmalloc(16 * (size_t)ng * sizeof(float));
    memcpy(w, src, 16 * row_bytes);
    memcpy(s, src_s, 16 * (size_t)ng * sizeof(float));
    for (int i = 0; i < 16; i++) {
        const uint8_t *row = w + i * row_bytes;
        if (type == W_Q8) {
            for (size_t u = 0; u < units; u++) {
                uint32_t v;
                memcpy(&v, row + 4 * u, 4);
                v ^= 0x80808080u;
                memcpy(dst + 64 * u + 4 * i, &v, 4);
            }
            continue;
        }
        for (int g = 0; g < ng; g++) {  // the row's nibbles in weight order, then 8s
            for (int b = 0; b < half; b++) {
                wt[g * gs + b] = row[g * half + b] & 15, wt[g * gs + half + b] = row[g * half + b] >> 4;
            }
        }
        memset(wt + n, 8, 8);
        for (size_t u = 0; u < units; u++) {
            for (int j = 0; j < 4; j++) { dst[64 * u + 4 * i + j] = (uint8_t)(wt[8 * u + j] | wt[8 * u + 4 + j] << 4); }
        }
    }
    for (int g = 0; g < ng; g++) {
        for (int i = 0; i < 16; i++) { dst_s[g * 16 + i] = s[(size_t)i * ng + g]; }
    }
    free(w);
    free(wt);
    free(s);
}

// x's 4 bytes from q + i, in every lane
static inline __m512i x4(const int8_t *q, size_t i) {
    int32_t u;
    memcpy(&u, q + i, 4);
    return _mm512_set1_epi32(u);
}

// weights k .. k + 3 of the 16 rows of a packed block, unsigned (stored + 8 or + 128)
static inline __m512i unit16(const uint8_t *w, int k, int q4) {
    if (!q4) { return _mm512_loadu_si512(w + 16 * (size_t)k); }
    __m512i v = _mm512_loadu_si512(w + 64 * (size_t)(k / 8));
    return _mm512_and_si512(k % 8 ? _mm512_srli_epi16(v, 4) : v, _mm512_set1_epi8(15));
}

// Decode (one token): the same sums as matmul16_packed's T = 1, each group's int sum split over four
// registers: one chain of vpdpbusd waits on each add's latency, four run side by side. Int sums are
// exact, so the bits equal a prompt tile's. q4 weights are prefetched Q4_AHEAD bytes ahead (q8_0's
// prefetch did not help: dev/LOG.md).
#define Q4_AHEAD 4096
TILE_INLINE void matvec16_packed(float *out, const uint8_t *w, const float *ws, const Input *x, int n, int gs, int q4) {
    __m512 acc = _mm512_setzero_ps();
    for (int g = 0; g < n / gs; g++) {
        __m512i a = _mm512_set1_epi32((q4 ? -8 : -128) * x->sum[g]), b = _mm512_setzero_si512(), c = b, d = b;
        int k = g * gs, end = k + gs;
        for (; k + 16 <= end; k += 16) {
            if (q4) {  // the hardware prefetcher alone leaves one core's q4 stream short of its bandwidth
                const char *ahead = (const char *)w + 64 * (size_t)(k / 8) + Q4_AHEAD;
                _mm_prefetch(ahead, _MM_HINT_T0);
                _mm_prefetch(ahead + 64, _MM_HINT_T0);
            }
            a = _mm512_dpbusd_epi32(a, unit16(w, k, q4), x4(x->q, k));
            b = _mm512_dpbusd_epi32(b, unit16(w, k + 4, q4), x4(x->q, k + 4));
            c = _mm512_dpbusd_epi32(c, unit16(w, k + 8, q4), x4(x->q, k + 8));
            d = _mm512_dpbusd_epi32(d, unit16(w, k + 12, q4), x4(x->q, k + 12));
        }
        for (; k < end; k += 4) { a = _mm512_dpbusd_epi32(a, unit16(w, k, q4), x4(x->q, k)); }
        __m512i is = _mm512_add_epi32(_mm512_add_epi32(a, b), _mm512_add_epi32(c, d));
        __m512 s = _mm512_mul_ps(_mm512_loadu_ps(ws + (size_t)g * 16), _mm512_set1_ps(x->s[g]));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is), s, acc);
    }
    _mm512_storeu_ps(out, acc);
}

// out[t * os + i] = row i of a packed block (w, ws) times x[t], for T tokens
TILE_INLINE void matmul16_packed(float *out, size_t os, const uint8_t *w, const float *ws, const Input *x, int T, int n,
                                 int gs, int q4) {
    int ng = n / gs;
    __m512 acc[TILE_Q];
    for (int t = 0; t < T; t++) { acc[t] = _mm512_setzero_ps(); }
    for (int g = 0; g < ng; g++) {
        // the int sums start at minus what the stored offset adds: 8 (q4) or 128 (q8_0) times sum(x)
        __m512i is[TILE_Q];
        for (int t = 0; t < T; t++) { is[t] = _mm512_set1_epi32((q4 ? -8 : -128) * x[t].sum[g]); }
        for (int k = g * gs; k < (g + 1) * gs; k += 4) {  // weights k .. k + 3 of each row
            __m512i v = unit16(w, k, q4);
            for (int t = 0; t < T; t++) { is[t] = _mm512_dpbusd_epi32(is[t], v, x4(x[t].q, k)); }
        }
        __m512 s = _mm512_loadu_ps(ws + (size_t)g * 16);
        for (int t = 0; t < T; t++) {
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(is[t]), _mm512_mul_ps(s, _mm512_set1_ps(x[t].s[g])), acc[t]);
        }
    }
    for (int t = 0; t < T; t++) { _mm512_storeu_ps(out + t * os, acc[t]); }
}

// fp32: B blocks of 16 rows (bs floats apart) for T tokens, B * T <= 8 sums in registers
TILE_INLINE void matmul16_f32_packed(float *out, size_t os, const float *w, size_t bs, int B, const Input *x, int T,
                                     int n) {
    __m512 acc[8];
    for (int i = 0; i < B * T; i++) { acc[i] = _mm512_setzero_ps(); }
    for (int k = 0; k < n; k++) {
        for (int b = 0; b < B; b++) {
            __m512 v = _mm512_loadu_ps(w + b * bs + 16 * (size_t)k);
            for (int t = 0; t < T; t++) { acc[b * T + t] = _mm512_fmadd_ps(v, _mm512_set1_ps(x[t].f[k]), acc[b * T + t]); }
        }
    }
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) { _mm512_storeu_ps(out + t * os + 16 * b, acc[b * T + t]); }
    }
}

// fp32 rows [r0, r1): a block at a time (one stream of weights: decoding is memory-bound); a prompt's
// tokens eight at a time, and its last few four or one at a time on two blocks
static int matmul_packed_f32(float *out, size_t os, Mat m, const Input *x, int nt, int n, int r0, int r1) {
    size_t bs = 16 * (size_t)n;
    for (; r0 + 16 <= r1;) {
        const float *w = (const float *)m.pw + (size_t)r0 * n;
        int B = r1 - r0 >= 32 && nt > 1 && nt < TILE_Q ? 2 : 1, t = 0;
        for (; B == 1 && t + TILE_Q <= nt; t += TILE_Q) { matmul16_f32_packed(out + t * os + r0, os, w, bs, 1, x + t, TILE_Q, n); }
        for (; t + 4 <= nt; t += 4) {
            if (B == 2) { matmul16_f32_packed(out + t * os + r0, os, w, bs, 2, x + t, 4, n); }
            else { matmul16_f32_packed(out + t * os + r0, os, w, bs, 1, x + t, 4, n); }
        }
        for (; t < nt; t++) {
            if (B == 2) { matmul16_f32_packed(out + t * os + r0, os, w, bs, 2, x + t, 1, n); }
            else { matmul16_f32_packed(out + t * os + r0, os, w, bs, 1, x + t, 1, n); }
        }
        r0 += 16 * B;
    }
    return r0;
}

// rows [r0, r1) of a packed matrix for nt tokens, r0 a multiple of 16; returns the first row it left
// (the rows past the last full block are stored unpacked)
static int matmul_packed(float *out, size_t os, Mat m, const Input *x, int nt, int n, int r0, int r1, int gs) {
    if (m.type == W_F32) { return matmul_packed_f32(out, os, m, x, nt, n, r0, r1); }
    int q4 = m.type == W_Q4;
    size_t row_bytes = packed_row_bytes(m.type, n), ng = n / gs;
    for (; r0 + 16 <= r1; r0 += 16) {
        const uint8_t *w = (const uint8_t *)m.pw + r0 * row_bytes;
        const float *ws = m.ps + r0 * ng;
        int t = 0;
        for (; t + TILE_Q <= nt; t += TILE_Q) {
            if (q4) { matmul16_packed(out + t * os + r0, os, w, ws, x + t, TILE_Q, n, gs, 1); }
            else { matmul16_packed(out + t * os + r0, os, w, ws, x + t, TILE_Q, n, gs, 0); }
        }
        for (; t < nt; t++) {
            if (q4) { matvec16_packed(out + t * os + r0, w, ws, x + t, n, gs, 1); }
            else { matvec16_packed(out + t * os + r0, w, ws, x + t, n, gs, 0); }
        }
    }
    return r0;
}
#endif

// Group sizes 4, 8 and 16 (stories260K's 4: no larger one divides its hidden_dim 172) go one row at
// a time: a 32-weight chunk holds 32/gs groups of gs/4 int32 lanes each, so each lane is scaled by
// its own group's scales, spread over the lanes by a permute.
#define SMALL_GROUPS(gs) ((gs) == 4 || (gs) == 8 || (gs) == 16)

// 32 weights in order from 16 bytes of q4 with group size 4, 8 or 16, as signed bytes: byte k of a
// group holds weight k in its low nibble and weight k + gs/2 in its high one, so interleaving the low
// and the high nibbles in units of gs/2 bytes puts every group back in order
static inline __m256i q4_unpack_small(const uint8_t *p, int gs) {
    const __m128i m4 = _mm_set1_epi8(15);
    __m128i b = _mm_loadu_si128((const __m128i *)p), lo = _mm_and_si128(b, m4), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m4);
    __m128i first = gs == 4 ? _mm_unpacklo_epi16(lo, hi) : gs == 8 ? _mm_unpacklo_epi32(lo, hi) : _mm_unpacklo_epi64(lo, hi);
    __m128i second = gs == 4 ? _mm_unpackhi_epi16(lo, hi) : gs == 8 ? _mm_unpackhi_epi32(lo, hi) : _mm_unpackhi_epi64(lo, hi);
    return _mm256_sub_epi8(_mm256_set_m128i(second, first), _mm256_set1_epi8(8));
}

// one row of q8_0 (q4 = 0) or q4 (q4 = 1) with small groups: the int8 products as |w| times x with
// w's sign (see dot_u8s8); the weights past the last whole chunk go through the plain twins
static float dot_small_groups(const void *w, int q4, const float *ws, const Input *x, int n, int gs) {
    const __m256i spread = _mm256_srli_epi32(_mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28), gs == 4 ? 2 : gs == 8 ? 3 : 4);
    __m256 acc = _mm256_setzero_ps();
    int per_chunk = 32 / gs, j = 0, g = 0;
    for (; j + 32 <= n; j += 32, g += per_chunk) {
        __m256i wv = q4 ? q4_unpack_small((const uint8_t *)w + j / 2, gs) : _mm256_loadu_si256((const __m256i *)((const int8_t *)w + j));
        __m256i xv = _mm256_loadu_si256((const __m256i *)(x->q + j));
        __m256i isum = dot_u8s8(_mm256_setzero_si256(), _mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv));
        // two scales (gs 16) come by an 8-byte load: a row's scales need not be 8-byte aligned, as
        // _mm_load_sd's double would have to be
        __m128 s4 = per_chunk == 2 ? _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(ws + g))) : _mm_loadu_ps(ws + g);
        __m128 x4 = per_chunk == 2 ? _mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(x->s + g))) : _mm_loadu_ps(x->s + g);
        __m256 sc = _mm256_castps128_ps256(_mm_mul_ps(s4, x4));  // the chunk's first 4 groups' scales
        if (per_chunk == 8) { sc = _mm256_mul_ps(_mm256_loadu_ps(ws + g), _mm256_loadu_ps(x->s + g)); }
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_permutevar8x32_ps(sc, spread), acc);
    }
    Input rest = *x;
    rest.q += j, rest.s += g;
    return hsum8(acc) + (q4 ? dot_q4_plain((const uint8_t *)w + j / 2, ws + g, &rest, n - j, gs)
                            : dot_q8_plain((const int8_t *)w + j, ws + g, &rest, n - j, gs));
}

#ifdef HAVE_VNNI
// one row of q8_0 with small groups: vpdpbusd of the flipped weights (see matmul4_q8), the last chunk
// masked when n is not a multiple of 32
static float dot_q8_small(const int8_t *w, const float *ws, const Input *x, int n, int gs) {
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    const __m256i spread = _mm256_srli_epi32(_mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28), gs == 4 ? 2 : gs == 8 ? 3 : 4);
    __m256 acc = _mm256_setzero_ps();
    int per_chunk = 32 / gs, ng = n / gs;
    for (int j = 0, g = 0; j < n; j += 32, g += per_chunk) {
        __mmask32 m = n - j >= 32 ? 0xFFFFFFFFu : (__mmask32)((1u << (n - j)) - 1);
        __mmask8 mg = ng - g >= 8 ? 0xFF : (__mmask8)((1u << (ng - g)) - 1);
        __m256i wu = _mm256_xor_si256(_mm256_maskz_loadu_epi8(m, w + j), flip);  // masked bytes: 128 * 0
        __m256i isum = _mm256_dpbusd_epi32(_mm256_loadu_si256((const __m256i *)(x->corr + (j / 32) * 8)), wu,
                                           _mm256_maskz_loadu_epi8(m, x->q + j));
        __m256 sc = _mm256_mul_ps(_mm256_maskz_loadu_ps(mg, ws + g), _mm256_maskz_loadu_ps(mg, x->s + g));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_permutexvar_ps(spread, sc), acc);
    }
    return hsum8(acc);
}
#else
static float dot_q8_small(const int8_t *w, const float *ws, const Input *x, int n, int gs) {
    return dot_small_groups(w, 0, ws, x, n, gs);
}
#endif

// rows [r0, r1) of a q8_0 or q4 matrix with small groups
static void matmul_rows_small(float *out, Mat m, const Input *x, int n, int r0, int r1, int gs) {
    size_t ng = n / gs, rb = m.type == W_Q4 ? n / 2 : n;  // rb: bytes per row
    for (int r = r0; r < r1; r++) {
        const void *w = (const uint8_t *)m.w + r * rb;
        out[r] = m.type == W_Q4 ? dot_small_groups(w, 1, m.s + r * ng, x, n, gs) : dot_q8_small(w, m.s + r * ng, x, n, gs);
    }
}
#endif

// ----------------------------------------------------------------------------
// The 4-lane families: ARM NEON (+ dot product) and WebAssembly SIMD128. Each defines the ops its
// kernels are written in (V4: 4 fp32 lanes, I4: 4 int32 lanes, B16: 16 int8 lanes, XQ: 16 bytes of
// a quantised x in the form dot16 takes); the kernels themselves, four rows at a time as the x86
// ones, are written once below for both.

#ifdef HAVE_NEON
typedef float32x4_t V4;
typedef int32x4_t I4;
typedef int8x16_t B16;
typedef int8x16_t XQ;
static inline V4 v4_set1(float f) { return vdupq_n_f32(f); }
static inline V4 v4_load(const float *p) { return vld1q_f32(p); }
static inline V4 v4_load_bf16(const uint16_t *p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }
static inline V4 v4_from_f16(const uint16_t *p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
static inline void v4_store(float *p, V4 a) { vst1q_f32(p, a); }
static inline V4 v4_fma(V4 a, V4 b, V4 c) { return vfmaq_f32(c, a, b); }  // a * b + c
static inline V4 v4_mul(V4 a, V4 b) { return vmulq_f32(a, b); }
static inline V4 v4_add(V4 a, V4 b) { return vaddq_f32(a, b); }
static inline V4 v4_lane0(float t) { return vsetq_lane_f32(t, vdupq_n_f32(0), 0); }  // (t, 0, 0, 0)
static inline V4 i4_to_v4(I4 a) { return vcvtq_f32_s32(a); }
static inline I4 i4_zero(void) { return vdupq_n_s32(0); }
static inline B16 b16_load(const void *p) { return vld1q_s8(p); }
static inline XQ xq_load(const int8_t *p) { return vld1q_s8(p); }
static inline B16 nibbles_lo(B16 w) { return vsubq_s8(vandq_s8(w, vdupq_n_s8(15)), vdupq_n_s8(8)); }  // minus 8
static inline B16 nibbles_hi(B16 w) {
    return vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(vreinterpretq_u8_s8(w), 4)), vdupq_n_s8(8));
}

// acc + the dot products of signed bytes a and x, 4 bytes per int32 lane
static inline I4 dot16(I4 acc, B16 a, XQ x) {
#ifdef HAVE_DOTPROD
    return vdotq_s32(acc, a, x);
#else
    // the same lane sums: products widened to int16 (|a x| <= 128 * 127), pairs added into int32
    int16x8_t lo = vmull_s8(vget_low_s8(a), vget_low_s8(x)), hi = vmull_high_s8(a, x);
    return vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi)));
#endif
}

// out[0], out[q], out[2q], out[3q] = the lane sums of a, b, c, d
static inline void store_sum4_4lanes(float *out, size_t q, V4 a, V4 b, V4 c, V4 d) {
    float32x4_t abcd = vpaddq_f32(vpaddq_f32(a, b), vpaddq_f32(c, d));
    out[0] = vgetq_lane_f32(abcd, 0), out[q] = vgetq_lane_f32(abcd, 1);
    out[2 * q] = vgetq_lane_f32(abcd, 2), out[3 * q] = vgetq_lane_f32(abcd, 3);
}
#endif

// SIMD128 is the fixed-width vector set every browser engine runs: 4 fp32 lanes with a separate
// multiply and add (no fma: products are rounded before they are summed, as in the plain twins), and
// int8 only as far as widening to int16 and pair products into int32 (i32x4.dot_i16x8_s, which
// engines lower to pmaddwd on x86), so x is widened once per load for the four rows.
#ifdef HAVE_WASM
typedef v128_t V4;
typedef v128_t I4;
typedef v128_t B16;
typedef struct { v128_t lo, hi; } XQ;  // the 16 bytes widened to int16: bytes 0..7, 8..15
static inline V4 v4_set1(float f) { return wasm_f32x4_splat(f); }
static inline V4 v4_load(const float *p) { return wasm_v128_load(p); }
static inline V4 v4_load_bf16(const uint16_t *p) { return wasm_i32x4_shl(wasm_u32x4_load16x4(p), 16); }
// 4 halves to fp32, exactly as f16_to_f32: exponent and mantissa moved into fp32's places and scaled
// by 2^112, which rebiases the exponent and turns subnormal halves into their values; infinities and
// NaNs get fp32's all-ones exponent; then the sign
static inline V4 v4_from_f16(const uint16_t *p) {
    v128_t h = wasm_u32x4_load16x4(p);
    v128_t em = wasm_i32x4_shl(wasm_v128_and(h, wasm_i32x4_splat(0x7FFF)), 13);
    v128_t f = wasm_f32x4_mul(em, wasm_f32x4_splat(0x1p112f));
    v128_t special = wasm_i32x4_eq(wasm_v128_and(h, wasm_i32x4_splat(0x7C00)), wasm_i32x4_splat(0x7C00));
    f = wasm_v128_bitselect(wasm_v128_or(em, wasm_i32x4_splat(0x7F800000)), f, special);
    return wasm_v128_or(f, wasm_i32x4_shl(wasm_v128_and(h, wasm_i32x4_splat(0x8000)), 16));
}
static inline void v4_store(float *p, V4 a) { wasm_v128_store(p, a); }
static inline V4 v4_fma(V4 a, V4 b, V4 c) { return wasm_f32x4_add(wasm_f32x4_mul(a, b), c); }  // rounded twice
static inline V4 v4_mul(V4 a, V4 b) { return wasm_f32x4_mul(a, b); }
static inline V4 v4_add(V4 a, V4 b) { return wasm_f32x4_add(a, b); }
static inline V4 v4_lane0(float t) { return wasm_f32x4_make(t, 0.0f, 0.0f, 0.0f); }
static inline V4 i4_to_v4(I4 a) { return wasm_f32x4_convert_i32x4(a); }
static inline I4 i4_zero(void) { return wasm_i32x4_splat(0); }
static inline B16 b16_load(const void *p) { return wasm_v128_load(p); }
static inline XQ xq_load(const int8_t *p) {
    v128_t v = wasm_v128_load(p);
    return (XQ){wasm_i16x8_extend_low_i8x16(v), wasm_i16x8_extend_high_i8x16(v)};
}
static inline B16 nibbles_lo(B16 w) { return wasm_i8x16_sub(wasm_v128_and(w, wasm_i8x16_splat(15)), wasm_i8x16_splat(8)); }
static inline B16 nibbles_hi(B16 w) { return wasm_i8x16_sub(wasm_u8x16_shr(w, 4), wasm_i8x16_splat(8)); }

// acc + the dot products of signed bytes a and x: int16 pair products summed into 4 int32 lanes
static inline I4 dot16(I4 acc, B16 a, XQ x) {
    v128_t lo = wasm_i32x4_dot_i16x8(wasm_i16x8_extend_low_i8x16(a), x.lo);
    v128_t hi = wasm_i32x4_dot_i16x8(wasm_i16x8_extend_high_i8x16(a), x.hi);
    return wasm_i32x4_add(acc, wasm_i32x4_add(lo, hi));
}

// out[0], out[q], out[2q], out[3q] = the lane sums of a, b, c, d: two rounds of pairing lanes
static inline void store_sum4_4lanes(float *out, size_t q, V4 a, V4 b, V4 c, V4 d) {
    v128_t ab = wasm_f32x4_add(wasm_i32x4_shuffle(a, b, 0, 4, 1, 5), wasm_i32x4_shuffle(a, b, 2, 6, 3, 7));
    v128_t cd = wasm_f32x4_add(wasm_i32x4_shuffle(c, d, 0, 4, 1, 5), wasm_i32x4_shuffle(c, d, 2, 6, 3, 7));
    v128_t abcd = wasm_f32x4_add(wasm_i32x4_shuffle(ab, cd, 0, 1, 4, 5), wasm_i32x4_shuffle(ab, cd, 2, 3, 6, 7));
    out[0] = wasm_f32x4_extract_lane(abcd, 0), out[q] = wasm_f32x4_extract_lane(abcd, 1);
    out[2 * q] = wasm_f32x4_extract_lane(abcd, 2), out[3 * q] = wasm_f32x4_extract_lane(abcd, 3);
}
#endif

#if defined(HAVE_NEON) || defined(HAVE_WASM)
// Tile kernels as on x86 (see TILE_T): four rows for T tokens, each load of the weights serving the
// T tokens, each (row, token) sum in the lanes and order of T = 1.

// rows of n fp32 or bf16 weights: two accumulators per row against the fma (or add) latency; the
// last n % 8 columns are summed in scalar code and added to lane 0 before the rows are reduced
#define F32_ROWS_4LANES(LOAD, TO_F32, wt)                                                           \
    V4 s[TILE_T][8];                                                                                \
    for (int t = 0; t < T; t++) { for (int r = 0; r < 8; r++) { s[t][r] = v4_set1(0.0f); } }        \
    const wt *wr[4] = {w, w + q * n, w + 2 * q * n, w + 3 * q * n};                                 \
    int j = 0;                                                                                      \
    for (; j + 8 <= n; j += 8) {                                                                    \
        for (int r = 0; r < 4; r++) {                                                               \
            V4 w0 = LOAD(wr[r] + j), w1 = LOAD(wr[r] + j + 4);                                      \
            for (int t = 0; t < T; t++) {                                                           \
                s[t][r] = v4_fma(w0, v4_load(x[t].f + j), s[t][r]);                                 \
                s[t][r + 4] = v4_fma(w1, v4_load(x[t].f + j + 4), s[t][r + 4]);                     \
            }                                                                                       \
        }                                                                                           \
    }                                                                                               \
    for (int t = 0; t < T; t++) {                                                                   \
        for (int r = 0; r < 4; r++) {                                                               \
            float tail = 0.0f;                                                                      \
            for (int k = j; k < n; k++) { tail += TO_F32(wr[r][k]) * x[t].f[k]; }                   \
            s[t][r] = v4_add(v4_add(s[t][r], s[t][r + 4]), v4_lane0(tail));                         \
        }                                                                                           \
        store_sum4_4lanes(out + t * os, q, s[t][0], s[t][1], s[t][2], s[t][3]);                     \
    }

#define AS_F32(v) (v)

TILE_INLINE void matmul4_f32(float *out, size_t os, const float *w, const Input *x, int T, int n, size_t q) {
    F32_ROWS_4LANES(v4_load, AS_F32, float)
}

TILE_INLINE void matmul4_bf16(float *out, size_t os, const uint16_t *w, const Input *x, int T, int n, size_t q) {
    F32_ROWS_4LANES(v4_load_bf16, bf16_to_f32, uint16_t)
}
#undef F32_ROWS_4LANES
#undef AS_F32

// q8_0 (gs % 16 == 0) and q4 (gs % 32 == 0): the group's int sums in 4 lanes, then one scale
// multiply per group; q4's nibbles minus 8 are signed bytes, so it needs no correction
TILE_INLINE void matmul4_q_4lanes(float *out, size_t os, const void *w, const float *ws, const Input *x, int T, int n,
                                  int gs, size_t q, int q4) {
    int ng = n / gs;
    size_t row_bytes = q4 ? (size_t)n / 2 : (size_t)n;
    const uint8_t *wr[4];
    const float *wsr[4];
    for (int r = 0; r < 4; r++) { wr[r] = (const uint8_t *)w + r * q * row_bytes, wsr[r] = ws + r * q * ng; }
    V4 acc[TILE_T][4];
    for (int t = 0; t < T; t++) { for (int r = 0; r < 4; r++) { acc[t][r] = v4_set1(0.0f); } }
    for (int g = 0; g < ng; g++) {
        size_t xo = (size_t)g * gs;
        I4 isum[TILE_T][4];
        for (int t = 0; t < T; t++) { for (int r = 0; r < 4; r++) { isum[t][r] = i4_zero(); } }
        if (q4) {
            int half = gs / 2;
            for (int b = 0; b < half; b += 16) {
                for (int r = 0; r < 4; r++) {
                    B16 wv = b16_load(wr[r] + (size_t)g * half + b), lo = nibbles_lo(wv), hi = nibbles_hi(wv);
                    for (int t = 0; t < T; t++) {
                        isum[t][r] = dot16(dot16(isum[t][r], lo, xq_load(x[t].q + xo + b)), hi, xq_load(x[t].q + xo + half + b));
                    }
                }
            }
        } else {
            for (int j = 0; j < gs; j += 16) {
                for (int r = 0; r < 4; r++) {
                    B16 wv = b16_load(wr[r] + xo + j);
                    for (int t = 0; t < T; t++) { isum[t][r] = dot16(isum[t][r], wv, xq_load(x[t].q + xo + j)); }
                }
            }
        }
        for (int t = 0; t < T; t++) {
            float xs = x[t].s[g];
            for (int r = 0; r < 4; r++) { acc[t][r] = v4_fma(i4_to_v4(isum[t][r]), v4_set1(wsr[r][g] * xs), acc[t][r]); }
        }
    }
    for (int t = 0; t < T; t++) { store_sum4_4lanes(out + t * os, q, acc[t][0], acc[t][1], acc[t][2], acc[t][3]); }
}

TILE_INLINE void matmul4_q8(float *out, size_t os, const uint8_t *w, const float *ws, const Input *x, int T, int n, int gs,
                            size_t q, int q6) {  // q6: always 0 here (KEEPS_Q6)
    (void)q6;
    matmul4_q_4lanes(out, os, w, ws, x, T, n, gs, q, 0);
}

TILE_INLINE void matmul4_q4(float *out, size_t os, const uint8_t *w, const float *ws, const Input *x, int T, int n,
                            int gs, size_t q) {
    matmul4_q_4lanes(out, os, w, ws, x, T, n, gs, q, 1);
}
#define VEC_Q8(gs) ((gs) % 16 == 0)
#define VEC_Q4(gs) ((gs) % 32 == 0)
#endif
#ifdef HAVE_VBMI
#define KEEPS_Q6(gs) VEC_Q8(gs)  // q4 files' q6 classifier stays in 6 bits (matmul4_q8)
#else
#define KEEPS_Q6(gs) ((void)(gs), 0)  // expanded to q8_0 at load (expand_q6)
#endif

#ifndef PACK_ROWS  // this build reads every matrix row-major
#define PACK_ROWS 0
#define PACKS(type, gs) ((void)(type), (void)(gs), 0)
static size_t packed_row_bytes(int type, int n) { (void)type; return (size_t)n; }
static void pack_block(uint8_t *dst, float *dst_s, const uint8_t *src, const float *src_s, size_t row_bytes, int n,
                       int gs, int type) {
    (void)dst, (void)dst_s, (void)src, (void)src_s, (void)row_bytes, (void)n, (void)gs, (void)type;
}
#endif

// ----------------------------------------------------------------------------
// matmul inputs: what the vector kernels read besides the forms of x prepare_input_plain makes

#ifdef HAVE_BF16
static uint16_t bf16_round(float f) {  // round to nearest even; activations are finite
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
#endif

#ifdef HAVE_AVX512
// q = x * inv rounded half away from zero, as prepare_input_plain rounds, 16 lanes into 16 bytes
static inline void quantise16(int8_t *q, __m512 v, __m512 inv, __mmask16 m) {
    v = _mm512_mul_ps(v, inv);
    __mmask16 neg = _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_LT_OQ);
    v = _mm512_add_ps(v, _mm512_mask_blend_ps(neg, _mm512_set1_ps(0.5f), _mm512_set1_ps(-0.5f)));
    _mm_mask_storeu_epi8(q, m, _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(v)));
}

// prepare_input_plain's q and s, 16 values at a time, for group sizes that are multiples of 16, or 4
// and 8 (a group's max|x| spread over its lanes by permutes): the same operations on each value, so
// the same bits. Returns 0 for other group sizes (and n % 16 != 0 but for groups of 4 and 8).
static int quantise_input(Input *in, const float *x, int n, int gs) {
    const __m512 zero = _mm512_setzero_ps();
    if (gs % 16 == 0) {
        for (int g = 0; g < n / gs; g++) {
            const float *xg = x + (size_t)g * gs;
            __m512 mx = zero;
            for (int j = 0; j < gs; j += 16) { mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_loadu_ps(xg + j))); }
            float scale = _mm512_reduce_max_ps(mx) / 127.0f, inv = scale > 0 ? 1.0f / scale : 0.0f;
            in->s[g] = scale;
            for (int j = 0; j < gs; j += 16) { quantise16(in->q + (size_t)g * gs + j, _mm512_loadu_ps(xg + j), _mm512_set1_ps(inv), 0xFFFF); }
        }
        return 1;
    }
    if (gs != 4 && gs != 8) { return 0; }
    __mmask16 firsts = gs == 4 ? 0x1111 : 0x0101;  // the lanes that start a group
    for (int j = 0; j < n; j += 16) {
        __mmask16 m = n - j >= 16 ? 0xFFFF : (__mmask16)((1u << (n - j)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(m, x + j), a = _mm512_abs_ps(v);
        a = _mm512_max_ps(a, _mm512_permute_ps(a, 0xB1));  // lanes 0 1 2 3 -> 1 0 3 2
        a = _mm512_max_ps(a, _mm512_permute_ps(a, 0x4E));  // -> 2 3 0 1
        if (gs == 8) { a = _mm512_max_ps(a, _mm512_shuffle_f32x4(a, a, 0xB1)); }  // 128-bit halves swapped
        __m512 scale = _mm512_div_ps(a, _mm512_set1_ps(127.0f));
        __m512 inv = _mm512_maskz_div_ps(_mm512_cmp_ps_mask(scale, zero, _CMP_GT_OQ), _mm512_set1_ps(1.0f), scale);
        // compressed in a register and stored: vcompressps to memory is microcoded on AMD's Zen 4
        __mmask16 f = firsts & m;
        _mm512_mask_storeu_ps(in->s + j / gs, (__mmask16)((1u << __builtin_popcount(f)) - 1), _mm512_maskz_compress_ps(f, scale));
        quantise16(in->q + j, v, inv, m);
    }
    return 1;
}
#endif

static void prepare_input(Input *in, const float *x, int n, const Config *c) {
#ifdef HAVE_AVX512
    if (quantised(c) && quantise_input(in, x, n, c->group_size)) { in->f = x; }
    else { prepare_input_plain(in, x, n, c); }
#else
    prepare_input_plain(in, x, n, c);
#endif
#ifdef HAVE_AVX2
    if (quantised(c)) {  // for matmul4_q4 and the packed kernels
        int gs = c->group_size;
        for (int g = 0; g < n / gs; g++) {
            int32_t sum = 0;
            for (int j = g * gs; j < (g + 1) * gs; j++) { sum += in->q[j]; }
            in->sum[g] = sum;
        }
    }
#endif
#ifdef HAVE_VNNI
    if (quantised(c)) {  // q4 files too: their classifier is q8_0
        // for matmul4_q8 and dot_q8_small: lane k of a 32-byte chunk covers bytes 4k..4k+3; a group's
        // lane k gets -128 times the sum of those bytes over the group's chunks (vpdpbusd of bytes 128 and q)
        int span = c->group_size > 32 ? c->group_size : 32;
        const __m256i c128 = _mm256_set1_epi8((char)0x80);
        for (int j = 0; j < n; j += span) {
            __m256i sum = _mm256_setzero_si256();
            for (int i = j; i < j + span && i < n; i += 32) {
                __mmask32 m = n - i >= 32 ? 0xFFFFFFFFu : (__mmask32)((1u << (n - i)) - 1);
                sum = _mm256_dpbusd_epi32(sum, c128, _mm256_maskz_loadu_epi8(m, in->q + i));
            }
            _mm256_storeu_si256((__m256i *)(in->corr + (j / span) * 8), _mm256_sub_epi32(_mm256_setzero_si256(), sum));
        }
    }
#endif
#ifdef HAVE_BF16
    if (c->wtype == W_BF16) {  // for matmul4_bf16
        for (int j = 0; j < n; j++) {
            uint16_t hi = bf16_round(x[j]);
            in->hi[j] = hi;
            in->lo[j] = bf16_round(x[j] - bf16_to_f32(hi));
        }
    }
#endif
}

// ----------------------------------------------------------------------------
// the matmul dispatchers: the four-row kernel of the weight type where this build has one for its
// group size, else the small-group kernels or the plain twin, row by row. matmul_rows: one input
// (a decoded token); matmul_tokens: nt inputs (a prompt's tokens), outputs os floats apart.

// Four-row kernels take rows r, r+q, r+2q, r+3q for r in the first quarter; the rows past 4q (at
// most 3) go through them with q = 0. FOUR_ROWS makes those calls from one call site, so that the
// compiler inlines the kernel.
#define FOUR_ROWS(r0, r1, ROW, STRIDE, CALL)                                                          \
    for (int k_ = 0, q_ = ((r1) - (r0)) / 4; k_ < q_ + ((r1) - (r0)) % 4; k_++) {                     \
        int ROW = k_ < q_ ? (r0) + k_ : (r0) + 3 * q_ + k_;                                           \
        size_t STRIDE = k_ < q_ ? (size_t)q_ : 0;                                                     \
        CALL;                                                                                         \
    }
#if defined(HAVE_AVX2) || defined(HAVE_NEON) || defined(HAVE_WASM)
// T tokens (a constant where it is inlined) through the tile kernels
TILE_INLINE void matmul_tile(float *out, size_t os, Mat m, const Input *x, int T, int n, int r0, int r1, int gs) {
    if (m.type == W_F32) {
        const float *w = m.w;
        FOUR_ROWS(r0, r1, i, q, matmul4_f32(out + i, os, w + (size_t)i * n, x, T, n, q))
    } else if (m.type == W_BF16) {
        const uint16_t *w = m.w;
        FOUR_ROWS(r0, r1, i, q, matmul4_bf16(out + i, os, w + (size_t)i * n, x, T, n, q))
    } else if (m.type == W_Q8 && VEC_Q8(gs)) {
        const uint8_t *w = m.w;
        size_t ng = n / gs;
        FOUR_ROWS(r0, r1, i, q, matmul4_q8(out + i, os, w + (size_t)i * n, m.s + i * ng, x, T, n, gs, q, 0))
#ifdef HAVE_VBMI
    } else if (m.type == W_Q6) {  // only where KEEPS_Q6(gs)
        const uint8_t *w = m.w;
        size_t ng = n / gs, rb = (size_t)n / 4 * 3;
        FOUR_ROWS(r0, r1, i, q, matmul4_q8(out + i, os, w + i * rb, m.s + i * ng, x, T, n, gs, q, 1))
#endif
    } else if (m.type == W_Q4 && VEC_Q4(gs)) {
        const uint8_t *w = m.w;
        size_t ng = n / gs, rb = n / 2;  // rb: bytes per row
        FOUR_ROWS(r0, r1, i, q, matmul4_q4(out + i, os, w + i * rb, m.s + i * ng, x, T, n, gs, q))
    } else {
        for (int t = 0; t < T; t++) {
#ifdef HAVE_AVX2
            if (SMALL_GROUPS(gs)) { matmul_rows_small(out + t * os, m, &x[t], n, r0, r1, gs); continue; }
#endif
            matmul_rows_plain(out + t * os, m, &x[t], n, r0, r1, gs);
        }
    }
}

static void matmul_rows(float *out, Mat m, const Input *x, int n, int r0, int r1, int gs) {
#ifdef HAVE_VNNI
    if (m.pw) { r0 = matmul_packed(out, 0, m, x, 1, n, r0, r1, gs); }
#endif
    matmul_tile(out, 0, m, x, 1, n, r0, r1, gs);
}

static void matmul_tokens(float *out, size_t os, Mat m, const Input *x, int nt, int n, int r0, int r1, int gs) {
    (void)matmul_tokens_plain;  // the twin, which this build does not call
#ifdef HAVE_VNNI
    if (m.pw) { r0 = matmul_packed(out, os, m, x, nt, n, r0, r1, gs); }
#endif
    int t = 0;
    for (; t + TILE_T <= nt; t += TILE_T) { matmul_tile(out + t * os, os, m, x + t, TILE_T, n, r0, r1, gs); }
    for (; t < nt; t++) { matmul_tile(out + t * os, os, m, x + t, 1, n, r0, r1, gs); }
}
#else
static void matmul_rows(float *out, Mat m, const Input *x, int n, int r0, int r1, int gs) {
    matmul_rows_plain(out, m, x, n, r0, r1, gs);
}

static void matmul_tokens(float *out, size_t os, Mat m, const Input *x, int nt, int n, int r0, int r1, int gs) {
    matmul_tokens_plain(out, os, m, x, nt, n, r0, r1, gs);
}
#endif
#undef FOUR_ROWS

// ----------------------------------------------------------------------------
// attention over the KV cache tiles (twins: attention_scores_plain, attention_values_plain)
//
// V16: 16 fp32 lanes, a row of a cache tile: one AVX-512 register, two AVX2 ones, or four NEON or
// SIMD128 ones, so that the attention loops are written once for every vector build

#if defined(HAVE_AVX512)
#define HAVE_V16 1
typedef __m512 V16;
static inline V16 v16_set1(float f) { return _mm512_set1_ps(f); }
static inline V16 v16_load(const float *p) { return _mm512_loadu_ps(p); }
static inline V16 v16_load_f16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline void v16_store(float *p, V16 a) { _mm512_storeu_ps(p, a); }
static inline V16 v16_fma(V16 a, V16 b, V16 c) { return _mm512_fmadd_ps(a, b, c); }  // a * b + c
static inline V16 v16_mul(V16 a, V16 b) { return _mm512_mul_ps(a, b); }
static inline void v16_store_sum4(float *out, V16 a, V16 b, V16 c, V16 d) {  // out[0..3] = lane sums
    store_sum4(out, 1, lo_plus_hi(a), lo_plus_hi(b), lo_plus_hi(c), lo_plus_hi(d));
}
#elif defined(HAVE_AVX2)
#define HAVE_V16 1
typedef struct { __m256 lo, hi; } V16;  // lanes 0..7, 8..15
static inline V16 v16_set1(float f) { return (V16){_mm256_set1_ps(f), _mm256_set1_ps(f)}; }
static inline V16 v16_load(const float *p) { return (V16){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
static inline V16 v16_load_f16(const uint16_t *p) {
    return (V16){_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8)))};
}
static inline void v16_store(float *p, V16 a) { _mm256_storeu_ps(p, a.lo), _mm256_storeu_ps(p + 8, a.hi); }
static inline V16 v16_fma(V16 a, V16 b, V16 c) { return (V16){_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
static inline V16 v16_mul(V16 a, V16 b) { return (V16){_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
static inline void v16_store_sum4(float *out, V16 a, V16 b, V16 c, V16 d) {
    store_sum4(out, 1, _mm256_add_ps(a.lo, a.hi), _mm256_add_ps(b.lo, b.hi), _mm256_add_ps(c.lo, c.hi), _mm256_add_ps(d.lo, d.hi));
}
#elif defined(HAVE_NEON) || defined(HAVE_WASM)
#define HAVE_V16 1
typedef struct { V4 v[4]; } V16;  // lanes 0..3, 4..7, 8..11, 12..15
static inline V16 v16_set1(float f) { V4 a = v4_set1(f); return (V16){{a, a, a, a}}; }
static inline V16 v16_load(const float *p) { return (V16){{v4_load(p), v4_load(p + 4), v4_load(p + 8), v4_load(p + 12)}}; }
static inline V16 v16_load_f16(const uint16_t *p) {
    return (V16){{v4_from_f16(p), v4_from_f16(p + 4), v4_from_f16(p + 8), v4_from_f16(p + 12)}};
}
static inline void v16_store(float *p, V16 a) { for (int k = 0; k < 4; k++) { v4_store(p + 4 * k, a.v[k]); } }
static inline V16 v16_fma(V16 a, V16 b, V16 c) {
    for (int k = 0; k < 4; k++) { c.v[k] = v4_fma(a.v[k], b.v[k], c.v[k]); }
    return c;
}
static inline V16 v16_mul(V16 a, V16 b) {
    for (int k = 0; k < 4; k++) { a.v[k] = v4_mul(a.v[k], b.v[k]); }
    return a;
}
static inline V4 v16_quarters(V16 a) { return v4_add(v4_add(a.v[0], a.v[1]), v4_add(a.v[2], a.v[3])); }
static inline void v16_store_sum4(float *out, V16 a, V16 b, V16 c, V16 d) {
    store_sum4_4lanes(out, 1, v16_quarters(a), v16_quarters(b), v16_quarters(c), v16_quarters(d));
}
#endif

#ifdef HAVE_V16
// row i of a cache (16 elements from index i), fp32 or fp16 (exact in fp32)
static inline V16 cache_load16(const void *cache, size_t i, int f16) {
    return f16 ? v16_load_f16((const uint16_t *)cache + i) : v16_load((const float *)cache + i);
}

static void attention_scores(float *att, const float *q, const void *kc, size_t at, int nb, int hs, int f16, float scale) {
    (void)attention_scores_plain;  // the twin, which this build does not call
    size_t tile = (size_t)hs * 16;
    int b = 0;
    for (; b + 4 <= nb; b += 4) {  // four tiles at a time against the fma latency
        size_t k0 = at + b * tile;
        V16 a0 = v16_set1(0.0f), a1 = v16_set1(0.0f), a2 = v16_set1(0.0f), a3 = v16_set1(0.0f);
        for (int i = 0; i < hs; i++) {
            V16 qi = v16_set1(q[i]);
            a0 = v16_fma(qi, cache_load16(kc, k0 + i * 16, f16), a0);
            a1 = v16_fma(qi, cache_load16(kc, k0 + tile + i * 16, f16), a1);
            a2 = v16_fma(qi, cache_load16(kc, k0 + 2 * tile + i * 16, f16), a2);
            a3 = v16_fma(qi, cache_load16(kc, k0 + 3 * tile + i * 16, f16), a3);
        }
        V16 sc = v16_set1(scale);
        v16_store(att + b * 16, v16_mul(a0, sc));
        v16_store(att + b * 16 + 16, v16_mul(a1, sc));
        v16_store(att + b * 16 + 32, v16_mul(a2, sc));
        v16_store(att + b * 16 + 48, v16_mul(a3, sc));
    }
    for (; b < nb; b++) {
        V16 a0 = v16_set1(0.0f);
        for (int i = 0; i < hs; i++) { a0 = v16_fma(v16_set1(q[i]), cache_load16(kc, at + b * tile + i * 16, f16), a0); }
        v16_store(att + b * 16, v16_mul(a0, v16_set1(scale)));
    }
}

// four components at a time; the last hs % 4 go through the twin
static void attention_values(float *out, const float *att, const void *vc, size_t at, int nb, int hs, int f16) {
    size_t tile = (size_t)hs * 16;
    int i = 0;
    for (; i + 4 <= hs; i += 4) {
        V16 a0 = v16_set1(0.0f), a1 = v16_set1(0.0f), a2 = v16_set1(0.0f), a3 = v16_set1(0.0f);
        for (int b = 0; b < nb; b++) {
            size_t v = at + b * tile + i * 16;
            V16 av = v16_load(att + b * 16);
            a0 = v16_fma(av, cache_load16(vc, v, f16), a0);
            a1 = v16_fma(av, cache_load16(vc, v + 16, f16), a1);
            a2 = v16_fma(av, cache_load16(vc, v + 32, f16), a2);
            a3 = v16_fma(av, cache_load16(vc, v + 48, f16), a3);
        }
        v16_store_sum4(out + i, a0, a1, a2, a3);
    }
    attention_values_plain(out, att, vc, at, nb, hs, f16, i);
}
#else
static void attention_scores(float *att, const float *q, const void *kc, size_t at, int nb, int hs, int f16, float scale) {
    attention_scores_plain(att, q, kc, at, nb, hs, f16, scale);
}

static void attention_values(float *out, const float *att, const void *vc, size_t at, int nb, int hs, int f16) {
    attention_values_plain(out, att, vc, at, nb, hs, f16, 0);
}
#endif

// ----------------------------------------------------------------------------
// argmax: the first index of the maximum (twin: argmax_plain)

#ifdef HAVE_AVX512
// two vector passes: the maximum, then the first position equal to it (the compiler turns the
// twin's lane loop into scalar code, and this runs on one thread once per token)
static int argmax(const float *v, int n) {
    (void)argmax_plain;  // the twin, which this build does not call
    __m512 m = _mm512_set1_ps(v[0]);
    int j = 0;
    for (; j + 16 <= n; j += 16) { m = _mm512_max_ps(_mm512_loadu_ps(v + j), m); }  // v > m ? v : m
    float mx = _mm512_reduce_max_ps(m);
    for (; j < n; j++) { mx = v[j] > mx ? v[j] : mx; }
    for (j = 0; j + 16 <= n; j += 16) {
        __mmask16 eq = _mm512_cmp_ps_mask(_mm512_loadu_ps(v + j), _mm512_set1_ps(mx), _CMP_EQ_OQ);
        if (eq) { return j + __builtin_ctz(eq); }
    }
    for (; j < n; j++) { if (v[j] == mx) { return j; } }
    return 0;  // v[0] is NaN: nothing compares greater than it
}
#else
static int argmax(const float *v, int n) { return argmax_plain(v, n); }
#endif
