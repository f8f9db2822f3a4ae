// CPU kernels of itr_kernels::vse_triplet and its backward (docs/contrastive.md §1, VSE++): max violation
// (the hardest negative) or the sum of hinges, both directions from one sweep over S. Rows give the
// image-to-text queries; column partials over fixed blocks of rows, merged in block order, the
// text-to-image ones (deterministic). Ties between hardest negatives go to the lower index (column
// for image-to-text, row for text-to-image), on every device.
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

// The hardest negative of a row, every column but p: the maxima of chunks of the row (vectorised),
// then the first maximal column inside the first chunk that holds the row's maximum (or a NaN).
template <typename T>
Hardest<T> hardest_in_row(const T* r, int64_t n, int64_t p) {
  constexpr int64_t kChunk = 64;
  Hardest<T> h;
  if (n < 2) return h;
  T best = -INFINITY;
  int64_t chunk = -1;
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t c1 = std::min(n, c0 + kChunk);
    const T m = p >= c0 && p < c1 ? merge_max_or_nan(max_or_nan(r, c0, p), max_or_nan(r, p + 1, c1))
                                  : max_or_nan(r, c0, c1);
    if (chunk < 0 || m > best || m != m) {
      best = m;
      chunk = c0;
      if (m != m) break;
    }
  }
  for (int64_t j = chunk; j < std::min(n, chunk + kChunk); ++j) {
    if (j != p && (r[j] == best || (best != best && r[j] != r[j]))) {
      h.score = r[j];
      h.index = j;
      break;
    }
  }
  return h;
}

// Folds row i into a block's column partials of the hardest negative: rows come in increasing
// order, so a tie keeps the earlier (lower) row.
template <typename T>
void fold_hardest(const T* r, int64_t begin, int64_t end, int32_t i, T* cm, int32_t* ci) {
#pragma omp simd
  for (int64_t j = begin; j < end; ++j) {
    const T x = r[j], c = cm[j];
    const bool take = ci[j] < 0 || x > c || (x != x && c == c);
    cm[j] = take ? x : c;
    ci[j] = take ? i : ci[j];
  }
}

// Sum of hinges of a row against its positive, and the active count; columns j into cs/cc against
// their own positives d[j].
template <typename T>
T hinge_sweep(const T* r, int64_t begin, int64_t end, T margin, T pos, const T* d, T* cs, T* cc, T& count) {
  T acc = 0, cnt = 0;
#pragma omp simd reduction(+ : acc, cnt)
  for (int64_t j = begin; j < end; ++j) {
    const T h = margin + r[j] - pos, hc = margin + r[j] - d[j];
    acc += hinge(h);
    cnt += h > T(0) ? T(1) : T(0);
    cs[j] += hinge(hc);
    cc[j] += hc > T(0) ? T(1) : T(0);
  }
  count += cnt;
  return acc;
}

template <typename T>
T row_hinge_sweep(const T* r, int64_t begin, int64_t end, T margin, T pos, T& count) {
  T acc = 0, cnt = 0;
#pragma omp simd reduction(+ : acc, cnt)
  for (int64_t j = begin; j < end; ++j) {
    const T h = margin + r[j] - pos;
    acc += hinge(h);
    cnt += h > T(0) ? T(1) : T(0);
  }
  count += cnt;
  return acc;
}

