// CUDA kernels of docs/smooth_rank_ndcg.md §1-2. Tiled over (row, column block): each thread owns kCols
// columns of one row and sweeps the whole row through shared memory, so any row length works
// and memory stays O(Q * N). The pair math is the one in ranking_math.h.
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "cuda/device_utils.cuh"
#include "cuda/launch.cuh"
#include "cuda/launchers.h"
#include "itr_kernels/ranking_math.h"

namespace itr {
namespace cuda {
namespace {

constexpr int kCols = 4;        // columns per thread: independent accumulators (ILP)
constexpr int kTile = 1024;     // staged candidates per shared-memory tile

// ---- pair sweeps ----

// sum_k sigma((s_k - s_j) / tau) - sigma(0) for the kCols columns j of this thread; with kGrad,
// sum_k sigma'((s_k - s_j) / tau) * (c_k - c_j) instead (the backward, sigma' being even).
template <typename In, typename Coef, bool kGrad>
__device__ void sweep_row(const RowReader<In>& rows, const Coef* coef, int64_t q, int64_t j0,
                          typename Traits<In>::Acc scale, typename Traits<In>::Acc (&acc)[kCols]) {
  using Acc = typename Traits<In>::Acc;
  using Sig = std::conditional_t<kGrad, typename Traits<In>::GradSig, typename Traits<In>::Sig>;
  __shared__ Acc tile_w[kTile];
  __shared__ Acc tile_c[kGrad ? kTile : 1];
  const int64_t n = rows.cols;
  Acc wj[kCols], cj[kCols];
#pragma unroll
  for (int t = 0; t < kCols; ++t) {
    const int64_t j = j0 + t * kThreads;
    wj[t] = j < n ? rows.staged(q, j, scale) : Acc(0);
    cj[t] = kGrad && j < n ? static_cast<Acc>(to_acc(coef[q * n + j])) : Acc(0);
    acc[t] = 0;
  }
  for (int64_t k0 = 0; k0 < n; k0 += kTile) {
    __syncthreads();
    for (int i = threadIdx.x; i < kTile; i += kThreads) {
      const int64_t k = k0 + i;
      tile_w[i] = k < n ? rows.staged(q, k, scale) : neg_inf<Acc>();
      if (kGrad) tile_c[i] = k < n && rows.is_valid(q, k) ? static_cast<Acc>(to_acc(coef[q * n + k])) : Acc(0);
    }
    __syncthreads();
    const int count = static_cast<int>(n - k0 < kTile ? n - k0 : kTile);
#pragma unroll 4
    for (int i = 0; i < count; ++i) {
      const Acc wk = tile_w[i];
      if constexpr (kGrad) {
        const Acc ck = tile_c[i];
#pragma unroll
        for (int t = 0; t < kCols; ++t) acc[t] += Sig::grad(wk - wj[t]) * (ck - cj[t]);
      } else {
#pragma unroll
        for (int t = 0; t < kCols; ++t) acc[t] += Sig::value(wk - wj[t]);
      }
    }
  }
  if constexpr (!kGrad) {
#pragma unroll
    for (int t = 0; t < kCols; ++t) acc[t] -= Sig::value(Acc(0));  // the k == j term
  }
}

// One row as column_sum (ranking_math.h) reads it: staged scores, coefficients, validity.
template <typename In, typename Coef, typename Acc>
struct DeviceRow {
  RowReader<In> rows;
  const Coef* coef;
  int64_t q;
  Acc scale;
  __device__ Acc w(int64_t k) const { return rows.staged(q, k, scale); }
  __device__ Acc c(int64_t k) const { return static_cast<Acc>(to_acc(coef[q * rows.cols + k])); }
  __device__ bool live(int64_t k) const { return rows.is_valid(q, k); }
};

// The sum of column j over the other valid candidates, pair by pair, if its staged score is
// infinite (its sweep sum holds the k == j term inf - inf): true and the sum in `sum`. Rare, and
// run after the sweep's results are stored, so that they are not live across this loop.
template <typename Sig, bool kGrad, typename In, typename Coef, typename Acc>
__device__ __forceinline__ bool infinite_column(const RowReader<In>& rows, const Coef* coef, int64_t q, int64_t j,
                                                Acc scale, Acc& sum) {
  if (j >= rows.cols || !rows.is_valid(q, j) || !isinf(rows.staged(q, j, scale))) return false;
  sum = column_sum<Sig, kGrad, Acc>(DeviceRow<In, Coef, Acc>{rows, coef, q, scale}, rows.cols, j);
  return true;
}

template <typename In, typename Out>
__global__ void __launch_bounds__(kThreads) rank_kernel(RowReader<In> rows, int64_t n_rows, double tau, Out* out) {
  using Acc = typename Traits<In>::Acc;
  const Acc scale = Traits<In>::Sig::scale(static_cast<Acc>(tau));
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kThreads * kCols + threadIdx.x;
  for (int64_t q = blockIdx.y; q < n_rows; q += gridDim.y) {
    Acc acc[kCols];
    sweep_row<In, NoCoef, false>(rows, nullptr, q, j0, scale, acc);
#pragma unroll
    for (int t = 0; t < kCols; ++t) {
      const int64_t j = j0 + t * kThreads;
      if (j < rows.cols) out[q * rows.cols + j] = from_acc<Out>(rows.is_valid(q, j) ? Acc(1) + acc[t] : Acc(0));
    }
#pragma unroll
    for (int t = 0; t < kCols; ++t) {
      const int64_t j = j0 + t * kThreads;
      Acc sum;
      if (infinite_column<typename Traits<In>::Sig, false>(rows, static_cast<const NoCoef*>(nullptr), q, j, scale, sum))
        out[q * rows.cols + j] = from_acc<Out>(Acc(1) + sum);
    }
  }
}

template <typename In, typename Coef, typename Out>
__global__ void __launch_bounds__(kThreads) grad_kernel(RowReader<In> rows, int64_t n_rows, const Coef* coef,
                                                        double tau, Out* out) {
  using Acc = typename Traits<In>::Acc;
  using Sig = typename Traits<In>::GradSig;
  const Acc scale = Sig::scale(static_cast<Acc>(tau));
  const Acc inv_tau = static_cast<Acc>(1.0 / tau);
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kThreads * kCols + threadIdx.x;
  for (int64_t q = blockIdx.y; q < n_rows; q += gridDim.y) {
    Acc acc[kCols];
    sweep_row<In, Coef, true>(rows, coef, q, j0, scale, acc);
#pragma unroll
    for (int t = 0; t < kCols; ++t) {
      const int64_t j = j0 + t * kThreads;
      if (j < rows.cols) out[q * rows.cols + j] = from_acc<Out>(rows.is_valid(q, j) ? inv_tau * acc[t] : Acc(0));
    }
#pragma unroll
    for (int t = 0; t < kCols; ++t) {
      const int64_t j = j0 + t * kThreads;
      Acc sum;
      if (infinite_column<Sig, true>(rows, coef, q, j, scale, sum))
        out[q * rows.cols + j] = from_acc<Out>(inv_tau * sum);
    }
  }
}

// ---- Smooth-NDCG row stages (one block per row) ----

// Gains of the gain set, scattered to their columns, and IDCG from the relevance order.
template <typename Acc>
__global__ void __launch_bounds__(kThreads) ndcg_gain_kernel(const Acc* relevance, const int64_t* order,
                                                             const int64_t* set_size, int64_t n_rows, int64_t n,
                                                             bool linear_gain, Acc* gain, Acc* idcg) {
  for (int64_t q = blockIdx.x; q < n_rows; q += gridDim.x) {
    Acc ideal = 0;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const int64_t col = order[q * n + i];
      const Acc g = i < set_size[q] ? ndcg_gain(relevance[q * n + col], linear_gain) : Acc(0);
      gain[q * n + col] = g;
      ideal += g * ndcg_discount(static_cast<Acc>(i + 1));
    }
    ideal = block_sum(ideal);
    if (threadIdx.x == 0) idcg[q] = ideal;
  }
}

// DCG and loss of a row; with coef != nullptr also d loss / d Rhat of each candidate. The gain set
// is the first set_size[q] of the relevance order (a gain of 0 still counts: 0 * a NaN rank is NaN,
// as on the CPU); every column is visited once through the order.
template <typename Acc, typename Out>
__global__ void __launch_bounds__(kThreads) ndcg_loss_kernel(const Acc* gain, const Acc* rhat, const Acc* idcg,
                                                             const int64_t* order, const int64_t* set_size,
                                                             int64_t n_rows, int64_t n, Out* loss, Acc* coef) {
  for (int64_t q = blockIdx.x; q < n_rows; q += gridDim.x) {
    const Acc ideal = idcg[q];
    Acc dcg = 0;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const int64_t j = order[q * n + i];
      Acc c = 0;
      if (i < set_size[q]) {
        const Acc g = gain[q * n + j];
        dcg += g * ndcg_discount(rhat[q * n + j]);
        if (ideal > Acc(0) || ideal != ideal) c = ndcg_rank_grad(g, rhat[q * n + j], ideal);
      }
      if (coef) coef[q * n + j] = c;
    }
    dcg = block_sum(dcg);
    if (threadIdx.x == 0) loss[q] = from_acc<Out>(ndcg_row_loss(dcg, ideal));
  }
}

dim3 sweep_grid(int64_t rows, int64_t cols) {
  const int64_t x = (cols + kThreads * kCols - 1) / (kThreads * kCols);
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(rows < kMaxGridY ? rows : kMaxGridY));
}

}  // namespace

