/* The fused FCN sampler kernel, written once for a vector width VW (floats per vector) and
 * compiled once per instruction set (k_avx512.c: VW 16, k_avx2.c: VW 8, k_generic.c: VW 4,
 * portable C), each under its own `#pragma GCC target`; module.c picks one at run time.
 *
 * For each draw i of [start, stop) of a block with Philox key (key0, key1):
 *   1. the draw's P standard numbers, random stream 2 (volume/stream.py docstring):
 *      Philox4x32-10 of counters (q, i, 0, 0), q = 0, 1, ..., VW counters per vector, then
 *      Box-Muller (or the uniform map) in float32, interleaved into stream order;
 *   2. the forward pass on all inputs: H_l = act(s_l W_l H_{l-1} + sigma_b b_l), activations
 *      laid out (units, inputs) with the inputs along the vector lanes (M padded to Mp, a
 *      multiple of 16), each layer a register-blocked product (R rows x CV vectors of
 *      accumulators, weights broadcast, inputs loaded); with job->plan, a hidden first layer
 *      runs from its plan instead (plan_rows: shared prefixes of the same FMA chain, zero
 *      coordinates skipped, the inputs permuted; the keys read them back through job->pos);
 *   3. the labels (threshold z > 0, or argmax) packed into the key, MSB first.
 * Everything a draw touches (its parameters, two activation buffers, the inputs) stays in
 * the core's L1/L2 cache.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernel_api.h"

typedef float vf __attribute__((vector_size(VW * 4)));
typedef uint32_t vu __attribute__((vector_size(VW * 4)));
typedef int32_t vi __attribute__((vector_size(VW * 4)));

#define INLINE static inline __attribute__((always_inline))

#if VW == 16
#define VSQRT(x) ((vf)_mm512_sqrt_ps((__m512)(x)))
#define SPLAT(x) ((vf)_mm512_set1_ps(x))
#define RELU(x) ((vf)_mm512_max_ps((__m512)(x), _mm512_setzero_ps()))
#elif VW == 8
#define VSQRT(x) ((vf)_mm256_sqrt_ps((__m256)(x)))
#define SPLAT(x) ((vf)_mm256_set1_ps(x))
#define RELU(x) ((vf)_mm256_max_ps((__m256)(x), _mm256_setzero_ps()))
#else
#define SPLAT(x) ((x) - (vf){0}) /* x - 0 == x exactly, so the subtraction folds away */
#define RELU(x) ((vf)((vi)(x) & ((x) > 0.0f)))
INLINE vf vsqrt_lanes(vf x) {
    for (int l = 0; l < VW; l++) x[l] = sqrtf(x[l]);
    return x;
}
#define VSQRT(x) vsqrt_lanes(x)
#endif

INLINE void mulhilo(vu a, uint32_t m, vu *hi, vu *lo) {
#if VW == 16
    __m512i A = (__m512i)a, Mv = _mm512_set1_epi32((int)m);
    __m512i pe = _mm512_mul_epu32(A, Mv);
    __m512i po = _mm512_mul_epu32(_mm512_srli_epi64(A, 32), Mv);
    /* odd lanes: po's high words in place; even lanes: pe's high words, swapped down */
    *hi = (vu)_mm512_mask_shuffle_epi32(po, (__mmask16)0x5555, pe, _MM_PERM_CDAB);
#elif VW == 8
    __m256i A = (__m256i)a, Mv = _mm256_set1_epi32((int)m);
    __m256i pe = _mm256_mul_epu32(A, Mv);
    __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(A, 32), Mv);
    *hi = (vu)_mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
#else
    for (int l = 0; l < VW; l++) (*hi)[l] = (uint32_t)(((uint64_t)a[l] * m) >> 32);
#endif
    *lo = a * m;
}

INLINE vf vselect(vi mask, vf a, vf b) { /* mask ? a : b, lane by lane */
    return (vf)(((vi)a & mask) | ((vi)b & ~mask));
}

