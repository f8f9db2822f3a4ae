// CUDA kernels of docs/bcls.md (Triplet-SN, Kendall full, SW-HS selection). Deterministic:
// every reduction has a fixed order (block trees, per-tile partials summed in tile order), with no
// floating-point atomics.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/device_utils.cuh"
#include "cuda/launch.cuh"
#include "cuda/launchers.h"
#include "itr_kernels/bcls_math.h"

namespace itr {
namespace cuda {
namespace {

constexpr int kColsPerBlock = 32;                      // Triplet-SN column pass: 32 columns x 8 row groups
constexpr int kRowGroups = kThreads / kColsPerBlock;
constexpr int kKendallCols = 256;                      // Kendall: one column per thread, 256 per tile
constexpr int kKendallTile = 512;                      // staged candidates per shared-memory tile

// A block's ShiftedSums merged: lanes by the shuffle tree, then the warps in order (deterministic).
template <typename T>
__device__ ShiftedSum<T> block_merge(ShiftedSum<T> x, T k) {
  __shared__ T maxes[kThreads / 32], sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) x.merge(shfl_down(x, o), k);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) {
    maxes[threadIdx.x >> 5] = x.max;
    sums[threadIdx.x >> 5] = x.sum;
  }
  __syncthreads();
  ShiftedSum<T> total;
  for (int w = 0; w < kThreads / 32; ++w) {
    ShiftedSum<T> part;
    part.max = maxes[w];
    part.sum = sums[w];
    total.merge(part, k);
  }
  return total;
}

// The reduction kernels leave each query's ShiftedSum (max, sum) in the first two rows of its
// direction's (3, B) block of stats; triplet_sn_finish_kernel turns it into the loss and the
// statistics (shift, 1 / total, negatives' share), with its per-query double math out of their way.
template <typename T>
__device__ __forceinline__ void store_sum(const ShiftedSum<T>& acc, int64_t q, int64_t b, T* stats) {
  stats[q] = acc.max;
  stats[b + q] = acc.sum;
}

// Image-to-text: one block per row of S.
template <typename In>
__global__ void __launch_bounds__(kThreads) triplet_sn_rows(const In* s, int64_t b, int64_t rs, int64_t cs,
                                                            const typename Traits<In>::Acc* rel,
                                                            double temperature, double rho,
                                                            typename Traits<In>::Acc* stats) {
  using T = typename Traits<In>::Acc;
  const T k = kLog2e / temperature, rh = rho;
  for (int64_t i = blockIdx.x; i < b; i += gridDim.x) {
    const T pos = to_acc(s[i * rs + i * cs]);
    ShiftedSum<T> acc;
    bool any = false;
    for (int64_t j = threadIdx.x; j < b; j += kThreads) {
      if (!soft_negative(j, i, rel, i * b + j, rh)) continue;
      acc.add(T(to_acc(s[i * rs + j * cs])), k);
      any = true;
    }
    mark_nan_positive(acc, pos, any);
    const ShiftedSum<T> total = block_merge(acc, k);
    if (threadIdx.x == 0) store_sum(total, i, b, stats);
  }
}

// Text-to-image: a block owns 32 columns; 8 row groups stride over the rows, merged in order.
template <typename In>
__global__ void __launch_bounds__(kThreads) triplet_sn_cols(const In* s, int64_t b, int64_t rs, int64_t cs,
                                                            const typename Traits<In>::Acc* rel,
                                                            double temperature, double rho,
                                                            typename Traits<In>::Acc* stats) {
  using T = typename Traits<In>::Acc;
  __shared__ T maxes[kRowGroups][kColsPerBlock], sums[kRowGroups][kColsPerBlock];
  const T k = kLog2e / temperature, rh = rho;
  const int c = threadIdx.x % kColsPerBlock, g = threadIdx.x / kColsPerBlock;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kColsPerBlock + c;
  ShiftedSum<T> acc;
  if (j < b) {
    bool any = false;
    for (int64_t i = g; i < b; i += kRowGroups) {
      if (!soft_negative(i, j, rel, i * b + j, rh)) continue;
      acc.add(T(to_acc(s[i * rs + j * cs])), k);
      any = true;
    }
    mark_nan_positive(acc, T(to_acc(s[j * rs + j * cs])), any);
  }
  maxes[g][c] = acc.max;
  sums[g][c] = acc.sum;
  __syncthreads();
  if (g == 0 && j < b) {
    ShiftedSum<T> total;
    for (int r = 0; r < kRowGroups; ++r) {
      ShiftedSum<T> part;
      part.max = maxes[r][c];
      part.sum = sums[r][c];
      total.merge(part, k);
    }
    store_sum(total, j, b, stats);
  }
}

// Per query (direction d, index q): the loss and the statistics from the stored ShiftedSum.
template <typename In>
__global__ void triplet_sn_finish_kernel(const In* s, int64_t b, int64_t rs, int64_t cs, double margin,
                                         double temperature, In* loss, typename Traits<In>::Acc* stats) {
  using T = typename Traits<In>::Acc;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < 2 * b;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t q = e % b;
    T* st = stats + 3 * b * (e / b);
    const T shift = st[q], neg = st[b + q];
    loss[e] = from_acc<In>(
        triplet_sn_finish(T(to_acc(s[q * rs + q * cs])), shift, neg, margin, temperature, st[b + q], st[2 * b + q]));
  }
}

