// CPU building blocks of the contrastive kernels (InfoNCE, VSE++ triplet): fixed blocks of rows
// (so that column reductions do not depend on the thread count), rows read and written in the
// accumulator type, the column of each row's positive, and vectorised max sweeps that keep NaN.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace itr {
namespace cpu {

constexpr int64_t kRowBlock = 64;  // rows per column partial: fixed, so results do not depend on threads

inline int64_t row_blocks(int64_t rows) { return (rows + kRowBlock - 1) / kRowBlock; }

// Runs f(block, first_row, end_row, scratch) over the fixed row blocks in parallel; scratch holds
// 2 * cols elements of T per task (a row read and a row written in T).
template <typename T, typename F>
void for_each_row_block(int64_t rows, int64_t cols, const F& f) {
  const int64_t blocks = row_blocks(rows);
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(1, kRowBlock * cols));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    std::vector<T> scratch(2 * cols);
    for (int64_t b = b0; b < b1; ++b) f(b, b * kRowBlock, std::min(rows, (b + 1) * kRowBlock), scratch.data());
  });
}

// Runs f(begin, end) over the B columns whose block partials (`blocks` per column) are merged: in
// parallel only where that is worth a parallel region (2^16 merges per task), serially otherwise.
template <typename F>
void for_each_merged_column(int64_t cols, int64_t blocks, const F& f) {
  at::parallel_for(0, cols, std::max<int64_t>(256, (int64_t(1) << 16) / std::max<int64_t>(1, blocks)), f);
}

// Row i of a contiguous (rows, cols) matrix in T: in place when the types agree, else converted into buf.
template <typename T, typename scalar_t>
const T* load_row(const scalar_t* s, int64_t cols, int64_t i, T* buf) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    return s + i * cols;
  } else {
    for (int64_t j = 0; j < cols; ++j) buf[j] = static_cast<T>(s[i * cols + j]);
    return buf;
  }
}

// Where to compute output row i in T (in place when the types agree); store_row converts it.
template <typename T, typename scalar_t>
T* out_row(scalar_t* o, int64_t cols, int64_t i, T* buf) {
  if constexpr (std::is_same_v<T, scalar_t>) return o + i * cols;
  else return buf;
}

template <typename T, typename scalar_t>
void store_row(scalar_t* o, int64_t cols, int64_t i, const T* row) {
  if constexpr (!std::is_same_v<T, scalar_t>)
    for (int64_t j = 0; j < cols; ++j) o[i * cols + j] = static_cast<scalar_t>(row[j]);
}

// The column of each row's positive as int64 (rectangular scores); checked against cols.
inline at::Tensor positive_columns(const at::Tensor& positives, int64_t cols) {
  at::Tensor p = positives.to(at::kLong).contiguous();
  if (p.numel() > 0) {
    const int64_t lo = p.min().item<int64_t>(), hi = p.max().item<int64_t>();
    TORCH_CHECK_VALUE(lo >= 0 && hi < cols, "positives must hold column indices in [0, ", cols, "), got [", lo,
                      ", ", hi, "]");
  }
  return p;
}

// max over r[begin, end), NaN if one is NaN.
template <typename T>
T max_or_nan(const T* r, int64_t begin, int64_t end) {
  T m = -INFINITY;
  int nan = 0;
#pragma omp simd reduction(max : m) reduction(| : nan)
  for (int64_t j = begin; j < end; ++j) {
    m = r[j] > m ? r[j] : m;
    nan |= r[j] != r[j];
  }
  return nan ? T(NAN) : m;
}

// cm[j] = max(cm[j], r[j]) over j in [0, n), NaN sticky: a block's column maxima.
template <typename T>
void fold_max_or_nan(const T* r, int64_t n, T* cm) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const T x = r[j], c = cm[j];
    cm[j] = (x > c || x != x) ? x : c;
  }
}

template <typename T>
T merge_max_or_nan(T a, T b) {
  return (b > a || b != b) ? b : a;
}

}  // namespace cpu
}  // namespace itr