/* ln(u) for u in (0, 1] (Cephes logf: mantissa in [sqrt(1/2), sqrt(2)), degree-9 polynomial). */
INLINE vf vlog(vf x) {
    vi bits = (vi)x;
    vi e = ((bits >> 23) & 0xff) - 126;
    vf m = (vf)((bits & 0x007fffff) | 0x3f000000); /* in [0.5, 1) */
    vi small = m < 0.707106781186547524f;
    e = e + small; /* small is -1 where true */
    m = vselect(small, m + m - 1.0f, m - 1.0f);
    vf z = m * m;
    vf y = SPLAT(7.0376836292E-2f);
    y = y * m - 1.1514610310E-1f;
    y = y * m + 1.1676998740E-1f;
    y = y * m - 1.2420140846E-1f;
    y = y * m + 1.4249322787E-1f;
    y = y * m - 1.6668057665E-1f;
    y = y * m + 2.0000714765E-1f;
    y = y * m - 2.4999993993E-1f;
    y = y * m + 3.3333331174E-1f;
    y = y * m * z;
    vf fe = __builtin_convertvector(e, vf);
    y += -2.12194440e-4f * fe;
    y += -0.5f * z;
    return m + y + 0.693359375f * fe;
}

/* cos and sin of 2 pi k 2^-24 for 24-bit integers k: exact quadrant reduction, Cephes
 * polynomials on [-pi/4, pi/4]. */
INLINE void vsincos2pi(vi k, vf *c_out, vf *s_out) {
    vi n = (k + (1 << 21)) >> 22;             /* round(4 t), 0..4 */
    vi f = k - (n << 22);                     /* in [-2^21, 2^21) */
    vf a = __builtin_convertvector(f, vf) * (float)(1.57079632679489661923 / 4194304.0);
    vf z = a * a;
    vf s = ((-1.9515295891E-4f * z + 8.3321608736E-3f) * z - 1.6666654611E-1f) * z * a + a;
    vf c = ((2.443315711809948E-5f * z - 1.388731625493765E-3f) * z + 4.166664568298827E-2f) * z * z
           - 0.5f * z + 1.0f;
    vi swap = -(n & 1);
    vf cc = vselect(swap, s, c), ss = vselect(swap, c, s);
    vu cneg = (vu)((n + 1) & 2) << 30, sneg = (vu)(n & 2) << 30;
    *c_out = (vf)((vu)cc ^ cneg);
    *s_out = (vf)((vu)ss ^ sneg);
}

#if VW == 16
#define LO_MASK (vi){0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23}
#define HI_MASK (vi){8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31}
#elif VW == 8
#define LO_MASK (vi){0, 8, 1, 9, 2, 10, 3, 11}
#define HI_MASK (vi){4, 12, 5, 13, 6, 14, 7, 15}
#else
#define LO_MASK (vi){0, 4, 1, 5}
#define HI_MASK (vi){2, 6, 3, 7}
#endif

/* Write v0[l], v1[l], v2[l], v3[l] for l = 0..VW-1 to out[4 l + j]. */
INLINE void store_interleaved(float *out, vf v0, vf v1, vf v2, vf v3) {
    vf a0 = __builtin_shuffle(v0, v2, LO_MASK), a1 = __builtin_shuffle(v0, v2, HI_MASK);
    vf b0 = __builtin_shuffle(v1, v3, LO_MASK), b1 = __builtin_shuffle(v1, v3, HI_MASK);
    vf *o = (vf *)out;
    o[0] = __builtin_shuffle(a0, b0, LO_MASK);
    o[1] = __builtin_shuffle(a0, b0, HI_MASK);
    o[2] = __builtin_shuffle(a1, b1, LO_MASK);
    o[3] = __builtin_shuffle(a1, b1, HI_MASK);
}

