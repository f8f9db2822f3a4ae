// CPU kernels of itr_kernels::infonce and its backward (docs/contrastive.md §2). Square scores: both
// directions from one exponential sweep over S, after a sweep for the row and column maxima (cheap:
// no exponentials); rows give the image-to-text sums, column partials over fixed blocks of rows,
// added in block order, the text-to-image ones (deterministic). The exponentials dominate, so one
// per score serves both directions when a common shift keeps every query's terms accurate
// (kSharedSpan), else each direction takes its own (two per score). O(B) saved statistics; the
// backward recomputes the weights in one sweep.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "checks.h"
#include "cpu/isa.h"
#include "cpu/contrastive_rows.h"
#include "itr_kernels/contrastive_math.h"

namespace itr {
namespace cpu {
namespace {

// sum_j 2^((r_j - shift) * k) over [begin, end), also added into col[j].
template <typename T>
T shared_sweep(const T* r, int64_t begin, int64_t end, T shift, T k, T* col) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = begin; j < end; ++j) {
    const T e = exp2_shifted((r[j] - shift) * k);
    acc += e;
    col[j] += e;
  }
  return acc;
}

// Each direction with its own shift: the row's into the returned sum, column j's into col[j].
template <typename T>
T split_sweep(const T* r, int64_t begin, int64_t end, T row_shift, const T* col_shift, T k, T* col) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = begin; j < end; ++j) {
    acc += exp2_shifted((r[j] - row_shift) * k);
    col[j] += exp2_shifted((r[j] - col_shift[j]) * k);
  }
  return acc;
}

// Rows only.
template <typename T>
T row_sweep(const T* r, int64_t begin, int64_t end, T shift, T k) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = begin; j < end; ++j) acc += exp2_shifted((r[j] - shift) * k);
  return acc;
}

// A query's loss and its statistics (shift, 1 / total, negatives' share) at column q of `stats`
// (one direction's (3, Q) block).
template <typename T, typename scalar_t>
void finish_query(T pos_score, T shift, T neg, T k, int64_t q, int64_t n_queries, scalar_t* loss, T* stats) {
  T inv_total, neg_share;
  loss[q] = static_cast<scalar_t>(infonce_finish(pos_score, shift, neg, k, inv_total, neg_share));
  stats[q] = shift;
  stats[n_queries + q] = inv_total;
  stats[2 * n_queries + q] = neg_share;
}

template <typename scalar_t, typename T>
void infonce_square(const scalar_t* s, int64_t B, T k, scalar_t* loss, T* stats) {
  const int64_t blocks = row_blocks(B);
  // Sweep 1: row maxima and per-block column maxima (the shifts).
  std::vector<T> row_max(B), col_max(B), col_part(blocks * B);
  for_each_row_block<T>(B, B, [&](int64_t blk, int64_t i0, int64_t i1, T* buf) {
    T* cm = col_part.data() + blk * B;
    std::fill(cm, cm + B, -INFINITY);
    for (int64_t i = i0; i < i1; ++i) {
      const T* r = load_row(s, B, i, buf);
      row_max[i] = max_or_nan(r, 0, B);
      fold_max_or_nan(r, B, cm);
    }
  });
  for_each_merged_column(B, blocks, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      T m = -INFINITY;
      for (int64_t blk = 0; blk < blocks; ++blk) m = merge_max_or_nan(m, col_part[blk * B + j]);
      col_max[j] = m;
    }
  });
  T top = -INFINITY, low = INFINITY;
  bool finite = true;
  for (int64_t i = 0; i < B; ++i) {
    finite = finite && std::isfinite(row_max[i]) && std::isfinite(col_max[i]);
    top = std::max(top, row_max[i]);
    low = std::min(low, std::min(row_max[i], col_max[i]));
  }
  const bool shared = finite && (top - low) * k <= T(kSharedSpan);

  // Sweep 2: the negatives' sums (the diagonal left out of both directions).
  std::vector<T> row_neg(B);
  std::fill(col_part.begin(), col_part.end(), T(0));
  for_each_row_block<T>(B, B, [&](int64_t blk, int64_t i0, int64_t i1, T* buf) {
    T* cp = col_part.data() + blk * B;
    for (int64_t i = i0; i < i1; ++i) {
      const T* r = load_row(s, B, i, buf);
      row_neg[i] = shared ? shared_sweep(r, 0, i, top, k, cp) + shared_sweep(r, i + 1, B, top, k, cp)
                          : split_sweep(r, 0, i, row_max[i], col_max.data(), k, cp) +
                                split_sweep(r, i + 1, B, row_max[i], col_max.data(), k, cp);
    }
  });
  for_each_merged_column(B, blocks, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      T col_neg = 0;
      for (int64_t blk = 0; blk < blocks; ++blk) col_neg += col_part[blk * B + q];
      const T pos = static_cast<T>(s[q * B + q]);
      finish_query(pos, shared ? top : row_max[q], row_neg[q], k, q, B, loss, stats);
      finish_query(pos, shared ? top : col_max[q], col_neg, k, q, B, loss + B, stats + 3 * B);
    }
  });
}

