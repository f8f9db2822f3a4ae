// The math of docs/bcls.md (BCLS: Triplet-SN and the Kendall ranking loss), written once for the
// CPU kernels (g++) and the CUDA kernels (nvcc). Only standard and CUDA headers here.
#pragma once

#include <math.h>

#include "itr_kernels/contrastive_math.h"
#include "itr_kernels/ranking_math.h"

namespace itr {

// The Kendall surrogate phi(x), x = S[q,k] - S[q,j] for a pair where j is the more relevant.
enum class Phi : int { kHinge = 0, kLogistic = 1, kTanh = 2 };

template <typename T>
ITR_HD T softplus_(T z) {  // log(1 + e^z) without overflow
  return (z > T(0) ? z : T(0)) + log1p(exp(-fabs(z)));
}

template <typename T>
ITR_HD T phi_value(Phi phi, T x, T margin, T temperature) {
  switch (phi) {
    // Tested as "<= 0", not "> 0", so that a NaN score stays NaN (a NaN loss, as the other forms give).
    case Phi::kHinge: return x + margin <= T(0) ? T(0) : x + margin;
    case Phi::kLogistic: return temperature * softplus_(x / temperature);  // RankNet
    // (1 + tanh(u)) / 2 written as sigmoid(2u): no cancellation where tanh(u) is near -1.
    default: return T(1) / (T(1) + exp(T(-2) * x / temperature));
  }
}

// d phi / d x. The hinge's derivative at the kink, and at a NaN x, is taken as 0 (at NaN as
// autograd's clamp gives; the loss itself is NaN there).
template <typename T>
ITR_HD T phi_grad(Phi phi, T x, T margin, T temperature) {
  switch (phi) {
    case Phi::kHinge: return x + margin > T(0) ? T(1) : T(0);
    case Phi::kLogistic: return T(1) / (T(1) + exp(-x / temperature));
    default: {
      // (1 - tanh(u)^2) / (2T) = (2/T) e^{-2|u|} / (1 + e^{-2|u|})^2: 1 - t*t loses all relative
      // accuracy once tanh saturates, which in float32 is where most of a row's gradient can be.
      const T e = exp(T(-2) * fabs(x) / temperature);
      return T(2) / temperature * e / ((T(1) + e) * (T(1) + e));
    }
  }
}

// Which way a pair (j, k) counts: +1 if j is more relevant by more than the gap (then
// x = S_k - S_j), -1 if k is (x = S_j - S_k), 0 if neither.
template <typename T>
ITR_HD int pair_direction(T rel_j, T rel_k, T gap) {
  return rel_j - rel_k > gap ? 1 : (rel_k - rel_j > gap ? -1 : 0);
}

// SW-HS: is candidate a (score sa) a harder pick of its window than b? Upper window (upper = true):
// the lower score; lower window: the higher score. A NaN score is the hardest of its window, so
// that it reaches the loss; ties, NaN with NaN included, go to the lower column.
template <typename T>
ITR_HD bool swhs_harder(bool upper, T sa, int64_t a, T sb, int64_t b) {
  const bool na = sa != sa, nb = sb != sb;
  if (na || nb) return na && (!nb || a < b);
  if (sa != sb) return upper ? sa < sb : sa > sb;
  return a < b;
}

// ---- Triplet-SN ----
//
// Per query q with positive p: L = T ln(1 + sum_{j in Neg} e^((m + S[q,j] - S[q,p]) / T)). As for
// InfoNCE (contrastive_math.h), every exponent is formed from a score difference before the scaling,
// with `shift` a score (the query's largest negative score) and k = log2(e) / T:
//   L = T ln((neg + 2^x_p) / 2^x_p),  neg = sum_{j in Neg} 2^((S[q,j] - shift) k),  x_p = (S[q,p] - m - shift) k,
// the positive's own term 2^x_p standing for the "1". Each query keeps (shift, 1 / total, negatives'
// share of the total), total = neg + 2^x_p, for the backward:
//   dL/dS[q,j] = 2^((S[q,j] - shift) k) / total  (j in Neg),   dL/dS[q,p] = -(negatives' share).
// (The log-sum-exp of x_j = (m + S[q,j] - S[q,p]) / T carries x_j's absolute rounding error,
// eps * |x_j|, into every weight e^(x_j - lse): a float32 gradient wrong by 1e-3 at T = 1e-5.)

// Is candidate j a negative of a query with positive p? Without relevance (rel null) every j != p;
// with it, rel[at] < rho (strict: rho = 1 leaves out relevance 1, +inf keeps every j != p; a NaN
// relevance is not < rho).
template <typename T>
ITR_HD bool soft_negative(int64_t j, int64_t p, const T* rel, int64_t at, T rho) {
  return j != p && (rel == nullptr || rel[at] < rho);
}

// A NaN positive enters every negative's term: a query (or part of one) with a negative gets a NaN
// shift, which every ShiftedSum merge keeps, so its loss is NaN. (Where a negative is finite, x_p
// is NaN anyway; this covers the query whose negatives are all at -inf.)
template <typename T>
ITR_HD void mark_nan_positive(ShiftedSum<T>& part, T pos, bool has_negative) {
  if (has_negative && pos != pos) part.max = pos;
}

// a - b - m in double, a - b kept exact (TwoSum): where the positive's term matters, |a - b - m| is
// a few T, and there the result is exact but for one rounding; rounding a - b first would cost
// eps * |a - b| / T in x_p (float32 scores at T = 1e-9: the whole exponent). Non-finite: IEEE's.
ITR_HD double margin_gap(double a, double b, double m) {
  const double d = a - b;
  if (!isfinite(d)) return d - m;
  const double bv = d - a, av = d - bv;  // d + err = a - b exactly
  const double err = (a - av) + (-b - bv);
  return (d - m) + err;
}

// A query's loss from its positive's score, its shift (largest negative score; -inf: no negative
// term) and its negatives' sum; writes 1 / total and the negatives' share. x_p and the loss are
// formed in double (per query: rounding x_p to float would cost 2^-24 |x_p| in 2^x_p, and the loss
// T (log2(total) - x_p) ln 2 is x_p's to the last digit where a negative dominates). A negative at
// +inf gives +inf (NaN if the positive is +inf too), a NaN shift NaN, as torch computes the formula.
template <typename T>
ITR_HD T triplet_sn_finish(T pos, T shift, T neg, double margin, double temperature, T& inv_total, T& neg_share) {
  if (shift == T(-INFINITY)) {  // no negative, or only -inf ones: log(1 + 0)
    inv_total = neg_share = T(0);
    return T(0);
  }
  if (!(shift < T(INFINITY))) {
    inv_total = neg_share = T(NAN);
    return shift == T(INFINITY) && pos < T(INFINITY) ? T(INFINITY) : T(NAN);
  }
  const double x = margin_gap(pos, shift, margin) * (kLog2e / temperature);
  double inv, share;
  const double loss = infonce_query(static_cast<double>(neg), exp2(x), x, inv, share);
  inv_total = static_cast<T>(inv);
  neg_share = static_cast<T>(share);
  return static_cast<T>(temperature * loss);
}

// dL/dS[q,j] of a negative j from its query's shift and 1 / total (0 where the query has no
// negative term).
template <typename T>
ITR_HD T triplet_sn_weight(T s, T shift, T inv_total, T k) {
  return shift == T(-INFINITY) ? T(0) : exp2_shifted((s - shift) * k) * inv_total;
}

}  // namespace itr
