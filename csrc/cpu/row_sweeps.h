// CPU building blocks shared by the smooth-rank and Smooth-NDCG kernels: row staging, the
// vectorised pair sweeps, and the (row, column-chunk) work split.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "itr_kernels/ranking_math.h"

namespace itr {
namespace cpu {

// Stage the valid candidates of one row, compacted in column order: w[i] = (s - center) * scale
// and cols[i] = its column, for i < the returned count. Masked candidates are left out rather than
// staged, so they add exactly 0 (no clamped 2^-64 per pair) and cost nothing in the sweeps.
// Centring on the mean of the finite valid scores keeps |w| small, so rounding w costs no more
// precision than rounding s_k - s_j would; an infinite score stays infinite (its own pairs are
// summed by column_sum). has_nan: a valid score is NaN, and the caller fills the row with NaN.
template <typename scalar_t, typename T>
int64_t stage_row(const scalar_t* s, const bool* valid, int64_t n, T scale, T* w, int64_t* cols, bool& has_nan) {
  T sum = 0;
  int64_t count = 0, finite = 0;
  has_nan = false;
  for (int64_t j = 0; j < n; ++j) {
    if (valid && !valid[j]) continue;
    const T x = static_cast<T>(s[j]);
    has_nan |= x != x;
    const bool fin = std::isfinite(x);
    sum += fin ? x : T(0);
    finite += fin;
    cols[count++] = j;
  }
  const T center = finite > 0 ? sum / static_cast<T>(finite) : T(0);
  for (int64_t i = 0; i < count; ++i) w[i] = (static_cast<T>(s[cols[i]]) - center) * scale;
  return count;
}

// A staged row for column_sum (ranking_math.h): w and coefficients a, every entry valid.
template <typename T>
struct StagedRow {
  const T* w_;
  const T* a_;
  T w(int64_t k) const { return w_[k]; }
  T c(int64_t k) const { return a_[k]; }
  bool live(int64_t) const { return true; }
};

// sum_{k != j} sigma((s_k - s_j) / tau) and sum_{j != k} sigma'(..) (a_j - a_k) of one column, pair by
// pair: for the columns whose staged score is infinite (see column_sum).
template <typename T>
T rank_column(const T* w, int64_t n, int64_t j) {
  return column_sum<PairSigmoid<T>, false, T>(StagedRow<T>{w, nullptr}, n, j);
}
template <typename T>
T grad_column(const T* w, const T* a, int64_t n, int64_t k) {
  return column_sum<PairSigmoid<T>, true, T>(StagedRow<T>{w, a}, n, k);
}

// sum_k sigma((s_k - s_j) / tau) over the whole staged row (the k == j term included).
template <typename T>
inline T rank_sweep(const T* w, int64_t n, T wj) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < n; ++k) acc += PairSigmoid<T>::value(w[k] - wj);
  return acc;
}

// sum_j sigma'((s_j - s_k) / tau) * (a_j - a_k): the smooth-rank backward for column k.
template <typename T>
inline T grad_sweep(const T* w, const T* a, int64_t n, T wk, T ak) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += PairSigmoid<T>::grad(w[j] - wk) * (a[j] - ak);
  return acc;
}

// The same sums for a whole row, each unordered pair evaluated once: sigma(x) + sigma(-x) = 1
// and sigma' is even, so a pair (j, k) serves both columns. Half the work of n full sweeps.
// rank_row: out[j] = sum_{k != j} sigma((s_k - s_j) / tau).
template <typename T>
void rank_row(const T* w, int64_t n, T* out) {
  std::fill(out, out + n, T(0));
  for (int64_t j = 0; j < n; ++j) {
    const T wj = w[j];
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t k = j + 1; k < n; ++k) {
      T to_j, to_k;
      PairSigmoid<T>::value_pair(w[k] - wj, to_j, to_k);
      acc += to_j;
      out[k] += to_k;
    }
    out[j] += acc;
  }
}

// grad_row: out[k] = sum_j sigma'((s_j - s_k) / tau) * (a_j - a_k); a pair adds +t to one column
// and -t to the other.
template <typename T>
void grad_row(const T* w, const T* a, int64_t n, T* out) {
  std::fill(out, out + n, T(0));
  for (int64_t k = 0; k < n; ++k) {
    const T wk = w[k], ak = a[k];
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = k + 1; j < n; ++j) {
      const T t = PairSigmoid<T>::grad(w[j] - wk) * (a[j] - ak);
      acc += t;
      out[j] -= t;
    }
    out[k] += acc;
  }
}

// Whole-row sweeps (each pair once) when there are enough rows to share among threads; otherwise
// one sweep per column, rows split in chunks. Chosen by the shape only, never the thread count:
// the two sum in different orders, and results must not depend on torch.set_num_threads.
constexpr int64_t kWholeRowsMinRows = 16;
inline bool rows_fill_threads(int64_t rows) { return rows >= kWholeRowsMinRows; }

// Runs f(q, begin, end) on column ranges of every row, in parallel over (row, chunk) so that
// both many short rows and a few long rows keep every thread busy. pairs_per_col sizes the grain.
template <typename F>
void for_each_row_chunk(int64_t rows, int64_t cols, int64_t pairs_per_col, const F& f) {
  constexpr int64_t kChunk = 256;
  const int64_t chunks = (cols + kChunk - 1) / kChunk;
  const int64_t pairs_per_task = std::max<int64_t>(1, std::min(cols, kChunk) * pairs_per_col);
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / pairs_per_task);
  at::parallel_for(0, rows * chunks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t q = t / chunks, c = t % chunks;
      f(q, c * kChunk, std::min(cols, (c + 1) * kChunk));
    }
  });
}

// Runs f(q) for every row in parallel; per_row_cost (in simple operations) sizes the grain.
template <typename F>
void for_each_row(int64_t rows, int64_t per_row_cost, const F& f) {
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(1, per_row_cost));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t q = begin; q < end; ++q) f(q);
  });
}

}  // namespace cpu
}  // namespace itr
