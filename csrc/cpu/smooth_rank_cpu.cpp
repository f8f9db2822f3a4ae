// CPU kernels of itr_kernels::smooth_rank and its backward (docs/smooth_rank_ndcg.md §1).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

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
  at::Tensor out = at::empty(S.sizes(), S.options());
  const int64_t Q = S.size(0), N = S.size(1);
  if (S.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, S.scalar_type(), "smooth_rank_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* s = S.const_data_ptr<scalar_t>();
    const bool* v = V.defined() ? V.const_data_ptr<bool>() : nullptr;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    std::vector<T> w(Q * N);
    std::vector<uint8_t> nan_row(Q);
    const T scale = PairSigmoid<T>::scale(static_cast<T>(tau));
    for_each_row(Q, 2 * N, [&](int64_t q) {
      nan_row[q] = stage_row(s + q * N, v ? v + q * N : nullptr, N, scale, w.data() + q * N);
    });
    const auto write = [&](int64_t q, int64_t j, T sum_over_others) {
      T r;
      if (v && !v[q * N + j]) r = T(0);
      else if (nan_row[q]) r = std::numeric_limits<T>::quiet_NaN();
      else r = T(1) + sum_over_others;
      o[q * N + j] = static_cast<scalar_t>(r);
    };
    if (rows_fill_threads(Q)) {
      for_each_row(Q, N * N / 2, [&](int64_t q) {
        std::vector<T> sums(N);
        rank_row(w.data() + q * N, N, sums.data());
        for (int64_t j = 0; j < N; ++j) write(q, j, sums[j]);
      });
    } else {
      const T self_term = PairSigmoid<T>::value(T(0));  // the k == j term that rank_sweep includes
      for_each_row_chunk(Q, N, N, [&](int64_t q, int64_t begin, int64_t end) {
        const T* wq = w.data() + q * N;
        for (int64_t j = begin; j < end; ++j) write(q, j, rank_sweep(wq, N, wq[j]) - self_term);
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
  at::Tensor out = at::empty(S.sizes(), S.options());
  const int64_t Q = S.size(0), N = S.size(1);
  if (S.numel() == 0) return out;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, S.scalar_type(), "smooth_rank_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* s = S.const_data_ptr<scalar_t>();
    const at::Tensor Gt = G.to(c10::CppTypeToScalarType<T>::value);
    const T* g = Gt.const_data_ptr<T>();
    const bool* v = V.defined() ? V.const_data_ptr<bool>() : nullptr;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    std::vector<T> w(Q * N), a(Q * N);
    std::vector<uint8_t> nan_row(Q);
    const T scale = PairSigmoid<T>::scale(static_cast<T>(tau));
    for_each_row(Q, 3 * N, [&](int64_t q) {
      nan_row[q] = stage_row(s + q * N, v ? v + q * N : nullptr, N, scale, w.data() + q * N);
      for (int64_t j = 0; j < N; ++j) a[q * N + j] = (v && !v[q * N + j]) ? T(0) : g[q * N + j];
    });
    const T inv_tau = static_cast<T>(1.0 / tau);
    const auto write = [&](int64_t q, int64_t k, T sum) {
      T r;
      if (v && !v[q * N + k]) r = T(0);
      else if (nan_row[q]) r = std::numeric_limits<T>::quiet_NaN();
      else r = inv_tau * sum;
      o[q * N + k] = static_cast<scalar_t>(r);
    };
    if (rows_fill_threads(Q)) {
      for_each_row(Q, N * N / 2, [&](int64_t q) {
        std::vector<T> sums(N);
        grad_row(w.data() + q * N, a.data() + q * N, N, sums.data());
        for (int64_t k = 0; k < N; ++k) write(q, k, sums[k]);
      });
    } else {
      for_each_row_chunk(Q, N, N, [&](int64_t q, int64_t begin, int64_t end) {
        const T* wq = w.data() + q * N;
        const T* aq = a.data() + q * N;
        for (int64_t k = begin; k < end; ++k) write(q, k, grad_sweep(wq, aq, N, wq[k], aq[k]));
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