cudaError_t smooth_rank(Matrix scores, const bool* valid, double tau, void* out, cudaStream_t stream) {
  if (scores.rows == 0 || scores.cols == 0) return cudaSuccess;
  return dispatch(scores.dtype, [&](auto in) {
    using In = decltype(in);
    launch<rank_kernel<In, In>>(sweep_grid(scores.rows, scores.cols), kThreads, stream,
        reader<In>(scores, valid), scores.rows, tau, static_cast<In*>(out));
  });
}

cudaError_t smooth_rank_backward(Matrix scores, const bool* valid, const void* coef, Dtype coef_dtype, double tau,
                                 void* out, cudaStream_t stream) {
  if (scores.rows == 0 || scores.cols == 0) return cudaSuccess;
  if (coef_dtype != scores.dtype) return cudaErrorInvalidValue;  // the binding casts grad to the scores' dtype
  return dispatch(scores.dtype, [&](auto in) {
    using In = decltype(in);
    launch<grad_kernel<In, In, In>>(sweep_grid(scores.rows, scores.cols), kThreads, stream,
        reader<In>(scores, valid), scores.rows, static_cast<const In*>(coef), tau, static_cast<In*>(out));
  });
}

cudaError_t smooth_ndcg(Matrix scores, const bool* valid, const void* relevance_acc, const int64_t* order,
                        const int64_t* set_size, double tau, bool linear_gain, void* work, void* loss, void* idcg,
                        void* grad, cudaStream_t stream) {
  if (scores.rows == 0 || scores.cols == 0) return cudaSuccess;
  return dispatch(scores.dtype, [&](auto in) {
    using In = decltype(in);
    using Acc = typename Traits<In>::Acc;
    const int64_t q = scores.rows, n = scores.cols;
    Acc* gain = static_cast<Acc*>(work);
    Acc* rhat = gain + q * n;
    Acc* coef = rhat + q * n;
    Acc* ideal = static_cast<Acc*>(idcg);
    const RowReader<In> rows = reader<In>(scores, valid);
    launch<ndcg_gain_kernel<Acc>>(row_grid(q), kThreads, stream, static_cast<const Acc*>(relevance_acc), order,
                                                                set_size, q, n, linear_gain, gain, ideal);
    launch<rank_kernel<In, Acc>>(sweep_grid(q, n), kThreads, stream, rows, q, tau, rhat);
    launch<ndcg_loss_kernel<Acc, In>>(row_grid(q), kThreads, stream, gain, rhat, ideal, order, set_size, q, n,
                                      static_cast<In*>(loss), grad ? coef : nullptr);
    if (grad)
      launch<grad_kernel<In, Acc, In>>(sweep_grid(q, n), kThreads, stream, rows, q, coef, tau, static_cast<In*>(grad));
  });
}

}  // namespace cuda
}  // namespace itr
