// The math of docs/bcls.md (BCLS: Triplet-SN and the Kendall ranking loss), written once for the
// CPU kernels (g++) and the CUDA kernels (nvcc). Only standard and CUDA headers here.
#pragma once

#include <math.h>

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

// Triplet-SN: L = T * log(1 + sum_j exp(x_j)), x_j = (m + S[q,j] - S[q,p]) / T over the negatives.
// A running log-sum-exp of the x_j (max and scaled sum); partial sums over parts of a row or column
// merge in any fixed order. NaN propagates.
template <typename T>
struct LogSumExp {
  T max = -INFINITY, sum = T(0);
  ITR_HD void add(T x) {
    if (x > max) {
      sum = sum * exp(max - x) + T(1);
      max = x;
    } else {
      sum += exp(x - max);
    }
  }
  ITR_HD void merge(const LogSumExp& o) {
    if (o.sum == T(0)) return;
    if (sum == T(0)) {
      *this = o;
      return;
    }
    const T m = max > o.max ? max : o.max;
    sum = sum * exp(max - m) + o.sum * exp(o.max - m);
    max = m;
  }
  // log(1 + sum_j exp(x_j)): the "1" is the positive's own term (x = 0).
  ITR_HD T log1p_sum() const {
    if (sum == T(0)) return T(0);
    if (max > T(0)) return max + log(exp(-max) + sum);
    return log1p(sum * exp(max));  // small sums: log1p keeps their digits (and those of 1 - e^-lse)
  }
};

// Is candidate j a Triplet-SN negative of a query with positive p? (rho = 1 keeps every negative.)
template <typename T>
ITR_HD bool soft_negative(int64_t j, int64_t p, T relevance, T rho) {
  return j != p && relevance < rho;
}

}  // namespace itr