template <typename scalar_t, typename T>
void infonce_rows(const scalar_t* s, int64_t Q, int64_t N, const int64_t* positives, T k, scalar_t* loss, T* stats) {
  for_each_row_block<T>(Q, N, [&](int64_t, int64_t q0, int64_t q1, T* buf) {
    for (int64_t q = q0; q < q1; ++q) {
      const T* r = load_row(s, N, q, buf);
      const int64_t p = positives[q];
      const T shift = max_or_nan(r, 0, N);
      finish_query(r[p], shift, row_sweep(r, 0, p, shift, k) + row_sweep(r, p + 1, N, shift, k), k, q, Q, loss,
                   stats);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> infonce_cpu(const at::Tensor& scores, const c10::optional<at::Tensor>& positives,
                                               double temperature) {
  check_infonce_args(scores, positives, temperature);
  const at::Tensor S = scores.contiguous();
  const int64_t Q = S.size(0), N = S.size(1), D = query_directions(positives);
  const at::Tensor P = positives.has_value() ? positive_columns(*positives, N) : at::Tensor();
  const auto acc_dtype = S.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor loss = at::empty({D, Q}, S.options());
  at::Tensor stats = at::empty({D, 3, Q}, S.options().dtype(acc_dtype));
  if (Q == 0) return {loss, stats};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, S.scalar_type(), "infonce_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const T k = static_cast<T>(kLog2e / temperature);
    const scalar_t* s = S.const_data_ptr<scalar_t>();
    if (P.defined())
      infonce_rows(s, Q, N, P.const_data_ptr<int64_t>(), k, loss.mutable_data_ptr<scalar_t>(),
                   stats.mutable_data_ptr<T>());
    else
      infonce_square(s, Q, k, loss.mutable_data_ptr<scalar_t>(), stats.mutable_data_ptr<T>());
  });
  return {loss, stats};
}

template <typename scalar_t, typename T>
void infonce_rows_backward(const scalar_t* s, int64_t Q, int64_t N, const int64_t* p, const T* g, const T* st, T k,
                           T inv_t, scalar_t* o) {
  for_each_row_block<T>(Q, N, [&](int64_t, int64_t q0, int64_t q1, T* buf) {
    for (int64_t q = q0; q < q1; ++q) {
      const T* r = load_row(s, N, q, buf);
      T* w = out_row(o, N, q, buf + N);
      const T shift = st[q], a = g[q] * inv_t * st[Q + q];
#pragma omp simd
      for (int64_t j = 0; j < N; ++j) w[j] = exp2_shifted((r[j] - shift) * k) * a;
      w[p[q]] = -inv_t * g[q] * st[2 * Q + q];
      store_row(o, N, q, w);
    }
  });
}

// Row i's weights: 2^((s - shift_i) k) * a_i (image-to-text) + 2^((s - shift_j) k) * b_j
// (text-to-image), a_i and b_j the upstream gradient over T and the query's total.
template <typename scalar_t, typename T>
void infonce_square_backward(const scalar_t* s, int64_t B, const T* g, const T* st, T k, T inv_t, scalar_t* o) {
  const T* row_st = st;  // per direction: shift, 1 / total, negatives' share
  const T* col_st = st + 3 * B;
  std::vector<T> b(B);
  bool shared = std::isfinite(row_st[0]);
  for (int64_t j = 0; j < B; ++j) {
    b[j] = g[B + j] * inv_t * col_st[B + j];
    shared = shared && row_st[j] == row_st[0] && col_st[j] == row_st[0];
  }
  const T* bp = b.data();
  for_each_row_block<T>(B, B, [&](int64_t, int64_t i0, int64_t i1, T* buf) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* r = load_row(s, B, i, buf);
      T* w = out_row(o, B, i, buf + B);
      const T shift = row_st[i], a = g[i] * inv_t * row_st[B + i];
      if (shared) {  // one exponential per score serves both directions
#pragma omp simd
        for (int64_t j = 0; j < B; ++j) w[j] = exp2_shifted((r[j] - shift) * k) * (a + bp[j]);
      } else {
#pragma omp simd
        for (int64_t j = 0; j < B; ++j)
          w[j] = exp2_shifted((r[j] - shift) * k) * a + exp2_shifted((r[j] - col_st[j]) * k) * bp[j];
      }
      w[i] = -inv_t * (g[i] * row_st[2 * B + i] + g[B + i] * col_st[2 * B + i]);
      store_row(o, B, i, w);
    }
  });
}

at::Tensor infonce_backward_cpu(const at::Tensor& grad, const at::Tensor& scores,
                                const c10::optional<at::Tensor>& positives, const at::Tensor& stats,
                                double temperature) {
  check_infonce_backward_args(grad, scores, positives, stats, temperature);
  const at::Tensor S = scores.contiguous();
  const int64_t Q = S.size(0), N = S.size(1);
  const at::Tensor P = positives.has_value() ? positive_columns(*positives, N) : at::Tensor();
  at::Tensor out = at::empty({Q, N}, S.options());
  if (Q == 0 || N == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, S.scalar_type(), "infonce_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto acc = c10::CppTypeToScalarType<T>::value;
    const at::Tensor G = grad.to(acc).contiguous(), St = stats.to(acc).contiguous();
    const T k = static_cast<T>(kLog2e / temperature), inv_t = static_cast<T>(1.0 / temperature);
    if (P.defined())
      infonce_rows_backward(S.const_data_ptr<scalar_t>(), Q, N, P.const_data_ptr<int64_t>(), G.const_data_ptr<T>(),
                            St.const_data_ptr<T>(), k, inv_t, out.mutable_data_ptr<scalar_t>());
    else
      infonce_square_backward(S.const_data_ptr<scalar_t>(), Q, G.const_data_ptr<T>(), St.const_data_ptr<T>(), k,
                              inv_t, out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

ITR_CPU_KERNELS(m) {
  m.impl("infonce", &infonce_cpu);
  m.impl("infonce_backward", &infonce_backward_cpu);
}

}  // namespace cpu
}  // namespace itr
