// CPU kernels of itr_kernels::smooth_rank and its backward (docs/smooth_rank_ndcg.md §1).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "checks.h"
#include "cpu/isa.h"
#include "cpu/row_sweeps.h"

namespace itr {
namespace cpu {
namespace {

at::Tensor smooth_rank_cpu(const at::Tensor& scores, const c10::optional<at::Tensor>& valid, double tau) {
  check_smooth_rank_args(scores, valid, tau);
  const at::Tensor S = scores.contiguous();
  const at::Tensor V = valid.has_value() ? valid->contiguous() : at::Tensor();
  at::Tensor out = at::zeros(S.sizes(), S.options());  // masked entries stay 0
  const int64_t Q = S.size(0), N = S.size(1);
  if (S.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, S.scalar_type(), "smooth_rank_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* s = S.const_data_ptr<scalar_t>();
    const bool* v = V.defined() ? V.const_data_ptr<bool>() : nullptr;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    // Row q's valid candidates, compacted: staged scores w, their columns, how many (m).
    std::vector<T> w(Q * N);
    std::vector<int64_t> cols(Q * N), m(Q);
    std::vector<uint8_t> nan_row(Q);
    const T scale = PairSigmoid<T>::scale(static_cast<T>(tau));
    for_each_row(Q, 2 * N, [&](int64_t q) {
      bool has_nan;
      m[q] = stage_row(s + q * N, v ? v + q * N : nullptr, N, scale, w.data() + q * N, cols.data() + q * N, has_nan);
      nan_row[q] = has_nan;
    });
    // Entry i of row q's compacted row, from its sum over the others (computed pair by pair for an
    // infinite staged score, whose sweep sums hold inf - inf).
    const auto write = [&](int64_t q, int64_t i, T sum_over_others) {
      const T* wq = w.data() + q * N;
      T r;
      if (nan_row[q]) r = std::numeric_limits<T>::quiet_NaN();
      else if (!std::isfinite(wq[i])) r = T(1) + rank_column(wq, m[q], i);
      else r = T(1) + sum_over_others;
      o[q * N + cols[q * N + i]] = static_cast<scalar_t>(r);
    };
    if (rows_fill_threads(Q)) {
      for_each_row(Q, N * N / 2, [&](int64_t q) {
        std::vector<T> sums(m[q]);
        rank_row(w.data() + q * N, m[q], sums.data());
        for (int64_t i = 0; i < m[q]; ++i) write(q, i, sums[i]);
      });
    } else {
      const T self_term = PairSigmoid<T>::value(T(0));  // the k == j term that rank_sweep includes
      for_each_row_chunk(Q, N, N, [&](int64_t q, int64_t begin, int64_t end) {
        const T* wq = w.data() + q * N;
        for (int64_t i = begin; i < std::min(end, m[q]); ++i) write(q, i, rank_sweep(wq, m[q], wq[i]) - self_term);
      });
    }
  });
  return out;
}

at::Tensor smooth_rank_backward_cpu(const at::Tensor& grad, const at::Tensor& scores,
                                    const c10::optional<at::Tensor>& valid, double tau) {
  check_smooth_rank_args(scores, valid, tau);
  check_like_scores(grad, scores, "grad");
  const at::Tensor S = scores.contiguous();
  const at::Tensor G = grad.contiguous();
  const at::Tensor V = valid.has_value() ? valid->contiguous() : at::Tensor();
  at::Tensor out = at::zeros(S.sizes(), S.options());  // masked entries stay 0
  const int64_t Q = S.size(0), N = S.size(1);
  if (S.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, S.scalar_type(), "smooth_rank_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* s = S.const_data_ptr<scalar_t>();
    const at::Tensor Gt = G.to(c10::CppTypeToScalarType<T>::value);
    const T* g = Gt.const_data_ptr<T>();
    const bool* v = V.defined() ? V.const_data_ptr<bool>() : nullptr;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    std::vector<T> w(Q * N), a(Q * N);  // compacted: staged scores and upstream gradients
    std::vector<int64_t> cols(Q * N), m(Q);
    std::vector<uint8_t> nan_row(Q);
    const T scale = PairSigmoid<T>::scale(static_cast<T>(tau));
    for_each_row(Q, 3 * N, [&](int64_t q) {
      bool has_nan;
      const int64_t* cq = cols.data() + q * N;
      m[q] = stage_row(s + q * N, v ? v + q * N : nullptr, N, scale, w.data() + q * N, cols.data() + q * N, has_nan);
      nan_row[q] = has_nan;
      for (int64_t i = 0; i < m[q]; ++i) a[q * N + i] = g[q * N + cq[i]];
    });
    const T inv_tau = static_cast<T>(1.0 / tau);
    const auto write = [&](int64_t q, int64_t i, T sum) {
      const T* wq = w.data() + q * N;
      T r;
      if (nan_row[q]) r = std::numeric_limits<T>::quiet_NaN();
      else if (!std::isfinite(wq[i])) r = inv_tau * grad_column(wq, a.data() + q * N, m[q], i);
      else r = inv_tau * sum;
      o[q * N + cols[q * N + i]] = static_cast<scalar_t>(r);
    };
    if (rows_fill_threads(Q)) {
      for_each_row(Q, N * N / 2, [&](int64_t q) {
        std::vector<T> sums(m[q]);
        grad_row(w.data() + q * N, a.data() + q * N, m[q], sums.data());
        for (int64_t i = 0; i < m[q]; ++i) write(q, i, sums[i]);
      });
    } else {
      for_each_row_chunk(Q, N, N, [&](int64_t q, int64_t begin, int64_t end) {
        const T* wq = w.data() + q * N;
        const T* aq = a.data() + q * N;
        for (int64_t i = begin; i < std::min(end, m[q]); ++i) write(q, i, grad_sweep(wq, aq, m[q], wq[i], aq[i]));
      });
    }
  });
  return out;
}

}  // namespace

ITR_CPU_KERNELS(m) {
  m.impl("smooth_rank", &smooth_rank_cpu);
  m.impl("smooth_rank_backward", &smooth_rank_backward_cpu);
}

}  // namespace cpu
}  // namespace itr