/* Philox4x32-10 of GS (2) vectors of counters (c0 + lane, c1, 0, 0), round by round: two
 * independent chains, so the core overlaps the latency of one's multiplies with the other's
 * work. rk0, rk1: the ten round keys (key + r W), the same for every counter of a block. */
#define GS 2
INLINE void philox_gs(vu c0[GS], uint32_t c1s, const uint32_t *rk0, const uint32_t *rk1, vu out[GS][4]) {
    vu c1[GS], c2[GS], c3[GS];
    for (int s = 0; s < GS; s++) { c1[s] = (vu){0} + c1s; c2[s] = (vu){0}; c3[s] = (vu){0}; }
#pragma GCC unroll 10
    for (int r = 0; r < 10; r++) {
#pragma GCC unroll 2
        for (int s = 0; s < GS; s++) {
            vu hi0, lo0, hi1, lo1;
            mulhilo(c0[s], 0xD2511F53u, &hi0, &lo0);
            mulhilo(c2[s], 0xCD9E8D57u, &hi1, &lo1);
            vu n0 = hi1 ^ c1[s] ^ rk0[r], n2 = hi0 ^ c3[s] ^ rk1[r];
            c0[s] = n0; c1[s] = lo1; c2[s] = n2; c3[s] = lo0;
        }
    }
    for (int s = 0; s < GS; s++) { out[s][0] = c0[s]; out[s][1] = c1[s]; out[s][2] = c2[s]; out[s][3] = c3[s]; }
}

/* Floats of the buffer draw_standard fills for P numbers: whole steps of GS vectors of 4 VW. */
#define PADDED(P) ((((P) + 4 * VW * GS - 1) / (4 * VW * GS)) * 4 * VW * GS)

/* The standard numbers of draw `draw` into out[0 .. PADDED(P)) (aligned), in two passes: all
 * of the draw's Philox words first (GS vectors of counters per step, the 4 words of each
 * counter vector stored raw in the slot their numbers will take), then the transform in place,
 * slot by slot. Each loop's iterations are short and independent, so the core overlaps them;
 * one loop doing both left the transform's long dependence chains (log, sqrt, sin/cos) to run
 * one step after the other (measured 1% slower on boolean7; making the next draw's numbers a
 * step at a time between the blocks of this draw's forward pass was no faster either: the
 * generator's multiplies compete with the forward pass's FMAs). */
static void draw_standard(float *out, int n_params, int uniform, uint32_t key0, uint32_t key1, uint32_t draw) {
    uint32_t rk0[10], rk1[10];
    for (int r = 0; r < 10; r++) {
        rk0[r] = key0 + (uint32_t)r * 0x9E3779B9u;
        rk1[r] = key1 + (uint32_t)r * 0xBB67AE85u;
    }
    const int groups = (n_params + 3) / 4; /* counters: 4 numbers each */
    vu lane;
    for (int l = 0; l < VW; l++) lane[l] = (uint32_t)l;
    for (int g = 0; g < groups; g += VW * GS) {
        vu c0[GS], xs[GS][4];
        for (int s = 0; s < GS; s++) c0[s] = lane + (uint32_t)(g + s * VW);
        philox_gs(c0, draw, rk0, rk1, xs);
        for (int s = 0; s < GS; s++)
            for (int j = 0; j < 4; j++) ((vu *)(out + 4 * (g + s * VW)))[j] = xs[s][j];
    }
    const int end = (groups + VW * GS - 1) / (VW * GS) * (VW * GS); /* whole steps: PADDED(n_params) / 4 */
    for (int g = 0; g < end; g += VW) {
        const vu *x = (const vu *)(out + 4 * g);
        vf z[4];
        if (uniform) {
            for (int j = 0; j < 4; j++) {
                vi k = (vi)(x[j] >> 8);
                z[j] = __builtin_convertvector(k + k + (1 - (1 << 24)), vf) * (float)(1.7320508075688772 / 16777216.0);
            }
        } else {
            for (int j = 0; j < 4; j += 2) {
                vi k0 = (vi)(x[j] >> 8), k1 = (vi)(x[j + 1] >> 8);
                vf u = __builtin_convertvector(k0 + 1, vf) * (1.0f / 16777216.0f);
                vf r = VSQRT(-2.0f * vlog(u));
                vf c, sn;
                vsincos2pi(k1, &c, &sn);
                z[j] = r * c;
                z[j + 1] = r * sn;
            }
        }
        store_interleaved(out + 4 * g, z[0], z[1], z[2], z[3]);
    }
}

