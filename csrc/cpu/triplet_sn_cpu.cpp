// CPU kernels of itr_kernels::triplet_sn and its backward (docs/bcls.md §1, Triplet-SN; the math
// in bcls_math.h). Both directions in one pass over S: rows give the image-to-text shifted sums, and
// column partials over fixed blocks of rows, merged in block order, the text-to-image ones
// (deterministic). O(B) saved statistics per direction; the backward recomputes the weights.
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

template <typename T, typename scalar_t>
std::vector<T> diagonal_of(const scalar_t* s, int64_t B) {
  std::vector<T> d(B);
  for (int64_t i = 0; i < B; ++i) d[i] = static_cast<T>(s[i * B + i]);
  return d;
}

std::tuple<at::Tensor, at::Tensor> triplet_sn_cpu(const at::Tensor& scores, const c10::optional<at::Tensor>& relevance,
                                                  double margin, double temperature, double rho) {
  check_triplet_sn_args(scores, relevance, margin, temperature, rho);
  const at::Tensor S = scores.contiguous();
  const int64_t B = S.size(0);
  const auto acc_dtype = S.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor loss = at::empty({2, B}, S.options());
  at::Tensor stats = at::empty({2, 3, B}, S.options().dtype(acc_dtype));
  if (B == 0) return {loss, stats};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, S.scalar_type(), "triplet_sn_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* s = S.const_data_ptr<scalar_t>();
    const at::Tensor R = relevance_as<T>(relevance);
    const T* r = R.defined() ? R.const_data_ptr<T>() : nullptr;
    const T k = static_cast<T>(kLog2e / temperature), rh = static_cast<T>(rho);
    const std::vector<T> pos = diagonal_of<T>(s, B);
    const int64_t blocks = (B + kRowBlock - 1) / kRowBlock;
    std::vector<ShiftedSum<T>> rows(B), col_part(blocks * B);
    std::vector<char> col_any(blocks * B, 0);  // whether a block's part of column j has a negative
    for_each_row(blocks, kRowBlock * B, [&](int64_t blk) {
      ShiftedSum<T>* cols = col_part.data() + blk * B;
      char* any = col_any.data() + blk * B;
      for (int64_t i = blk * kRowBlock; i < std::min(B, (blk + 1) * kRowBlock); ++i) {
        bool row_any = false;
        for (int64_t j = 0; j < B; ++j) {
          const T sij = static_cast<T>(s[i * B + j]);
          if (soft_negative(j, i, r, i * B + j, rh)) {  // image i's negatives
            rows[i].add(sij, k);
            row_any = true;
          }
          if (soft_negative(i, j, r, i * B + j, rh)) {  // caption j's negatives are the images i != j
            cols[j].add(sij, k);
            any[j] = 1;
          }
        }
        mark_nan_positive(rows[i], pos[i], row_any);
      }
      for (int64_t j = 0; j < B; ++j) mark_nan_positive(cols[j], pos[j], any[j] != 0);
    });
    scalar_t* out = loss.mutable_data_ptr<scalar_t>();
    T* st = stats.mutable_data_ptr<T>();  // per direction: shift, 1 / total, negatives' share
    for_each_row(B, blocks, [&](int64_t q) {
      ShiftedSum<T> col;
      for (int64_t blk = 0; blk < blocks; ++blk) col.merge(col_part[blk * B + q], k);
      const ShiftedSum<T>* dir[2] = {&rows[q], &col};
      for (int d = 0; d < 2; ++d) {
        T* sd = st + 3 * B * d;
        out[B * d + q] = static_cast<scalar_t>(
            triplet_sn_finish(pos[q], dir[d]->max, dir[d]->sum, margin, temperature, sd[B + q], sd[2 * B + q]));
        sd[q] = dir[d]->max;
      }
    });
  });
  return {loss, stats};
}

at::Tensor triplet_sn_backward_cpu(const at::Tensor& grad, const at::Tensor& scores,
                                   const c10::optional<at::Tensor>& relevance, const at::Tensor& stats, double margin,
                                   double temperature, double rho) {
  check_triplet_sn_backward_args(grad, scores, relevance, stats, margin, temperature, rho);
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
    const at::Tensor St = stats.to(c10::CppTypeToScalarType<T>::value).contiguous();
    const T* g = G.const_data_ptr<T>();
    const T* row = St.const_data_ptr<T>();  // shift, 1 / total, negatives' share of each direction
    const T* col = row + 3 * B;
    const T k = static_cast<T>(kLog2e / temperature), rh = static_cast<T>(rho);
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    for_each_row(B, 4 * B, [&](int64_t i) {
      for (int64_t j = 0; j < B; ++j) {
        const T sij = static_cast<T>(s[i * B + j]);
        T v = 0;
        if (soft_negative(j, i, r, i * B + j, rh)) v += g[i] * triplet_sn_weight(sij, row[i], row[B + i], k);
        if (soft_negative(i, j, r, i * B + j, rh)) v += g[B + j] * triplet_sn_weight(sij, col[j], col[B + j], k);
        if (i == j) v = -(g[i] * row[2 * B + i] + g[B + i] * col[2 * B + i]);
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
