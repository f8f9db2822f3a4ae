// The math of InfoNCE (docs/contrastive.md §2) and the VSE++ triplet (§1), written once for the
// CPU kernels (g++) and the CUDA kernels (nvcc). Only standard and CUDA headers here.
//
// InfoNCE per query q with positive p: L = log sum_j e^(S[q,j]/T) - S[q,p]/T. Every exponent is
// formed from a score difference before the scaling, x = (S[q,j] - shift) * k with k = log2(e)/T
// and `shift` a score (the query's largest, or one common shift for both directions): at small T,
// S/T itself carries an absolute rounding error of eps * |S| / T, which would reach the weights.
// Each query keeps (shift, 1 / total, negatives' share of the total) for the backward:
//   dL/dS[q,j] = 2^x_j / total / T  (j != p),   dL/dS[q,p] = -(negatives' share) / T,
// the latter summed without the positive's own term, so that it keeps its digits when p dominates.
#pragma once

#include <math.h>
#include <stdint.h>

#include "itr_kernels/ranking_math.h"

namespace itr {

// 2^x for the exponents above (x <= ~0). On the CPU, float uses the branch-free polynomial, which
// vectorises, and flushes below 2^-64 (where the polynomial clamps) to 0: every query's largest
// term is >= 2^-kSharedSpan, so a flushed term is < 2^-40 of it, and -inf scores give exactly 0,
// as exp does.
#if defined(ITR_DEVICE_CODE)
__device__ __forceinline__ float exp2_shifted(float x) { return ex2_approx(x); }
__device__ __forceinline__ double exp2_shifted(double x) { return exp2(x); }
#else
inline float exp2_shifted(float x) { return x < -64.f ? 0.f : exp2_poly(x); }
inline double exp2_shifted(double x) { return exp2(x); }
#endif

// One exponential per score can serve both directions when every row's and column's largest score
// lies within kSharedSpan / k of the overall largest (then all share that shift). The exponent
// x = (s - shift) * k then reaches kSharedSpan, and its two roundings (2^-23 * |x|) cost each
// weight at most ln(2) * 24 * 2^-23 = 2.0e-6 (float32) relative; otherwise each direction uses its
// own shift (two exponentials per score), where the terms that matter have |x| of a few units.
// 24 covers the spread of in-batch maxima at CLIP's temperatures (about 0.15 in cosine at T = 0.01).
constexpr double kSharedSpan = 24.0;

// Loss of one query from its negatives' sum `neg` = sum_{j != p} 2^x_j, the positive's term
// `pos` = 2^x_p and exponent x_p: -log(pos / (neg + pos)). log1p keeps the digits of a small loss
// (the positive dominating); otherwise log2(total) - x_p, which never divides by an underflowed pos.
// Writes 1 / total and neg / total for the backward. NaN propagates.
template <typename T>
ITR_HD T infonce_query(T neg, T pos, T pos_exponent, T& inv_total, T& neg_share) {
  const T total = neg + pos;
  inv_total = T(1) / total;
  neg_share = neg / total;
  if (neg <= pos) return log1p(neg / pos);
  return T(kLn2) * (log2_(total) - pos_exponent);
}

// A query's loss and backward statistics from its shift (a score: the query's largest, or the
// common one), its negatives' sum of 2^((s - shift) * k) and its positive's score. Queries whose
// largest score is not finite get the formula's limits as torch computes them: +inf where a
// negative is +inf, NaN for a NaN score, a positive at +inf or every score at -inf.
template <typename T>
ITR_HD T infonce_finish(T pos_score, T shift, T neg, T k, T& inv_total, T& neg_share) {
  if (!isfinite(shift)) {
    inv_total = neg_share = T(NAN);
    return shift == T(INFINITY) && pos_score != T(INFINITY) ? T(INFINITY) : T(NAN);
  }
  const T x = (pos_score - shift) * k;
  return infonce_query(neg, exp2_shifted(x), x, inv_total, neg_share);
}

// A running sum of 2^((s - max) * k) over scores s, with max the largest score seen (the CUDA
// kernels' one-pass form; the CPU kernels find the maxima first so that their loops vectorise).
// add_max records a score in the max without summing it (a query's positive). A NaN score makes
// max NaN for good; -inf scores add nothing (max stays -inf while nothing else came: empty).
template <typename T>
struct ShiftedSum {
  T max = -INFINITY, sum = T(0);
  ITR_HD void add_max(T s, T k) {
    if (max != max) return;
    if (!(s <= max)) {  // a larger score, or NaN
      sum = sum == T(0) ? T(0) : sum * exp2_shifted((max - s) * k);
      max = s;
    }
  }
  ITR_HD void add(T s, T k) {
    if (max != max) return;
    if (!(s <= max)) {
      sum = (sum == T(0) ? T(0) : sum * exp2_shifted((max - s) * k)) + T(1);
      max = s;
    } else if (s != -INFINITY) {
      sum += exp2_shifted((s - max) * k);
    }
  }
  ITR_HD void merge(const ShiftedSum& o, T k) {
    if (o.max == -INFINITY || max != max) return;
    if (!(o.max <= max)) {
      sum = o.sum + (sum == T(0) ? T(0) : sum * exp2_shifted((max - o.max) * k));
      max = o.max;
    } else if (o.sum != T(0)) {
      sum += o.sum * exp2_shifted((o.max - max) * k);
    }
  }
};

// ---- VSE++ triplet ----

// [x]_+ with NaN kept (NaN <= 0 is false).
template <typename T>
ITR_HD T hinge(T x) {
  return x <= T(0) ? T(0) : x;
}

// Is candidate a (score sa) harder than candidate b? The larger score; ties to the lower index; a
// NaN score is the hardest (its query's loss is NaN), the first NaN by index.
template <typename T>
ITR_HD bool harder(T sa, int64_t a, T sb, int64_t b) {
  const bool na = sa != sa, nb = sb != sb;
  if (na != nb) return na;
  if (!na && sa != sb) return sa > sb;
  return a < b;
}

// The hardest negative seen so far (index -1: none yet).
template <typename T>
struct Hardest {
  T score = -INFINITY;
  int64_t index = -1;
  ITR_HD void add(T s, int64_t j) {
    if (index < 0 || harder(s, j, score, index)) {
      score = s;
      index = j;
    }
  }
  ITR_HD void merge(const Hardest& o) {
    if (o.index >= 0) add(o.score, o.index);
  }
};

// Max violation: loss [m + S[q,h] - S[q,p]]_+ of the hardest negative h; the gradient reaches h and
// p only while the hinge is active (> 0: the kink counts as inactive). Returns the loss and sets
// `active` to h, or -1.
template <typename T>
ITR_HD T max_violation_loss(const Hardest<T>& h, T margin, T pos, int64_t& active) {
  if (h.index < 0) {  // no negative at all (B = 1)
    active = -1;
    return T(0);
  }
  const T x = margin + h.score - pos;
  active = x > T(0) ? h.index : -1;
  return hinge(x);
}

}  // namespace itr