#ifndef CHUNK
#define CHUNK 64 /* inputs per chunk: a multiple of CB * VW for every VW */
#endif
#if defined(RB16) && VW == 16
#define RB RB16
#define CB CB16
#elif VW == 16
#define RB 4
#define CB 4
#else
#define RB 4
#define CB 2
#endif

/* acc (R rows x NC vectors) = W B for one block: per k, NC vectors of row k of B are loaded
 * once and each of the R weights W[r][k] is broadcast against them (R x NC FMAs). */
INLINE void accumulate(const int R, const int NC, const float *restrict w, int K, const float *restrict B, int ldb,
                       vf acc[RB][CB]) {
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++) acc[r][c] = (vf){0};
    for (int k = 0; k < K; k++) {
        vf bv[CB];
        const vf *brow = (const vf *)(B + (size_t)k * ldb);
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++) bv[c] = brow[c];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            vf wv = SPLAT(w[(size_t)r * K + k]);
#pragma GCC unroll 8
            for (int c = 0; c < NC; c++) acc[r][c] += wv * bv[c];
        }
    }
}

/* C[r0 .. r0+R) x [vectors c0 .. c0+NC) = act(W B + bias) for one block. */
INLINE void micro(const int R, const int NC, const float *restrict w, int K, const float *restrict bias,
                  const float *restrict B, int ldb, float *restrict C, int ldc, int act_relu) {
    vf acc[RB][CB];
    accumulate(R, NC, w, K, B, ldb, acc);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++) {
            vf v = bias ? acc[r][c] + bias[r] : acc[r][c];
            if (act_relu) v = RELU(v);
            ((vf *)(C + (size_t)r * ldc))[c] = v;
        }
    }
}

/* As micro, for the last hidden layer of a one-output network: instead of storing the
 * activations, add w_out[r] * act(...) of each row into the output z (NC vectors at Z). */
INLINE void micro_out(const int R, const int NC, const float *restrict w, int K, const float *restrict bias,
                      const float *restrict B, int ldb, float *restrict Z, const float *restrict wout) {
    vf acc[RB][CB];
    accumulate(R, NC, w, K, B, ldb, acc);
    vf z[CB];
#pragma GCC unroll 8
    for (int c = 0; c < NC; c++) z[c] = ((vf *)Z)[c];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        vf wo = SPLAT(wout[r]);
#pragma GCC unroll 8
        for (int c = 0; c < NC; c++) {
            vf v = RELU(bias ? acc[r][c] + bias[r] : acc[r][c]);
            z[c] += wo * v;
        }
    }
#pragma GCC unroll 8
    for (int c = 0; c < NC; c++) ((vf *)Z)[c] = z[c];
}

/* ---- The last hidden layer over only the nonzero (unit, input vector) pairs of its input ----
 *
 * A ReLU unit of the layer before is often zero on all VW inputs of a vector: on the Boolean
 * cube under the plan's input order (each vector a subcube) 15% of the (unit, vector) pairs of
 * boolean7's first layer, 20% of boolean9's. The FMAs w x 0 with those add exact zeros (at
 * most changing the sign of a zero sum, which neither the ReLU nor z > 0 sees), so leaving
 * them out gives the same keys. Measured at AVX-512, one core, alternating with the dense
 * layer: boolean7 +6% draws/s, boolean5 +4%, boolean9 +11%, 100 MNIST images in a basis -1.5%
 * (few zero pairs; volume/fused.py leaves it off there), against (all tried and slower):
 * finding the zero pairs before the first layer runs by a box bound on each vector's inputs
 * (the bound's work per draw cost more than the test it replaced), a separate pass testing all
 * of a chunk's pairs first (its serial dependence no longer hidden behind the FMAs), 8-lane
 * halves at AVX-512 (more pairs skipped, twice the per-vector work), and the output chains
 * deferred to run for the chunk's vectors side by side (the activations stored and reloaded). */

