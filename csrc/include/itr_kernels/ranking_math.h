// The math of docs/smooth_rank_ndcg.md §1-2, written once for the CPU kernels (g++) and the CUDA kernels (nvcc).
// Only standard and CUDA headers may be included here: nvcc checks the CUDA sources without torch.
#pragma once

#include <cstdint>
#include <cstring>
#include <math.h>

#if defined(__CUDACC__)
#define ITR_HD __host__ __device__ __forceinline__
#else
#define ITR_HD inline
#endif

// ITR_CUDA_SOURCE: this file is compiled as part of the CUDA kernels, by nvcc or by g++ for the CPU
// emulation of the CUDA execution model (ITR_CUDA_EMU, csrc/cuda_emu/). ITR_DEVICE_CODE: the device
// side of it (nvcc's device pass, or the emulation), which must take the GPU's code paths.
#if defined(__CUDACC__) || defined(ITR_CUDA_EMU)
#define ITR_CUDA_SOURCE 1
#endif
#if defined(__CUDA_ARCH__) || defined(ITR_CUDA_EMU)
#define ITR_DEVICE_CODE 1
#endif
#if defined(ITR_CUDA_EMU)
#include "cuda_emu/runtime.h"
#endif

namespace itr {

constexpr double kLog2e = 1.4426950408889634;
constexpr double kLn2 = 0.6931471805599453;

ITR_HD float exp2_(float x) { return exp2f(x); }
ITR_HD double exp2_(double x) { return exp2(x); }
ITR_HD float log2_(float x) { return log2f(x); }
ITR_HD double log2_(double x) { return log2(x); }

#if !defined(ITR_DEVICE_CODE)
// 2^t on the CPU: branch-free (ternaries, bit arithmetic) so that gcc vectorises the pair loops.
// Degree-5 fit of 2^f on [-1/2, 1/2], relative error 1.5e-7. t is clamped to [-64, 64]: every
// intermediate stays a normal float (subnormals are slow), and a pair farther apart than that
// contributes below 5.4e-20, invisible next to a rank >= 1. (The CPU sweeps never see a masked
// candidate: rows are compacted to their valid candidates, so masked ones add exactly 0.)
inline float exp2_poly(float t) {
  t = t < -64.f ? -64.f : t;
  t = t > 64.f ? 64.f : t;
  const float shifted = t + 12582912.f;  // 1.5 * 2^23: the low mantissa bits now hold round(t)
  const float n = shifted - 12582912.f;
  const float f = t - n;
  float p = 0.0013266970636323094f;
  p = p * f + 0.009675459936261177f;
  p = p * f + 0.05550742521882057f;
  p = p * f + 0.24022121727466583f;
  p = p * f + 0.6931469440460205f;
  p = p * f + 1.0000001192092896f;
  int32_t bits, n_bits;
  std::memcpy(&bits, &p, 4);
  std::memcpy(&n_bits, &shifted, 4);
  bits += static_cast<int32_t>(static_cast<uint32_t>(n_bits) << 23);  // p * 2^round(t)
  float r;
  std::memcpy(&r, &bits, 4);
  return r;
}
#endif

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ float tanh_approx(float x) {
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
#elif defined(ITR_CUDA_EMU)
// The emulation's stand-ins for the two PTX instructions: the same special values and ex2's
// flush-to-zero of subnormal inputs and results, but correctly rounded where the hardware
// approximates (tanh.approx: ~2^-11 relative, ex2.approx: 2 ulp); that error is not emulated.
__device__ __forceinline__ float tanh_approx(float x) { return tanhf(x); }
__device__ __forceinline__ float flush_subnormal(float x) { return fabsf(x) < 1.17549435e-38f ? copysignf(0.f, x) : x; }
__device__ __forceinline__ float ex2_approx(float x) { return flush_subnormal(exp2f(flush_subnormal(x))); }
#endif
#if defined(ITR_DEVICE_CODE)
// 1 / x for x in [1, 2^64] on the FMA pipe (bit-trick seed, three Newton steps, 1e-7 relative),
// so that a pair costs one special-function op (the exp2), not two.
__device__ __forceinline__ float recip_fma(float x) {
  float y = __int_as_float(0x7EF311C3 - __float_as_int(x));
  y = fmaf(y, fmaf(-x, y, 1.f), y);
  y = fmaf(y, fmaf(-x, y, 1.f), y);
  y = fmaf(y, fmaf(-x, y, 1.f), y);
  return y;
}
#endif

// The pair term sigma((s_k - s_j) / tau) and its derivative sigma'. Scores are staged once per row
// as w = s * scale(tau), so a pair costs d = w_k - w_j and one call here. scale() differs between
// the device and host paths, so staging and pair terms must run on the same side (they do).
template <typename T>
struct PairSigmoid;

template <>
struct PairSigmoid<double> {
  static ITR_HD double scale(double tau) { return 1.0 / tau; }
  static ITR_HD double value(double d) { return 1.0 / (1.0 + exp(-d)); }
  // sigma(d) and sigma(-d) = 1 - sigma(d), both to full relative precision.
  static ITR_HD void value_pair(double d, double& fwd, double& rev) {
    const double e = exp(-fabs(d));
    const double r = 1.0 / (1.0 + e);
    fwd = d >= 0 ? r : e * r;
    rev = d >= 0 ? e * r : r;
  }
  static ITR_HD double grad(double d) {
    const double e = exp(-fabs(d));
    const double r = 1.0 / (1.0 + e);
    return e * r * r;
  }
};

// float: sigma(x) = 1 / (1 + 2^(-x log2 e)), with log2 e folded into the staged scores.
template <>
struct PairSigmoid<float> {
  static ITR_HD float scale(float tau) { return static_cast<float>(kLog2e) / tau; }
#if defined(ITR_DEVICE_CODE)
  // ex2.approx (2 ulp) on the special-function unit. value: below d = -64 the term is taken as 0
  // (it is < 5.4e-20), which keeps 1 + e in recip_fma's range [1, 2^64] and makes a masked
  // candidate (staged -inf, so d = -inf) add exactly 0; a ternary, so that a NaN d stays NaN.
  // grad: e = 2^-|d| in [0, 1] needs no clamp, and is exactly 0 at d = +-inf.
  static __device__ __forceinline__ float value(float d) {
    return d < -64.f ? 0.f : recip_fma(1.f + ex2_approx(-d));
  }
  static __device__ __forceinline__ float grad(float d) {
    const float e = ex2_approx(-fabsf(d));
    const float r = recip_fma(1.f + e);
    return e * r * r;
  }
#else
  static float value(float d) { return 1.f / (1.f + exp2_poly(-d)); }
  // sigma(d) and sigma(-d) = 1 - sigma(d), both to full relative precision (e <= 2^64).
  static void value_pair(float d, float& fwd, float& rev) {
    const float e = exp2_poly(-d);
    fwd = 1.f / (1.f + e);
    rev = e * fwd;
  }
  // sigma'(d) = e / (1 + e)^2 with e = 2^-|d| = h^2, from h = 2^(-|d|/2): exact to |d| = 125 with
  // every intermediate a normal float. Past that sigma' < 2^-125 is exactly 0 (a select, so a
  // NaN d stays NaN): exp2_poly's clamp would otherwise leave 2^-64, which 1 / tau scales up
  // (tau = 1e-30: a gradient of 1e10 between two far-apart scores whose true one is 0).
  static float grad(float d) {
    const float ad = fabsf(d) > 125.f ? 125.f : fabsf(d);
    const float h = exp2_poly(-0.5f * ad);
    const float g = h / (1.f + h * h);
    return fabsf(d) > 125.f ? 0.f : g * g;
  }
#endif
};

#if defined(ITR_CUDA_SOURCE)
// float16 / bfloat16 inputs on the GPU, forward only: sigma(x) = (1 + tanh(x/2)) / 2, one
// special-function op per pair; tanh.approx's 2^-11 relative error is below the inputs' own
// resolution, and tanh(-inf) = -1 makes a masked candidate add exactly 0. There is no grad here:
// sigma' = (1 - t^2) / 4 cancels as t -> +-1 (t within an ulp of 1 from |x| ~ 18 on, and
// tanh.approx's error near +-1 would add up to ~2.4e-4 per far-apart pair), so the backward of
// these dtypes uses PairSigmoid<float>::grad (device_utils.cuh, Traits::GradSig).
struct FastPairSigmoid {
  static __host__ __device__ __forceinline__ float scale(float tau) { return 0.5f / tau; }
#if defined(ITR_DEVICE_CODE)
  static __device__ __forceinline__ float value(float d) { return fmaf(0.5f, tanh_approx(d), 0.5f); }
#endif
};
#endif

// The sum over the other valid candidates k of a column j, pair by pair:
// sum_{k != j, live k} sigma(w_k - w_j), or with kGrad sum sigma'(w_k - w_j) * (c_k - c_j).
// The sweeps compute a column's sum over the whole row and drop the k == j term as sigma(0); for a
// column whose staged score is infinite that term is inf - inf, so such columns (rare) take this
// loop instead. Row: w(k), c(k) and live(k) of the staged row.
template <typename Sig, bool kGrad, typename T, typename Row>
ITR_HD T column_sum(const Row& row, int64_t n, int64_t j) {
  const T wj = row.w(j);
  T acc = 0;
  for (int64_t k = 0; k < n; ++k) {
    if (k == j || !row.live(k)) continue;
    if constexpr (kGrad) {
      acc += Sig::grad(row.w(k) - wj) * (row.c(k) - row.c(j));
    } else {
      acc += Sig::value(row.w(k) - wj);
    }
  }
  return acc;
}

// ---- Smooth-NDCG (docs/smooth_rank_ndcg.md §2) ----

// Gain of a relevance value: 2^R - 1, or R with linear gain.
template <typename T>
ITR_HD T ndcg_gain(T relevance, bool linear_gain) {
  return linear_gain ? relevance : exp2_(relevance) - T(1);
}

// 1 / log2(1 + rank): the discount at a (smooth) rank; the ideal rank of sorted position i is i + 1.
template <typename T>
ITR_HD T ndcg_discount(T rank) {
  return T(1) / log2_(T(1) + rank);
}

// d loss / d Rhat for a candidate of gain g at smooth rank rhat, loss = 1 - DCG / IDCG.
template <typename T>
ITR_HD T ndcg_rank_grad(T gain, T rhat, T idcg) {
  const T l = log2_(T(1) + rhat);
  return gain / (idcg * T(kLn2) * (T(1) + rhat) * l * l);
}

// Per-row loss: 0 for a row without gain (IDCG <= 0), unless NaN entered the sums: NaN relevance
// (IDCG), or a NaN rank (DCG; a NaN score, or two equal infinite scores).
template <typename T>
ITR_HD T ndcg_row_loss(T dcg, T idcg) {
  if (idcg > T(0)) return T(1) - dcg / idcg;
  return idcg == idcg && dcg == dcg ? T(0) : dcg + idcg;
}

// Gain-set order (docs/README.md: ties to the lower column first), NaN relevance sorted last.
template <typename T>
ITR_HD bool ranks_before(T ra, int64_t a, T rb, int64_t b) {
  const bool na = ra != ra, nb = rb != rb;
  if (na != nb) return nb;
  if (!na && ra != rb) return ra > rb;
  return a < b;
}

// ranks_before for float relevance as one integer, so a row sorts as plain uint64 keys (several
// times faster than a comparator over indices): ascending keys give descending relevance, ties to
// the lower column, NaN last. Column j must fit in 32 bits.
ITR_HD uint64_t rank_key(float r, uint32_t j) {
  uint32_t u;
  const float r0 = r + 0.0f;  // -0 and +0 tie, as in ranks_before
  memcpy(&u, &r0, sizeof u);
  const uint32_t ascending = (u & 0x80000000u) ? ~u : (u | 0x80000000u);  // monotone in r
  const uint32_t hi = r != r ? 0xFFFFFFFFu : ~ascending;
  return (static_cast<uint64_t>(hi) << 32) | j;
}

}  // namespace itr
