// CPU kernels of the Kendall ranking loss (docs/bcls.md §2): the full pair form, fused with its
// gradient like smooth_ndcg, and the SW-HS selection (sort by relevance, then per window pair the
// hardest pair); the SW-HS terms themselves are a gather in Python, so autograd scatters them.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/isa.h"
#include "cpu/row_sweeps.h"
#include "itr_kernels/bcls_math.h"

namespace itr {
namespace cpu {
namespace {

// One row of the full form, each unordered pair once: returns the sum of phi over the pairs whose
// relevance gap exceeds `gap`, adds their count, and (if g) d sum / d s into g.
template <Phi kPhi, typename T>
T kendall_row(const T* s, const T* r, const T* live, int64_t n, T gap, T margin, T temperature, T* g,
              int64_t& count) {
  T total = 0;
  int64_t pairs = 0;
  if (g) std::fill(g, g + n, T(0));
  for (int64_t j = 0; j < n; ++j) {
    const T sj = s[j], rj = r[j], lj = live[j];
    T acc = 0, gj = 0;
    int64_t cnt = 0;
#pragma omp simd reduction(+ : acc, gj, cnt)
    for (int64_t k = j + 1; k < n; ++k) {
      // +1: j more relevant (x = s_k - s_j); -1: k more relevant (x = s_j - s_k); 0: no pair.
      const T dir = lj * live[k] * (T(rj - r[k] > gap) - T(r[k] - rj > gap));
      const T x = dir * (s[k] - sj);
      const bool in = dir != T(0);
      acc += in ? phi_value(kPhi, x, margin, temperature) : T(0);
      cnt += in;
      if (g) {
        const T d = in ? dir * phi_grad(kPhi, x, margin, temperature) : T(0);
        g[k] += d;
        gj -= d;
      }
    }
    total += acc;
    pairs += cnt;
    if (g) g[j] += gj;
  }
  count += pairs;
  return total;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kendall_full_cpu(const at::Tensor& scores, const at::Tensor& relevance,
                                                                const c10::optional<at::Tensor>& valid, double gap,
                                                                int64_t phi, double margin, double temperature,
                                                                bool compute_grad) {
  check_kendall_full_args(scores, relevance, valid, gap, phi, temperature);
  const at::Tensor S = scores.contiguous();
  const at::Tensor V = valid.has_value() ? valid->contiguous() : at::Tensor();
  const int64_t Q = S.size(0), N = S.size(1);
  // Sums in the accumulator type: a row's sum grows with N^2 and overflows float16 (65504) early.
  const auto acc_dtype = S.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor sums = at::zeros({Q}, S.options().dtype(acc_dtype));
  at::Tensor counts = at::zeros({Q}, S.options().dtype(at::kLong));
  at::Tensor grad = at::zeros(compute_grad ? S.sizes() : at::IntArrayRef{0}, S.options());
  if (S.numel() == 0) return {sums, counts, grad};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, S.scalar_type(), "kendall_full_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const at::Tensor Rt = relevance.to(c10::CppTypeToScalarType<T>::value).contiguous();
    const scalar_t* s = S.const_data_ptr<scalar_t>();
    const T* r = Rt.const_data_ptr<T>();
    const bool* v = V.defined() ? V.const_data_ptr<bool>() : nullptr;
    T* sum_p = sums.mutable_data_ptr<T>();
    int64_t* count_p = counts.mutable_data_ptr<int64_t>();
    scalar_t* grad_p = compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr;
    const T gp = static_cast<T>(gap), mp = static_cast<T>(margin), tp = static_cast<T>(temperature);
    for_each_row(Q, N * N / 2, [&](int64_t q) {
      // Masked candidates: live = 0 and score 0, so even a NaN there stays out of every pair.
      std::vector<T> row(N), live(N), g(compute_grad ? N : 0);
      for (int64_t j = 0; j < N; ++j) {
        live[j] = !v || v[q * N + j] ? T(1) : T(0);
        row[j] = live[j] != T(0) ? static_cast<T>(s[q * N + j]) : T(0);
      }
      T* gq = compute_grad ? g.data() : nullptr;
      int64_t count = 0;
      T total;
      switch (static_cast<Phi>(phi)) {
        case Phi::kHinge: total = kendall_row<Phi::kHinge>(row.data(), r + q * N, live.data(), N, gp, mp, tp, gq, count); break;
        case Phi::kLogistic: total = kendall_row<Phi::kLogistic>(row.data(), r + q * N, live.data(), N, gp, mp, tp, gq, count); break;
        default: total = kendall_row<Phi::kTanh>(row.data(), r + q * N, live.data(), N, gp, mp, tp, gq, count); break;
      }
      sum_p[q] = total;
      count_p[q] = count;
      if (gq)
        for (int64_t j = 0; j < N; ++j) grad_p[q * N + j] = static_cast<scalar_t>(gq[j]);
    });
  });
  return {sums, counts, grad};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kendall_swhs_cpu(const at::Tensor& scores, const at::Tensor& relevance,
                                                                const c10::optional<at::Tensor>& valid, int64_t window,
                                                                int64_t stride, double gap) {
  check_swhs_args(scores, relevance, valid, window, stride, gap);
  const at::Tensor S = scores.contiguous();
  const at::Tensor V = valid.has_value() ? valid->contiguous() : at::Tensor();
  const int64_t Q = S.size(0), N = S.size(1);
  const int64_t steps = swhs_steps(N, window, stride);
  at::Tensor upper = at::zeros({Q, steps}, S.options().dtype(at::kLong));
  at::Tensor lower = at::zeros({Q, steps}, S.options().dtype(at::kLong));
  at::Tensor keep = at::zeros({Q, steps}, S.options().dtype(at::kBool));
  if (Q == 0 || steps == 0) return {upper, lower, keep};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, S.scalar_type(), "kendall_swhs_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const at::Tensor Rt = relevance.to(c10::CppTypeToScalarType<T>::value).contiguous();
    const scalar_t* s = S.const_data_ptr<scalar_t>();
    const T* r = Rt.const_data_ptr<T>();
    const bool* v = V.defined() ? V.const_data_ptr<bool>() : nullptr;
    int64_t* up = upper.mutable_data_ptr<int64_t>();
    int64_t* lo = lower.mutable_data_ptr<int64_t>();
    bool* kp = keep.mutable_data_ptr<bool>();
    const T g = static_cast<T>(gap);
    for_each_row(Q, 16 * N, [&](int64_t q) {
      const T* rq = r + q * N;
      const scalar_t* sq = s + q * N;
      std::vector<int64_t> order;
      order.reserve(N);
      // Relevance descending, ties to the lower column (docs/README.md), NaN last.
      if (std::is_same_v<T, float> && N <= int64_t{UINT32_MAX}) {
        std::vector<uint64_t> keys;
        keys.reserve(N);
        for (int64_t j = 0; j < N; ++j)
          if (!v || v[q * N + j]) keys.push_back(rank_key(static_cast<float>(rq[j]), static_cast<uint32_t>(j)));
        std::sort(keys.begin(), keys.end());
        for (const uint64_t k : keys) order.push_back(static_cast<int64_t>(k & 0xFFFFFFFFu));
      } else {
        for (int64_t j = 0; j < N; ++j)
          if (!v || v[q * N + j]) order.push_back(j);
        std::sort(order.begin(), order.end(), [rq](int64_t a, int64_t b) { return ranks_before(rq[a], a, rq[b], b); });
      }
      const int64_t n = static_cast<int64_t>(order.size());
      for (int64_t t = 0; t < swhs_steps(n, window, stride); ++t) {
        const int64_t u0 = t * stride, u1 = std::min(u0 + window, n), l0 = u0 + window, l1 = std::min(l0 + window, n);
        int64_t a = order[u0], b = order[l0];  // hardest: lowest-scored upper, highest-scored lower
        for (int64_t i = u0 + 1; i < u1; ++i) {
          const int64_t c = order[i];
          if (swhs_harder(true, static_cast<T>(sq[c]), c, static_cast<T>(sq[a]), a)) a = c;
        }
        for (int64_t i = l0 + 1; i < l1; ++i) {
          const int64_t c = order[i];
          if (swhs_harder(false, static_cast<T>(sq[c]), c, static_cast<T>(sq[b]), b)) b = c;
        }
        up[q * steps + t] = a;
        lo[q * steps + t] = b;
        kp[q * steps + t] = rq[order[u1 - 1]] - rq[order[l0]] > g;  // min R(U) - max R(L) > gap
      }
    });
  });
  return {upper, lower, keep};
}

}  // namespace

ITR_CPU_KERNELS(m) {
  m.impl("kendall_full", &kendall_full_cpu);
  m.impl("kendall_swhs", &kendall_swhs_cpu);
}

}  // namespace cpu
}  // namespace itr