/* Whether any lane of x is nonzero (-0 counts as zero: skipping it is as exact as skipping +0). */
INLINE int any_nonzero(vf x) {
#if VW == 16
    return _mm512_cmp_ps_mask((__m512)x, _mm512_setzero_ps(), _CMP_NEQ_UQ) != 0;
#elif VW == 8
    return _mm256_movemask_ps(_mm256_cmp_ps((__m256)x, _mm256_setzero_ps(), _CMP_NEQ_UQ)) != 0;
#else
    vi m = x != 0.0f;
    int any = 0;
    for (int l = 0; l < VW; l++) any |= m[l];
    return any != 0;
#endif
}

/* z += sum_r w_out[r] relu(b_r + sum_{k in idx} W[r][k] x_k) for R rows of W (row stride K)
 * and one input vector: the chains of micro_out (acc = 0; acc += W[r][k] x_k, k ascending;
 * z += w_out[r] relu(acc + b_r), r ascending) over the n units k listed in idx. */
#define RS 8 /* rows per block: RS accumulators in registers (20, the most that fit, measured 2% slower on boolean7; 4-12 alike) */
INLINE vf sparse_rows_out(const int R, const float *restrict w, int K, const float *restrict bias,
                          const float *restrict B, int ldb, const int *restrict idx, int n, vf z,
                          const float *restrict wout) {
    vf acc[RS];
#pragma GCC unroll 32
    for (int r = 0; r < R; r++) acc[r] = (vf){0};
    for (int j = 0; j < n; j++) {
        const int k = idx[j];
        const vf x = *(const vf *)(B + (size_t)k * ldb);
        const float *wk = w + k;
        __asm__("" : "+r"(wk)); /* one base pointer: gcc then addresses the rows from it, not from RS pointers */
#pragma GCC unroll 32
        for (int r = 0; r < R; r++) acc[r] += SPLAT(wk[(size_t)r * K]) * x;
    }
#pragma GCC unroll 32
    for (int r = 0; r < R; r++) {
        vf v = RELU(bias ? acc[r] + bias[r] : acc[r]);
        z += SPLAT(wout[r]) * v;
    }
    return z;
}

/* As layer() with Z given (the last hidden layer of a one-output network), one input vector at
 * a time over the units k whose activations B[k] are nonzero in some lane of that vector.
 * idx: K ints. Returns the (unit, vector) pairs left out. */
static int64_t layer_out_sparse(const float *W, int O, int K, const float *bias, const float *B, int ldb, int nv,
                                float *Z, const float *wout, int *idx) {
    int64_t left_out = 0;
    for (int c = 0; c < nv; c++) {
        const float *Bc = B + c * VW;
        int n = 0;
        for (int k = 0; k < K; k++) { /* branch-free: idx[n] is overwritten unless kept */
            idx[n] = k;
            n += any_nonzero(*(const vf *)(Bc + (size_t)k * ldb));
        }
        left_out += K - n;
        vf z = ((vf *)Z)[c];
        int r = 0;
        for (; r + RS <= O; r += RS) z = sparse_rows_out(RS, W + (size_t)r * K, K, bias ? bias + r : 0, Bc, ldb, idx, n, z, wout + r);
        for (; r + 4 <= O; r += 4) z = sparse_rows_out(4, W + (size_t)r * K, K, bias ? bias + r : 0, Bc, ldb, idx, n, z, wout + r);
        for (; r < O; r++) z = sparse_rows_out(1, W + (size_t)r * K, K, bias ? bias + r : 0, Bc, ldb, idx, n, z, wout + r);
        ((vf *)Z)[c] = z;
    }
    return left_out;
}

