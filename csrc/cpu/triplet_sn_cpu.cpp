// CPU kernels of itr_kernels::triplet_sn and its backward (docs/bcls.md §1, Triplet-SN). Both
// directions in one pass over S: rows give the image-to-text log-sum-exps, and column partials over
// fixed blocks of rows, merged in block order, give the text-to-image ones (deterministic).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "checks.h"
#include "cpu/isa.h"
#include "cpu/row_sweeps.h"
#include "itr_kernels/bcls_math.h"

namespace itr {
namespace cpu {
namespace {

constexpr int64_t kRowBlock = 64;  // rows per column partial: fixed, so results do not depend on threads

template <typename T>
at::Tensor relevance_as(const c10::optional<at::Tensor>& relevance) {
  return relevance.has_value() ? relevance->to(c10::CppTypeToScalarType<T>::value).contiguous() : at::Tensor();
}

std::tuple<at::Tensor, at::Tensor> triplet_sn_cpu(const at::Tensor& scores, const c10::optional<at::Tensor>& relevance,
                                                  double margin, double temperature, double rho) {
  check_triplet_sn_args(scores, relevance, temperature);
  const at::Tensor S = scores.contiguous();
  const int64_t B = S.size(0);
  const auto acc_dtype = S.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor loss = at::empty({2, B}, S.options());
  at::Tensor lse = at::empty({2, B}, S.options().dtype(acc_dtype));
  if (B == 0) return {loss, lse};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, S.scalar_type(), "triplet_sn_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* s = S.const_data_ptr<scalar_t>();
    const at::Tensor R = relevance_as<T>(relevance);
    const T* r = R.defined() ? R.const_data_ptr<T>() : nullptr;
    const T m = static_cast<T>(margin), inv_t = static_cast<T>(1.0 / temperature), rh = static_cast<T>(rho);
    const int64_t blocks = (B + kRowBlock - 1) / kRowBlock;
    std::vector<LogSumExp<T>> row_lse(B), col_part(blocks * B);
    for_each_row(blocks, kRowBlock * B, [&](int64_t blk) {
      LogSumExp<T>* cols = col_part.data() + blk * B;
      for (int64_t i = blk * kRowBlock; i < std::min(B, (blk + 1) * kRowBlock); ++i) {
        const T pos_i = static_cast<T>(s[i * B + i]);
        for (int64_t j = 0; j < B; ++j) {
          const T sij = static_cast<T>(s[i * B + j]);
          const T rij = r ? r[i * B + j] : T(0);
          if (soft_negative(j, i, rij, rh)) row_lse[i].add((m + sij - pos_i) * inv_t);  // image i's negatives
          if (soft_negative(i, j, rij, rh))  // caption j's negatives are the images i != j
            cols[j].add((m + sij - static_cast<T>(s[j * B + j])) * inv_t);
        }
      }
    });
    scalar_t* out = loss.mutable_data_ptr<scalar_t>();
    T* lse_p = lse.mutable_data_ptr<T>();
    const T t = static_cast<T>(temperature);
    for_each_row(B, blocks, [&](int64_t j) {
      LogSumExp<T> col;
      for (int64_t blk = 0; blk < blocks; ++blk) col.merge(col_part[blk * B + j]);
      lse_p[j] = row_lse[j].log1p_sum();
      lse_p[B + j] = col.log1p_sum();
      out[j] = static_cast<scalar_t>(t * lse_p[j]);
      out[B + j] = static_cast<scalar_t>(t * lse_p[B + j]);
    });
  });
  return {loss, lse};
}

at::Tensor triplet_sn_backward_cpu(const at::Tensor& grad, const at::Tensor& scores,
                                   const c10::optional<at::Tensor>& relevance, const at::Tensor& lse, double margin,
                                   double temperature, double rho) {
  check_triplet_sn_backward_args(grad, scores, relevance, lse, temperature);
  const at::Tensor S = scores.contiguous();
  const int64_t B = S.size(0);
  at::Tensor out = at::empty({B, B}, S.options());
  if (B == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, S.scalar_type(), "triplet_sn_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* s = S.const_data_ptr<scalar_t>();
    const at::Tensor R = relevance_as<T>(relevance);
    const T* r = R.defined() ? R.const_data_ptr<T>() : nullptr;
    const at::Tensor G = grad.to(c10::CppTypeToScalarType<T>::value).contiguous();
    const at::Tensor L = lse.to(c10::CppTypeToScalarType<T>::value).contiguous();
    const T* g = G.const_data_ptr<T>();
    const T* l = L.const_data_ptr<T>();
    const T m = static_cast<T>(margin), inv_t = static_cast<T>(1.0 / temperature), rh = static_cast<T>(rho);
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    // dL/dS[q, j] = softmax weight p_j of each negative; the positive gets -sum_j p_j = -(1 - e^-lse).
    for_each_row(B, 4 * B, [&](int64_t i) {
      const T pos_i = static_cast<T>(s[i * B + i]);
      for (int64_t j = 0; j < B; ++j) {
        const T sij = static_cast<T>(s[i * B + j]);
        const T rij = r ? r[i * B + j] : T(0);
        T v = 0;
        if (soft_negative(j, i, rij, rh)) v += g[i] * std::exp((m + sij - pos_i) * inv_t - l[i]);
        if (soft_negative(i, j, rij, rh))
          v += g[B + j] * std::exp((m + sij - static_cast<T>(s[j * B + j])) * inv_t - l[B + j]);
        if (i == j) v = -(g[i] * -std::expm1(-l[i]) + g[B + i] * -std::expm1(-l[B + i]));
        o[i * B + j] = static_cast<scalar_t>(v);
      }
    });
  });
  return out;
}

}  // namespace

ITR_CPU_KERNELS(m) {
  m.impl("triplet_sn", &triplet_sn_cpu);
  m.impl("triplet_sn_backward", &triplet_sn_backward_cpu);
}

}  // namespace cpu
}  // namespace itr