template <typename scalar_t, typename T>
void triplet_square(const scalar_t* s, int64_t B, T margin, bool max_violation, scalar_t* loss, int64_t* aux) {
  const int64_t blocks = row_blocks(B);
  std::vector<T> d(B);
  for (int64_t j = 0; j < B; ++j) d[j] = static_cast<T>(s[j * B + j]);
  if (max_violation) {
    std::vector<Hardest<T>> rows(B);
    std::vector<T> cm(blocks * B);
    std::vector<int32_t> ci(blocks * B);
    for_each_row_block<T>(B, B, [&](int64_t blk, int64_t i0, int64_t i1, T* buf) {
      T* m = cm.data() + blk * B;
      int32_t* c = ci.data() + blk * B;
      std::fill(m, m + B, -INFINITY);
      std::fill(c, c + B, -1);
      for (int64_t i = i0; i < i1; ++i) {
        const T* r = load_row(s, B, i, buf);
        rows[i] = hardest_in_row(r, B, i);
        fold_hardest(r, 0, i, static_cast<int32_t>(i), m, c);
        fold_hardest(r, i + 1, B, static_cast<int32_t>(i), m, c);
      }
    });
    for_each_merged_column(B, blocks, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        Hardest<T> col;
        for (int64_t blk = 0; blk < blocks; ++blk) {
          Hardest<T> part;
          part.score = cm[blk * B + q];
          part.index = ci[blk * B + q];
          col.merge(part);
        }
        loss[q] = static_cast<scalar_t>(max_violation_loss(rows[q], margin, d[q], aux[q]));
        loss[B + q] = static_cast<scalar_t>(max_violation_loss(col, margin, d[q], aux[B + q]));
      }
    });
    return;
  }
  std::vector<T> row_sum(B), row_cnt(B), cs(blocks * B, T(0)), cc(blocks * B, T(0));
  for_each_row_block<T>(B, B, [&](int64_t blk, int64_t i0, int64_t i1, T* buf) {
    T* s_part = cs.data() + blk * B;
    T* c_part = cc.data() + blk * B;
    for (int64_t i = i0; i < i1; ++i) {
      const T* r = load_row(s, B, i, buf);
      T cnt = 0;
      row_sum[i] = hinge_sweep(r, 0, i, margin, d[i], d.data(), s_part, c_part, cnt) +
                   hinge_sweep(r, i + 1, B, margin, d[i], d.data(), s_part, c_part, cnt);
      row_cnt[i] = cnt;
    }
  });
  for_each_merged_column(B, blocks, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      T sum = 0, cnt = 0;
      for (int64_t blk = 0; blk < blocks; ++blk) {
        sum += cs[blk * B + q];
        cnt += cc[blk * B + q];
      }
      loss[q] = static_cast<scalar_t>(row_sum[q]);
      loss[B + q] = static_cast<scalar_t>(sum);
      aux[q] = static_cast<int64_t>(row_cnt[q]);
      aux[B + q] = static_cast<int64_t>(cnt);
    }
  });
}