/* C (O x nv vectors, row stride ldc) = act(W (O x K) B (K x nv vectors, row stride ldb) + bias),
 * or, with Z given (the last hidden layer of a one-output network, ReLU), Z (nv vectors) +=
 * w_out . relu(W B + bias) without storing C: blocks of RB rows x CB vectors, then the edges. */
static void layer(const float *W, int O, int K, const float *bias, const float *B, int ldb, int nv, float *C, int ldc,
                  int relu, float *Z, const float *wout) {
    int r = 0;
#define BLOCK(R, NC)                                                                                              \
    do {                                                                                                          \
        const float *w_ = W + (size_t)r * K, *b_ = bias ? bias + r : 0, *B_ = B + c * VW;                       \
        if (Z) micro_out(R, NC, w_, K, b_, B_, ldb, Z + c * VW, wout + r);                                      \
        else micro(R, NC, w_, K, b_, B_, ldb, C + (size_t)r * ldc + c * VW, ldc, relu);                         \
    } while (0)
    for (; r + RB <= O; r += RB) {
        int c = 0;
        for (; c + CB <= nv; c += CB) BLOCK(RB, CB);
        for (; c < nv; c++) BLOCK(RB, 1);
    }
    for (; r < O; r++) {
        int c = 0;
        for (; c + CB <= nv; c += CB) BLOCK(1, CB);
        for (; c < nv; c++) BLOCK(1, 1);
    }
#undef BLOCK
}

/* The first layer of one chunk from its plan, for rows [0, R) of W (K columns): the same
 * chain acc = 0; acc += W[r][k] x_k (k ascending), then act(acc + b), as accumulate/micro,
 * lane by lane, but with the work shared and the zeros skipped (exact: an FMA with x_k = 0
 * adds a zero, so at most the sign of a zero sum differs, which neither the ReLU nor z > 0
 * sees). The plan of a chunk (int32, built by volume/fused.py first_layer_plan):
 *   n_groups, then per group: n_pre, n_pre pairs (k, j): the shared prefix P += W[:,k] px[j]
 *   over the lane vectors px[j] common to the group's vectors; then n_vec, and per vector:
 *   its index c in the chunk, n_suf, n_suf pairs (k, j): acc = P; acc += W[:,k] px[j], with
 *   px[j] the vector's remaining coordinate k (the same in every lane); C[:, c] = act(acc + b).
 * Returns the end of the chunk's plan. */
#define RT 4 /* rows per block (8 at AVX-512 measured no faster on boolean7, 12 slower) */
INLINE const int32_t *plan_rows(const int R, const int32_t *p, const float *restrict px, const float *restrict w,
                                int K, const float *restrict bias, float *restrict C, int ldc) {
    const vf *xv = (const vf *)px;
    const int ng = *p++;
    for (int g = 0; g < ng; g++) {
        vf P[RT];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) P[r] = (vf){0};
        const int npre = *p++;
        for (int j = 0; j < npre; j++, p += 2) {
            const int k = p[0];
            const vf x = xv[p[1]];
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) P[r] += SPLAT(w[(size_t)r * K + k]) * x;
        }
        const int nvec = *p++;
        for (int v = 0; v < nvec; v++) {
            const int c = p[0], ns = p[1];
            p += 2;
            vf a[RT];
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) a[r] = P[r];
            for (int j = 0; j < ns; j++, p += 2) {
                const int k = p[0];
                const vf x = xv[p[1]];
#pragma GCC unroll 8
                for (int r = 0; r < R; r++) a[r] += SPLAT(w[(size_t)r * K + k]) * x;
            }