// dL/dS[i, j] from each direction's statistics: a negative's weight 2^((S - shift) k) / total, the
// positive's -(negatives' share), times the upstream gradients.
template <typename In>
__global__ void __launch_bounds__(kThreads) triplet_sn_grad(const In* s, int64_t b, int64_t rs, int64_t cs,
                                                            const typename Traits<In>::Acc* rel,
                                                            const typename Traits<In>::Acc* grad,
                                                            const typename Traits<In>::Acc* stats,
                                                            double temperature, double rho, In* out) {
  using T = typename Traits<In>::Acc;
  const T k = kLog2e / temperature, rh = rho;
  const T* row = stats;  // per direction: shift, 1 / total, negatives' share
  const T* col = stats + 3 * b;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < b * b;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i = e / b, j = e % b;
    T v = 0;
    if (i == j) {  // the positive of row i and of column i
      v = -(grad[i] * row[2 * b + i] + grad[b + i] * col[2 * b + i]);
    } else {
      const T sij = to_acc(s[i * rs + j * cs]);
      if (soft_negative(j, i, rel, e, rh)) v += grad[i] * triplet_sn_weight(sij, row[i], row[b + i], k);
      if (soft_negative(i, j, rel, e, rh)) v += grad[b + j] * triplet_sn_weight(sij, col[j], col[b + j], k);
    }
    out[e] = from_acc<In>(v);
  }
}

// Kendall full: thread = column c of a tile; every k of the row streams through shared memory.
// Pairs are counted from their more relevant side, so each is counted once; the gradient of c
// gathers both sides. Per-tile sums and counts go to `part_*`, summed per row in tile order.
template <typename In, Phi kPhi>
__global__ void __launch_bounds__(kThreads) kendall_kernel(RowReader<In> rows, int64_t n_rows,
                                                           const typename Traits<In>::Acc* rel, double gap,
                                                           double margin, double temperature,
                                                           typename Traits<In>::Acc* part_sum, int64_t* part_count,
                                                           In* grad) {
  using T = typename Traits<In>::Acc;
  __shared__ T tile_s[kKendallTile], tile_r[kKendallTile];
  __shared__ bool tile_v[kKendallTile];
  const T g = gap, mg = margin, tp = temperature;
  const int64_t n = rows.cols, tiles = gridDim.x;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kKendallCols + threadIdx.x;
  for (int64_t q = blockIdx.y; q < n_rows; q += gridDim.y) {
    const bool live_c = c < n && rows.is_valid(q, c);
    const T sc = live_c ? T(to_acc(rows.data[q * rows.row_stride + c * rows.col_stride])) : T(0);
    const T rc = live_c ? rel[q * n + c] : T(0);
    T total = 0, dc = 0;
    int64_t count = 0;
    for (int64_t k0 = 0; k0 < n; k0 += kKendallTile) {
      __syncthreads();
      for (int i = threadIdx.x; i < kKendallTile; i += kThreads) {
        const int64_t k = k0 + i;
        tile_v[i] = k < n && rows.is_valid(q, k);
        tile_s[i] = tile_v[i] ? T(to_acc(rows.data[q * rows.row_stride + k * rows.col_stride])) : T(0);
        tile_r[i] = tile_v[i] ? rel[q * n + k] : T(0);
      }
      __syncthreads();
      if (!live_c) continue;
      const int count_k = static_cast<int>(n - k0 < kKendallTile ? n - k0 : kKendallTile);
      for (int i = 0; i < count_k; ++i) {
        if (!tile_v[i]) continue;
        const int dir = pair_direction(rc, tile_r[i], g);
        if (dir == 0) continue;
        const T x = dir * (tile_s[i] - sc);  // dir +1: c more relevant, x = s_k - s_c
        if (dir > 0) {
          total += phi_value(kPhi, x, mg, tp);
          ++count;
        }
        dc -= dir * phi_grad(kPhi, x, mg, tp);  // d x / d s_c = -dir
      }
    }
    if (grad && c < n) grad[q * n + c] = from_acc<In>(live_c ? dc : T(0));
    total = block_sum(total);
    count = block_sum(count);
    if (threadIdx.x == 0) {
      part_sum[q * tiles + blockIdx.x] = total;
      part_count[q * tiles + blockIdx.x] = count;
    }
  }
}

