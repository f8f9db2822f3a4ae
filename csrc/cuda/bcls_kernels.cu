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

template <typename T>
__device__ __forceinline__ LogSumExp<T> shfl_down(const LogSumExp<T>& x, int offset) {
  LogSumExp<T> o;
  o.max = __shfl_down_sync(0xffffffffu, x.max, offset);
  o.sum = __shfl_down_sync(0xffffffffu, x.sum, offset);
  return o;
}

template <typename T>
__device__ LogSumExp<T> block_merge(LogSumExp<T> x) {
  __shared__ T maxes[kThreads / 32], sums[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) x.merge(shfl_down(x, o));
  __syncthreads();
  if ((threadIdx.x & 31) == 0) {
    maxes[threadIdx.x >> 5] = x.max;
    sums[threadIdx.x >> 5] = x.sum;
  }
  __syncthreads();
  LogSumExp<T> total;
  for (int w = 0; w < kThreads / 32; ++w) {
    LogSumExp<T> part;
    part.max = maxes[w];
    part.sum = sums[w];
    total.merge(part);
  }
  return total;
}

// Image-to-text: one block per row of S.
template <typename In>
__global__ void __launch_bounds__(kThreads) triplet_sn_rows(const In* s, int64_t b, int64_t rs, int64_t cs,
                                                            const typename Traits<In>::Acc* rel, double margin,
                                                            double temperature, double rho, In* loss,
                                                            typename Traits<In>::Acc* lse) {
  using T = typename Traits<In>::Acc;
  const T m = margin, inv_t = 1.0 / temperature, rh = rho;
  for (int64_t i = blockIdx.x; i < b; i += gridDim.x) {
    const T pos = to_acc(s[i * rs + i * cs]);
    LogSumExp<T> acc;
    for (int64_t j = threadIdx.x; j < b; j += kThreads)
      if (soft_negative(j, i, rel ? rel[i * b + j] : T(0), rh)) acc.add((m + T(to_acc(s[i * rs + j * cs])) - pos) * inv_t);
    const T v = block_merge(acc).log1p_sum();
    if (threadIdx.x == 0) {
      lse[i] = v;
      loss[i] = from_acc<In>(static_cast<T>(temperature) * v);
    }
  }
}

// Text-to-image: a block owns 32 columns; 8 row groups stride over the rows, merged in order.
template <typename In>
__global__ void __launch_bounds__(kThreads) triplet_sn_cols(const In* s, int64_t b, int64_t rs, int64_t cs,
                                                            const typename Traits<In>::Acc* rel, double margin,
                                                            double temperature, double rho, In* loss,
                                                            typename Traits<In>::Acc* lse) {
  using T = typename Traits<In>::Acc;
  __shared__ T maxes[kRowGroups][kColsPerBlock], sums[kRowGroups][kColsPerBlock];
  const T m = margin, inv_t = 1.0 / temperature, rh = rho;
  const int c = threadIdx.x % kColsPerBlock, g = threadIdx.x / kColsPerBlock;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kColsPerBlock + c;
  LogSumExp<T> acc;
  if (j < b) {
    const T pos = to_acc(s[j * rs + j * cs]);
    for (int64_t i = g; i < b; i += kRowGroups)
      if (soft_negative(i, j, rel ? rel[i * b + j] : T(0), rh)) acc.add((m + T(to_acc(s[i * rs + j * cs])) - pos) * inv_t);
  }
  maxes[g][c] = acc.max;
  sums[g][c] = acc.sum;
  __syncthreads();
  if (g == 0 && j < b) {
    LogSumExp<T> total;
    for (int k = 0; k < kRowGroups; ++k) {
      LogSumExp<T> part;
      part.max = maxes[k][c];
      part.sum = sums[k][c];
      total.merge(part);
    }
    const T v = total.log1p_sum();
    lse[j] = v;
    loss[j] = from_acc<In>(static_cast<T>(temperature) * v);
  }
}

template <typename In>
__global__ void __launch_bounds__(kThreads) triplet_sn_grad(const In* s, int64_t b, int64_t rs, int64_t cs,
                                                            const typename Traits<In>::Acc* rel,
                                                            const typename Traits<In>::Acc* grad,
                                                            const typename Traits<In>::Acc* lse, double margin,
                                                            double temperature, double rho, In* out) {
  using T = typename Traits<In>::Acc;
  const T m = margin, inv_t = 1.0 / temperature, rh = rho;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < b * b;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i = e / b, j = e % b;
    T v = 0;
    if (i == j) {  // the positive of row i and of column i: -sum of the softmax weights = -(1 - e^-lse)
      v = grad[i] * expm1(-lse[i]) + grad[b + i] * expm1(-lse[b + i]);
    } else {
      const T sij = to_acc(s[i * rs + j * cs]);
      const T rij = rel ? rel[i * b + j] : T(0);
      if (soft_negative(j, i, rij, rh)) v += grad[i] * exp((m + sij - T(to_acc(s[i * rs + i * cs]))) * inv_t - lse[i]);
      if (soft_negative(i, j, rij, rh))
        v += grad[b + j] * exp((m + sij - T(to_acc(s[j * rs + j * cs]))) * inv_t - lse[b + j]);
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
                       void* loss, void* lse, cudaStream_t stream) {
  const int64_t b = scores.rows;
  if (b == 0) return cudaSuccess;
  return dispatch(scores.dtype, [&](auto in) {
    using In = decltype(in);
    using T = typename Traits<In>::Acc;
    const In* s = static_cast<const In*>(scores.data);
    const T* rel = static_cast<const T*>(relevance_acc);
    In* out = static_cast<In*>(loss);
    T* l = static_cast<T*>(lse);
    launch<triplet_sn_rows<In>>(row_grid(b), kThreads, stream, s, b, scores.row_stride, scores.col_stride, rel,
                                                              margin, temperature, rho, out, l);
    const unsigned col_blocks = static_cast<unsigned>((b + kColsPerBlock - 1) / kColsPerBlock);
    launch<triplet_sn_cols<In>>(col_blocks, kThreads, stream, s, b, scores.row_stride, scores.col_stride, rel, margin,
                                                             temperature, rho, out + b, l + b);
  });
}

cudaError_t triplet_sn_backward(Matrix scores, const void* relevance_acc, const void* grad_acc, const void* lse_acc,
                                double margin, double temperature, double rho, void* out, cudaStream_t stream) {
  const int64_t b = scores.rows;
  if (b == 0) return cudaSuccess;
  return dispatch(scores.dtype, [&](auto in) {
    using In = decltype(in);
    using T = typename Traits<In>::Acc;
    launch<triplet_sn_grad<In>>(flat_grid(b * b), kThreads, stream,
        static_cast<const In*>(scores.data), b, scores.row_stride, scores.col_stride,
        static_cast<const T*>(relevance_acc), static_cast<const T*>(grad_acc), static_cast<const T*>(lse_acc), margin,
        temperature, rho, static_cast<In*>(out));
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
