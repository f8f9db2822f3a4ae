// CPU kernel of itr_kernels::smooth_ndcg (docs/smooth_rank_ndcg.md §2): per-row loss, IDCG and, when asked,
// d loss[q] / d S[q, :] in the same call, so that backward only scales rows by grad_output.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <tuple>
#include <vector>

#include "checks.h"
#include "cpu/isa.h"
#include "cpu/row_sweeps.h"

namespace itr {
namespace cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> smooth_ndcg_cpu(const at::Tensor& scores, const at::Tensor& relevance,
                                                               const c10::optional<at::Tensor>& valid, double tau,
                                                               int64_t k, bool linear_gain, bool compute_grad) {
  check_smooth_ndcg_args(scores, relevance, valid, tau);
  const at::Tensor S = scores.contiguous();
  const at::Tensor V = valid.has_value() ? valid->contiguous() : at::Tensor();
  const int64_t Q = S.size(0), N = S.size(1);
  TORCH_CHECK_VALUE(N <= std::numeric_limits<int32_t>::max(), "scores has too many columns: ", N);
  const auto idcg_dtype = S.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor loss = at::zeros({Q}, S.options());
  at::Tensor idcg = at::zeros({Q}, S.options().dtype(idcg_dtype));
  at::Tensor grad = at::zeros(compute_grad ? S.sizes() : at::IntArrayRef{0}, S.options());
  if (S.numel() == 0) return {loss, idcg, grad};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, S.scalar_type(), "smooth_ndcg_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const at::Tensor Rt = relevance.to(c10::CppTypeToScalarType<T>::value).contiguous();
    const scalar_t* s = S.const_data_ptr<scalar_t>();
    const T* rel = Rt.const_data_ptr<T>();
    const bool* v = V.defined() ? V.const_data_ptr<bool>() : nullptr;
    const bool topk = k > 0 && k < N;
    const int64_t kk = topk ? k : N;

    // Every per-row array below is indexed by position in the row's compacted valid candidates
    // (stage_row): cols[p] is the column of position p, n_valid[q] how many there are.
    std::vector<T> w(Q * N), a(Q * N, T(0)), rhat(Q * N);  // a holds gains, then d loss / d Rhat
    std::vector<int64_t> cols(Q * N), n_valid(Q);
    std::vector<int32_t> gain_pos(Q * N);  // row q: its m[q] gain positions first
    std::vector<int32_t> m(Q);
    std::vector<T> row_idcg(Q);
    std::vector<uint8_t> nan_row(Q);
    // With top-k, the gradient of a position outside the gain set needs only the gain positions:
    // their staged scores and coefficients are packed here (Q * k), so that sweep costs k, not N.
    std::vector<T> w_gain(topk ? Q * kk : 0), a_gain(topk ? Q * kk : 0);
    const T scale = PairSigmoid<T>::scale(static_cast<T>(tau));

    std::vector<T> ideal_discount(kk);  // 1 / log2(1 + i), i = 1..k: the same for every row
    for (int64_t i = 0; i < kk; ++i) ideal_discount[i] = ndcg_discount(static_cast<T>(i + 1));

    // Phase 1, per row: stage scores, choose the gain set, gains and IDCG.
    for_each_row(Q, 8 * N, [&](int64_t q) {
      const T* rq = rel + q * N;
      const int64_t* cq = cols.data() + q * N;
      bool has_nan;
      const int64_t nv = stage_row(s + q * N, v ? v + q * N : nullptr, N, scale, w.data() + q * N,
                                   cols.data() + q * N, has_nan);
      n_valid[q] = nv;
      nan_row[q] = has_nan;
      int32_t* pos = gain_pos.data() + q * N;
      for (int32_t p = 0; p < nv; ++p) pos[p] = p;
      // positions are in column order, so ties to the lower position are ties to the lower column
      const auto before = [rq, cq](int32_t x, int32_t y) { return ranks_before(rq[cq[x]], x, rq[cq[y]], y); };
      int32_t mq = static_cast<int32_t>(nv);
      if (topk && kk < nv) {
        std::nth_element(pos, pos + kk, pos + nv, before);
        mq = static_cast<int32_t>(kk);
        std::sort(pos, pos + mq);  // position order: sequential access in the sweeps below
      }
      m[q] = mq;
      T* gains = rhat.data() + q * N;  // scratch until phase 2 writes the ranks
      bool nan_gain = false;
      for (int32_t i = 0; i < mq; ++i) {
        gains[i] = a[q * N + pos[i]] = ndcg_gain(rq[cq[pos[i]]], linear_gain);
        nan_gain |= gains[i] != gains[i];
      }
      std::sort(gains, gains + mq, std::greater<T>());  // the ideal order (no NaN: checked)
      T ideal = 0;
      for (int32_t i = 0; i < mq; ++i) ideal += gains[i] * ideal_discount[i];
      row_idcg[q] = nan_gain ? std::numeric_limits<T>::quiet_NaN() : ideal;
    });

    // Phase 2: smooth ranks of the gain positions (every valid candidate counts in them). Without
    // top-k every valid candidate is in the gain set: whole rows, each pair once, when rows fill the
    // threads; otherwise one sweep per gain position, split in chunks.
    const bool whole_rows = !topk && rows_fill_threads(Q);
    if (whole_rows) {
      for_each_row(Q, N * N / 2, [&](int64_t q) {
        T* rq = rhat.data() + q * N;
        rank_row(w.data() + q * N, n_valid[q], rq);
        for (int64_t p = 0; p < n_valid[q]; ++p) rq[p] += T(1);
      });
    } else {
      const T self_term = PairSigmoid<T>::value(T(0));  // the k == j term that rank_sweep includes
      for_each_row_chunk(Q, kk, N, [&](int64_t q, int64_t begin, int64_t end) {
        const T* wq = w.data() + q * N;
        const int32_t* pos = gain_pos.data() + q * N;
        for (int64_t i = begin; i < std::min<int64_t>(end, m[q]); ++i) {
          const int32_t p = pos[i];
          rhat[q * N + p] = T(1) + rank_sweep(wq, n_valid[q], wq[p]) - self_term;
        }
      });
    }

    // Phase 3, per row: DCG, loss, and d loss / d Rhat of the gain positions.
    scalar_t* loss_p = loss.mutable_data_ptr<scalar_t>();
    T* idcg_p = idcg.mutable_data_ptr<T>();
    for_each_row(Q, 4 * kk, [&](int64_t q) {
      const int32_t* pos = gain_pos.data() + q * N;
      const T* wq = w.data() + q * N;
      T* aq = a.data() + q * N;
      T* rq = rhat.data() + q * N;
      const T ideal = row_idcg[q];
      T dcg = 0;
      for (int32_t i = 0; i < m[q]; ++i) {
        const int32_t p = pos[i];
        // an infinite staged score: its sweep sum holds inf - inf (column_sum)
        if (!std::isfinite(wq[p])) rq[p] = T(1) + rank_column(wq, n_valid[q], p);
        dcg += aq[p] * ndcg_discount(rq[p]);
      }
      const T l = ndcg_row_loss(dcg, ideal);
      loss_p[q] = static_cast<scalar_t>(nan_row[q] ? std::numeric_limits<T>::quiet_NaN() : l);
      idcg_p[q] = ideal;
      if (!compute_grad) return;
      for (int32_t i = 0; i < m[q]; ++i) {
        const int32_t p = pos[i];
        aq[p] = ideal > T(0) || ideal != ideal ? ndcg_rank_grad(aq[p], rq[p], ideal) : T(0);
        if (topk) {
          w_gain[q * kk + i] = wq[p];
          a_gain[q * kk + i] = aq[p];
        }
      }
    });
    if (!compute_grad) return;

    // Phase 4: d loss / d S[q, c] = (1/tau) sum_j sigma'(..) (a_j - a_c); for c outside the gain
    // set a_c = 0, and only gain positions have a_j != 0. Masked entries keep their 0.
    scalar_t* grad_p = grad.mutable_data_ptr<scalar_t>();
    const T inv_tau = static_cast<T>(1.0 / tau);
    const auto write = [&](int64_t q, int64_t p, T sum) {
      const T* wq = w.data() + q * N;
      T r;
      if (nan_row[q]) r = std::numeric_limits<T>::quiet_NaN();
      else if (!std::isfinite(wq[p])) r = inv_tau * grad_column(wq, a.data() + q * N, n_valid[q], p);
      else r = inv_tau * sum;
      grad_p[q * N + cols[q * N + p]] = static_cast<scalar_t>(r);
    };
    if (whole_rows) {
      for_each_row(Q, N * N / 2, [&](int64_t q) {
        std::vector<T> sums(n_valid[q]);
        grad_row(w.data() + q * N, a.data() + q * N, n_valid[q], sums.data());
        for (int64_t p = 0; p < n_valid[q]; ++p) write(q, p, sums[p]);
      });
      return;
    }
    for_each_row_chunk(Q, N, topk ? 2 * kk : N, [&](int64_t q, int64_t begin, int64_t end) {
      const T* wq = w.data() + q * N;
      const T* aq = a.data() + q * N;
      for (int64_t p = begin; p < std::min(end, n_valid[q]); ++p) {
        if (topk && aq[p] == T(0))
          write(q, p, grad_sweep(w_gain.data() + q * kk, a_gain.data() + q * kk, m[q], wq[p], T(0)));
        else
          write(q, p, grad_sweep(wq, aq, n_valid[q], wq[p], aq[p]));
      }
    });
  });
  return {loss, idcg, grad};
}

}  // namespace

ITR_CPU_KERNELS(m) { m.impl("smooth_ndcg", &smooth_ndcg_cpu); }

}  // namespace cpu
}  // namespace itr