// Per-row sums stay in the accumulator type (they grow with N^2: float16 would overflow).
template <typename In>
__global__ void kendall_rows(const typename Traits<In>::Acc* part_sum, const int64_t* part_count, int64_t n_rows,
                             int64_t tiles, typename Traits<In>::Acc* sums, int64_t* counts) {
  for (int64_t q = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; q < n_rows;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    typename Traits<In>::Acc total = 0;
    int64_t count = 0;
    for (int64_t t = 0; t < tiles; ++t) {
      total += part_sum[q * tiles + t];
      count += part_count[q * tiles + t];
    }
    sums[q] = total;
    counts[q] = count;
  }
}

// SW-HS: one thread per (row, step) scans its two windows of the relevance order.
template <typename In>
__global__ void swhs_kernel(RowReader<In> rows, int64_t n_rows, const typename Traits<In>::Acc* rel,
                            const int64_t* order, const int64_t* n_valid, int64_t window, int64_t stride,
                            int64_t steps, double gap, int64_t* upper, int64_t* lower, bool* keep) {
  using T = typename Traits<In>::Acc;
  const int64_t n = rows.cols;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n_rows * steps;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t q = e / steps, t = e % steps, nq = n_valid[q];
    const int64_t* ord = order + q * n;
    const int64_t u0 = t * stride, l0 = u0 + window;
    if (l0 >= nq) {
      upper[e] = lower[e] = 0;
      keep[e] = false;
      continue;
    }
    const int64_t u1 = u0 + window < nq ? u0 + window : nq, l1 = l0 + window < nq ? l0 + window : nq;
    const auto score = [&](int64_t col) { return T(to_acc(rows.data[q * rows.row_stride + col * rows.col_stride])); };
    int64_t a = ord[u0], b = ord[l0];
    for (int64_t i = u0 + 1; i < u1; ++i) {
      const int64_t col = ord[i];
      if (swhs_harder(true, score(col), col, score(a), a)) a = col;
    }
    for (int64_t i = l0 + 1; i < l1; ++i) {
      const int64_t col = ord[i];
      if (swhs_harder(false, score(col), col, score(b), b)) b = col;
    }
    upper[e] = a;
    lower[e] = b;
    keep[e] = rel[q * n + ord[u1 - 1]] - rel[q * n + ord[l0]] > static_cast<T>(gap);
  }
}

unsigned flat_grid(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 * 32 ? blocks : 65535 * 32);
}

}  // namespace

cudaError_t triplet_sn(Matrix scores, const void* relevance_acc, double margin, double temperature, double rho,
                       void* loss, void* stats, cudaStream_t stream) {
  const int64_t b = scores.rows;
  if (b == 0) return cudaSuccess;
  return dispatch(scores.dtype, [&](auto in) {
    using In = decltype(in);
    using T = typename Traits<In>::Acc;
    const In* s = static_cast<const In*>(scores.data);
    const T* rel = static_cast<const T*>(relevance_acc);
    In* out = static_cast<In*>(loss);
    T* st = static_cast<T*>(stats);
    launch<triplet_sn_rows<In>>(row_grid(b), kThreads, stream, s, b, scores.row_stride, scores.col_stride, rel,
                                temperature, rho, st);
    const unsigned col_blocks = static_cast<unsigned>((b + kColsPerBlock - 1) / kColsPerBlock);
    launch<triplet_sn_cols<In>>(col_blocks, kThreads, stream, s, b, scores.row_stride, scores.col_stride, rel,
                                temperature, rho, st + 3 * b);
    launch<triplet_sn_finish_kernel<In>>(flat_grid(2 * b), kThreads, stream, s, b, scores.row_stride,
                                         scores.col_stride, margin, temperature, out, st);
  });
}