#pragma GCC unroll 8
            for (int r = 0; r < R; r++) {
                vf o = bias ? a[r] + bias[r] : a[r];
                ((vf *)(C + (size_t)r * ldc))[c] = RELU(o);
            }
        }
    }
    return p;
}

static const int32_t *first_layer_planned(const int32_t *plan, const float *px, const float *W, int O, int K,
                                          const float *bias, float *C, int ldc) {
    const int32_t *end = plan;
    int r = 0;
    for (; r + RT <= O; r += RT) end = plan_rows(RT, plan, px, W + (size_t)r * K, K, bias ? bias + r : 0, C + (size_t)r * ldc, ldc);
    for (; r < O; r++) end = plan_rows(1, plan, px, W + (size_t)r * K, K, bias ? bias + r : 0, C + (size_t)r * ldc, ldc);
    return end;
}

void KERNEL_NAME(standard)(float *out, int n_params, int uniform, uint32_t key0, uint32_t key1,
                           int64_t start, int64_t stop) {
    int padded = PADDED(n_params);
    float *buf = aligned_alloc(64, (size_t)padded * 4);
    for (int64_t i = start; i < stop; i++) {
        draw_standard(buf, n_params, uniform, key0, key1, (uint32_t)i);
        memcpy(out + (i - start) * (int64_t)n_params, buf, (size_t)n_params * 4);
    }
    free(buf);
}