template <typename scalar_t, typename T>
void triplet_rows(const scalar_t* s, int64_t Q, int64_t N, const int64_t* positives, T margin, bool max_violation,
                  scalar_t* loss, int64_t* aux) {
  for_each_row_block<T>(Q, N, [&](int64_t, int64_t q0, int64_t q1, T* buf) {
    for (int64_t q = q0; q < q1; ++q) {
      const T* r = load_row(s, N, q, buf);
      const int64_t p = positives[q];
      if (max_violation) {
        loss[q] = static_cast<scalar_t>(max_violation_loss(hardest_in_row(r, N, p), margin, r[p], aux[q]));
      } else {
        T cnt = 0;
        loss[q] = static_cast<scalar_t>(row_hinge_sweep(r, 0, p, margin, r[p], cnt) +
                                        row_hinge_sweep(r, p + 1, N, margin, r[p], cnt));
        aux[q] = static_cast<int64_t>(cnt);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> vse_triplet_cpu(const at::Tensor& scores,
                                                   const c10::optional<at::Tensor>& positives, double margin,
                                                   bool max_violation) {
  check_vse_triplet_args(scores, positives, margin);
  const at::Tensor S = scores.contiguous();
  const int64_t Q = S.size(0), N = S.size(1), D = query_directions(positives);
  const at::Tensor P = positives.has_value() ? positive_columns(*positives, N) : at::Tensor();
  at::Tensor loss = at::empty({D, Q}, S.options());
  at::Tensor aux = at::empty({D, Q}, S.options().dtype(at::kLong));
  if (Q == 0) return {loss, aux};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, S.scalar_type(), "vse_triplet_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* s = S.const_data_ptr<scalar_t>();
    if (P.defined())
      triplet_rows(s, Q, N, P.const_data_ptr<int64_t>(), static_cast<T>(margin), max_violation,
                   loss.mutable_data_ptr<scalar_t>(), aux.mutable_data_ptr<int64_t>());
    else
      triplet_square(s, Q, static_cast<T>(margin), max_violation, loss.mutable_data_ptr<scalar_t>(),
                     aux.mutable_data_ptr<int64_t>());
  });
  return {loss, aux};
}

template <typename scalar_t, typename T>
void triplet_rows_backward(const scalar_t* s, int64_t Q, int64_t N, const int64_t* p, const T* g, const int64_t* a,
                           T m, bool max_violation, scalar_t* o) {
  for_each_row_block<T>(Q, N, [&](int64_t, int64_t q0, int64_t q1, T* buf) {
    for (int64_t q = q0; q < q1; ++q) {
      const T* r = load_row(s, N, q, buf);
      T* w = out_row(o, N, q, buf + N);
      if (max_violation) {  // the hardest negative and the positive only
        std::fill(w, w + N, T(0));
        if (a[q] >= 0) {
          w[a[q]] = g[q];
          w[p[q]] = -g[q];
        }
      } else {
        const T pos = r[p[q]], gq = g[q];
#pragma omp simd
        for (int64_t j = 0; j < N; ++j) w[j] = m + r[j] - pos > T(0) ? gq : T(0);
        w[p[q]] = -gq * static_cast<T>(a[q]);
      }
      store_row(o, N, q, w);
    }
  });
}

template <typename scalar_t, typename T>
void triplet_square_backward(const scalar_t* s, int64_t B, const T* g, const int64_t* a, T m, bool max_violation,
                             scalar_t* o) {
  std::vector<T> d(B);
  for (int64_t j = 0; j < B; ++j) d[j] = static_cast<T>(s[j * B + j]);
  const T* dp = d.data();
  const T* gc = g + B;
  // Max violation: the columns whose hardest negative is row i, for each row (in column order).
  std::vector<int64_t> first(B + 1, 0), cols;
  if (max_violation) {
    for (int64_t j = 0; j < B; ++j)
      if (a[B + j] >= 0) ++first[a[B + j] + 1];
    for (int64_t i = 0; i < B; ++i) first[i + 1] += first[i];
    cols.resize(first[B]);
    std::vector<int64_t> next(first.begin(), first.end() - 1);
    for (int64_t j = 0; j < B; ++j)
      if (a[B + j] >= 0) cols[next[a[B + j]]++] = j;
  }
  for_each_row_block<T>(B, B, [&](int64_t, int64_t i0, int64_t i1, T* buf) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* r = load_row(s, B, i, buf);
      T* w = out_row(o, B, i, buf + B);
      const T gi = g[i];
      if (max_violation) {  // row i's hardest column, then the columns whose hardest row is i
        std::fill(w, w + B, T(0));
        if (a[i] >= 0) w[a[i]] += gi;
        for (int64_t e = first[i]; e < first[i + 1]; ++e) w[cols[e]] += gc[cols[e]];
        w[i] = -((a[i] >= 0 ? gi : T(0)) + (a[B + i] >= 0 ? gc[i] : T(0)));
      } else {
        const T pos = dp[i];
#pragma omp simd
        for (int64_t j = 0; j < B; ++j)
          w[j] = (m + r[j] - pos > T(0) ? gi : T(0)) + (m + r[j] - dp[j] > T(0) ? gc[j] : T(0));
        w[i] = -(gi * static_cast<T>(a[i]) + gc[i] * static_cast<T>(a[B + i]));
      }
      store_row(o, B, i, w);
    }
  });
}

at::Tensor vse_triplet_backward_cpu(const at::Tensor& grad, const at::Tensor& scores,
                                    const c10::optional<at::Tensor>& positives, const at::Tensor& aux, double margin,
                                    bool max_violation) {
  check_vse_triplet_backward_args(grad, scores, positives, aux, margin);
  const at::Tensor S = scores.contiguous();
  const int64_t Q = S.size(0), N = S.size(1);
  const at::Tensor P = positives.has_value() ? positive_columns(*positives, N) : at::Tensor();
  const at::Tensor A = aux.contiguous();
  at::Tensor out = at::empty({Q, N}, S.options());
  if (Q == 0 || N == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, S.scalar_type(), "vse_triplet_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const at::Tensor G = grad.to(c10::CppTypeToScalarType<T>::value).contiguous();
    if (P.defined())
      triplet_rows_backward(S.const_data_ptr<scalar_t>(), Q, N, P.const_data_ptr<int64_t>(), G.const_data_ptr<T>(),
                            A.const_data_ptr<int64_t>(), static_cast<T>(margin), max_violation,
                            out.mutable_data_ptr<scalar_t>());
    else
      triplet_square_backward(S.const_data_ptr<scalar_t>(), Q, G.const_data_ptr<T>(), A.const_data_ptr<int64_t>(),
                              static_cast<T>(margin), max_violation, out.mutable_data_ptr<scalar_t>());
  });
  return out;
}

}  // namespace

ITR_CPU_KERNELS(m) {
  m.impl("vse_triplet", &vse_triplet_cpu);
  m.impl("vse_triplet_backward", &vse_triplet_backward_cpu);
}

}  // namespace cpu
}  // namespace itr