cudaError_t triplet_sn_backward(Matrix scores, const void* relevance_acc, const void* grad_acc, const void* stats_acc,
                                double temperature, double rho, void* out, cudaStream_t stream) {
  const int64_t b = scores.rows;
  if (b == 0) return cudaSuccess;
  return dispatch(scores.dtype, [&](auto in) {
    using In = decltype(in);
    using T = typename Traits<In>::Acc;
    launch<triplet_sn_grad<In>>(flat_grid(b * b), kThreads, stream, static_cast<const In*>(scores.data), b,
                                scores.row_stride, scores.col_stride, static_cast<const T*>(relevance_acc),
                                static_cast<const T*>(grad_acc), static_cast<const T*>(stats_acc), temperature, rho,
                                static_cast<In*>(out));
  });
}

int64_t kendall_tiles(int64_t cols) { return (cols + kKendallCols - 1) / kKendallCols; }

cudaError_t kendall_full(Matrix scores, const void* relevance_acc, const bool* valid, double gap, int phi,
                         double margin, double temperature, void* work, void* sums, int64_t* counts, void* grad,
                         cudaStream_t stream) {
  const int64_t q = scores.rows, n = scores.cols;
  if (q == 0 || n == 0) return cudaSuccess;
  const int64_t tiles = kendall_tiles(n);
  return dispatch(scores.dtype, [&](auto in) {
    using In = decltype(in);
    using T = typename Traits<In>::Acc;
    T* part_sum = static_cast<T*>(work);
    // counts start 8 bytes per part in, aligned for int64 whatever the accumulator's size
    int64_t* part_count = reinterpret_cast<int64_t*>(static_cast<char*>(work) + q * tiles * sizeof(double));
    const dim3 grid(static_cast<unsigned>(tiles), row_grid(q));
    const RowReader<In> rows = reader<In>(scores, valid);
    const T* rel = static_cast<const T*>(relevance_acc);
    In* g = static_cast<In*>(grad);
    switch (static_cast<Phi>(phi)) {
      case Phi::kHinge:
        launch<kendall_kernel<In, Phi::kHinge>>(grid, kThreads, stream, rows, q, rel, gap, margin, temperature,
                                                                       part_sum, part_count, g);
        break;
      case Phi::kLogistic:
        launch<kendall_kernel<In, Phi::kLogistic>>(grid, kThreads, stream, rows, q, rel, gap, margin, temperature,
                                                                          part_sum, part_count, g);
        break;
      default:
        launch<kendall_kernel<In, Phi::kTanh>>(grid, kThreads, stream, rows, q, rel, gap, margin, temperature,
                                                                      part_sum, part_count, g);
    }
    launch<kendall_rows<In>>(flat_grid(q), kThreads, stream, part_sum, part_count, q, tiles, static_cast<T*>(sums),
                                                            counts);
  });
}

cudaError_t kendall_swhs(Matrix scores, const void* relevance_acc, const int64_t* order, const int64_t* n_valid,
                         int64_t window, int64_t stride, int64_t steps, double gap, int64_t* upper, int64_t* lower,
                         bool* keep, cudaStream_t stream) {
  const int64_t q = scores.rows;
  if (q == 0 || steps == 0) return cudaSuccess;
  return dispatch(scores.dtype, [&](auto in) {
    using In = decltype(in);
    using T = typename Traits<In>::Acc;
    launch<swhs_kernel<In>>(flat_grid(q * steps), kThreads, stream, reader<In>(scores, nullptr), q,
                                                                   static_cast<const T*>(relevance_acc), order,
                                                                   n_valid, window, stride, steps, gap, upper, lower,
                                                                   keep);
  });
}

}  // namespace cuda
}  // namespace itr