int KERNEL_NAME(fcn_keys)(const struct fcn_job *job, uint8_t *keys) {
    const int L = job->n_layers, Mp = job->mp, M = job->m;
    int n_params = 0, maxw = 0;
    for (int l = 0; l < L; l++) {
        n_params += job->dims[l + 1] * job->dims[l] + (job->biased ? job->dims[l + 1] : 0);
        if (job->dims[l + 1] > maxw) maxw = job->dims[l + 1];
    }
    int padded = PADDED(n_params);
    float *params = aligned_alloc(64, (size_t)padded * 4);
    float *h0 = aligned_alloc(64, (size_t)maxw * CHUNK * 4), *h1 = aligned_alloc(64, (size_t)maxw * CHUNK * 4);
    float *res = aligned_alloc(64, (size_t)job->dims[L] * Mp * 4);
    const float *in;
    uint8_t *labels = malloc((size_t)M);
    int maxk = 0; /* the widest layer input */
    for (int l = 0; l < L; l++) if (job->dims[l] > maxk) maxk = job->dims[l];
    int *idx = malloc((size_t)maxk * sizeof(int));
    int64_t skipped = 0; /* (unit, vector) pairs of the last hidden layer left out, all draws */
    if (!params || !h0 || !h1 || !res || !labels || !idx) {
        free(params); free(h0); free(h1); free(res); free(labels); free(idx);
        return -1;
    }
    const int units = job->dims[L], bits = job->bits_per_label;
    const int fuse_out = !job->argmax && units == 1 && L >= 2;
    const int32_t *pos = job->pos;
    for (int64_t i = job->start; i < job->stop; i++) {
        draw_standard(params, n_params, job->uniform, job->key0, job->key1, (uint32_t)i);
        float *p = params;
        for (int l = 0; l < L; l++) { /* scale the weights once per draw */
            int K = job->dims[l], O = job->dims[l + 1];
            float *W = p, *b = job->biased ? p + (size_t)O * K : 0;
            p += (size_t)O * K + (job->biased ? O : 0);
            if (job->scale[l] != 0.0f) {
                float s = job->scale[l];
                for (int j = 0; j < O * K; j++) W[j] *= s;
                if (b) for (int j = 0; j < O; j++) b[j] *= job->sigma_b;
            }
        }
        /* the whole network on one chunk of CHUNK inputs at a time: activations stay in L1 */
        const int32_t *plan = L >= 2 ? job->plan : 0;
        for (int c0 = 0; c0 < Mp; c0 += CHUNK) {
            int nv = (Mp - c0 < CHUNK ? Mp - c0 : CHUNK) / VW;
            const float *in = job->xt + c0;
            int ld_in = Mp;
            float *out = h0;
            p = params;
            for (int l = 0; l < L; l++) {
                int K = job->dims[l], O = job->dims[l + 1];
                float *W = p, *b = job->biased ? p + (size_t)O * K : 0;
                p += (size_t)O * K + (job->biased ? O : 0);
                if (l == 0 && plan) { /* a hidden first layer (L >= 2) from its plan, into h0 */
                    plan = first_layer_planned(plan, job->px, W, O, K, b, h0, CHUNK);
                    if (fuse_out && L == 2) { /* as micro_out: z = b_out; z += w_out[r] h[r], r ascending */
                        const float z0 = job->biased ? p[O] : 0.0f;
                        for (int c = 0; c < nv; c++) {
                            vf z = SPLAT(z0);
                            for (int r = 0; r < O; r++) z += SPLAT(p[r]) * ((const vf *)(h0 + (size_t)r * CHUNK))[c];
                            ((vf *)(res + c0))[c] = z;
                        }
                        break;
                    }
                    in = h0;
                    ld_in = CHUNK;
                    out = h1;
                    continue;
                }
                if (fuse_out && l == L - 2) { /* p: the output unit's weights, then its bias */
                    float z0 = job->biased ? p[O] : 0.0f;
                    for (int j = 0; j < nv * VW; j++) res[c0 + j] = z0;
                    if (job->skip_zeros) skipped += layer_out_sparse(W, O, K, b, in, ld_in, nv, res + c0, p, idx);
                    else layer(W, O, K, b, in, ld_in, nv, 0, 0, 1, res + c0, p);
                    break;
                }
                float *dst = l == L - 1 ? res + c0 : out;
                int ld_out = l == L - 1 ? Mp : CHUNK;
                layer(W, O, K, b, in, ld_in, nv, dst, ld_out, l < L - 1, 0, 0);
                in = out;
                ld_in = CHUNK;
                out = out == h0 ? h1 : h0;
            }
        }
        in = res;
        /* in = outputs (units x Mp) */
        uint8_t *key = keys + (i - job->start) * (int64_t)job->key_bytes;
        memset(key, 0, (size_t)job->key_bytes);
        if (job->argmax) {
            for (int m = 0; m < M; m++) {
                const int col = pos ? pos[m] : m;
                int best = 0;
                float bv = in[col];
                for (int u = 1; u < units; u++)
                    if (in[(size_t)u * Mp + col] > bv) { bv = in[(size_t)u * Mp + col]; best = u; }
                labels[m] = (uint8_t)best;
            }
            int64_t bit = 0;
            for (int m = 0; m < M; m++)
                for (int j = bits - 1; j >= 0; j--, bit++)
                    if ((labels[m] >> j) & 1) key[bit >> 3] |= (uint8_t)(0x80u >> (bit & 7));
        } else if (pos) {
            for (int m0 = 0; m0 < M; m0 += 8) {
                unsigned byte = 0;
                for (int j = 0; j < 8 && m0 + j < M; j++) byte |= (unsigned)(in[pos[m0 + j]] > 0.0f) << (7 - j);
                key[m0 >> 3] = (uint8_t)byte;
            }
        } else {
            for (int m0 = 0; m0 < M; m0 += 8) { /* branch-free: the signs are random */
                unsigned byte = 0;
                for (int j = 0; j < 8 && m0 + j < M; j++) byte |= (unsigned)(in[m0 + j] > 0.0f) << (7 - j);
                key[m0 >> 3] = (uint8_t)byte;
            }
        }
    }
    free(params); free(h0); free(h1); free(res); free(labels); free(idx);
    if (job->skipped) *job->skipped = skipped;
    return 0;
}
