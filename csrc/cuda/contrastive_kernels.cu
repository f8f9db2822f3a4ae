// CUDA kernels of the contrastive losses (docs/contrastive.md): InfoNCE and the VSE++ triplet
// (max violation, sum of hinges). One pass over S: a block owns a 64 x 128 tile and reduces it both
// ways, rows across each warp's lanes and columns across the warps, into per-tile partials that a
// second kernel merges per query in tile order. Deterministic (fixed orders, no floating-point
// atomics). On the GPU the pass is bound by reading S, so InfoNCE keeps a running shifted sum per
// query and direction (two exponentials per score, no pass for the maxima first). The backward
// kernels recompute each score's weight from the saved per-query statistics.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/device_utils.cuh"
#include "cuda/launch.cuh"
#include "cuda/launchers.h"
#include "itr_kernels/contrastive_math.h"

namespace itr {
namespace cuda {
namespace {

constexpr int kWarps = kThreads / 32;
constexpr int kRowsPerWarp = 8;
constexpr int kColsPerLane = 4;
constexpr int kTileRows = kWarps * kRowsPerWarp;  // 64
constexpr int kTileCols = 32 * kColsPerLane;      // 128

__host__ __device__ __forceinline__ int64_t tiles(int64_t n, int64_t per) { return (n + per - 1) / per; }

template <typename In>
struct Scores {
  const In* data;
  int64_t rows, cols, row_stride, col_stride;
  __device__ __forceinline__ typename Traits<In>::Acc at(int64_t r, int64_t c) const {
    return to_acc(data[r * row_stride + c * col_stride]);
  }
};

template <typename In>
Scores<In> scores_of(const Matrix& m) {
  return Scores<In>{static_cast<const In*>(m.data), m.rows, m.cols, m.row_stride, m.col_stride};
}

// ---- per-query reductions: what a query accumulates over its candidates, and its result ----

template <typename T>
__device__ __forceinline__ Hardest<T> shfl_down(const Hardest<T>& x, int o) {
  Hardest<T> y;
  y.score = __shfl_down_sync(0xffffffffu, x.score, o);
  y.index = __shfl_down_sync(0xffffffffu, static_cast<long long>(x.index), o);
  return y;
}

template <typename T>
struct HingeSum {
  T sum = T(0), count = T(0);
};

template <typename T>
__device__ __forceinline__ HingeSum<T> shfl_down(const HingeSum<T>& x, int o) {
  HingeSum<T> y;
  y.sum = __shfl_down_sync(0xffffffffu, x.sum, o);
  y.count = __shfl_down_sync(0xffffffffu, x.count, o);
  return y;
}

// InfoNCE: the shifted sum of the negatives, the positive counted in the shift only. Writes the
// loss and (shift, 1 / total, negatives' share) into the direction's (3, Q) block of stats.
template <typename T>
struct InfoNCEOp {
  using State = ShiftedSum<T>;
  using Extra = T;
  static constexpr int kExtraPerQuery = 3;
  static constexpr bool kReadsPositive = false;
  T k;
  __device__ void add(State& st, T s, T, int64_t, bool is_positive) const {
    if (is_positive) st.add_max(s, k);
    else st.add(s, k);
  }
  __device__ void merge(State& a, const State& b) const { a.merge(b, k); }
  template <typename In>
  __device__ void finish(const State& st, T pos, int64_t q, int64_t n_queries, In* loss, T* stats) const {
    T inv_total, neg_share;
    *loss = from_acc<In>(infonce_finish(pos, st.max, st.sum, k, inv_total, neg_share));
    stats[q] = st.max;
    stats[n_queries + q] = inv_total;
    stats[2 * n_queries + q] = neg_share;
  }
};

template <typename T>
struct HardestOp {
  using State = Hardest<T>;
  using Extra = int64_t;
  static constexpr int kExtraPerQuery = 1;
  static constexpr bool kReadsPositive = false;
  T margin;
  __device__ void add(State& st, T s, T, int64_t index, bool is_positive) const {
    if (!is_positive) st.add(s, index);
  }
  __device__ void merge(State& a, const State& b) const { a.merge(b); }
  template <typename In>
  __device__ void finish(const State& st, T pos, int64_t q, int64_t, In* loss, int64_t* aux) const {
    *loss = from_acc<In>(max_violation_loss(st, margin, pos, aux[q]));
  }
};

template <typename T>
struct HingeSumOp {
  using State = HingeSum<T>;
  using Extra = int64_t;
  static constexpr int kExtraPerQuery = 1;
  static constexpr bool kReadsPositive = true;
  T margin;
  __device__ void add(State& st, T s, T pos, int64_t, bool is_positive) const {
    if (is_positive) return;
    const T h = margin + s - pos;
    st.sum += hinge(h);
    st.count += h > T(0) ? T(1) : T(0);
  }
  __device__ void merge(State& a, const State& b) const {
    a.sum += b.sum;
    a.count += b.count;
  }
  template <typename In>
  __device__ void finish(const State& st, T, int64_t q, int64_t, In* loss, int64_t* aux) const {
    *loss = from_acc<In>(st.sum);
    aux[q] = static_cast<int64_t>(st.count);
  }
};

// The positive column of row r: r itself on a square matrix; -1 when out of range (then no
// candidate is the positive and the query's loss is NaN).
__device__ __forceinline__ int64_t positive_of(const int64_t* positives, int64_t r, int64_t cols) {
  if (!positives) return r;
  const int64_t p = positives[r];
  return p >= 0 && p < cols ? p : -1;
}

// One tile per block (grid-stride over row tiles in y): thread (lane, warp) reads rows
// warp * 8 + t and columns lane + 32 u. Row partials: (rows, col_tiles); column partials (square
// only): (row_tiles, cols), rows folded in ascending order.
template <typename In, typename Op, bool kBoth>
__global__ void __launch_bounds__(kThreads) contrastive_tiles(Scores<In> s, const int64_t* positives, Op op,
                                                              typename Op::State* row_part,
                                                              typename Op::State* col_part) {
  using T = typename Traits<In>::Acc;
  using State = typename Op::State;
  __shared__ __align__(16) unsigned char raw[kBoth ? kWarps * kTileCols * sizeof(State) : 1];
  State* col_states = reinterpret_cast<State*>(raw);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t col_tiles = gridDim.x, c0 = static_cast<int64_t>(blockIdx.x) * kTileCols;
  const int64_t row_tiles = tiles(s.rows, kTileRows);
  for (int64_t rt = blockIdx.y; rt < row_tiles; rt += gridDim.y) {
    State cst[kColsPerLane];
    T cpos[kColsPerLane];
#pragma unroll
    for (int u = 0; u < kColsPerLane; ++u) {
      const int64_t c = c0 + lane + 32 * u;
      cpos[u] = kBoth && Op::kReadsPositive && c < s.cols ? s.at(c, c) : T(0);
    }
    for (int t = 0; t < kRowsPerWarp; ++t) {
      const int64_t r = rt * kTileRows + warp * kRowsPerWarp + t;
      if (r >= s.rows) break;  // uniform across the warp
      const int64_t p = positive_of(positives, r, s.cols);
      const T rpos = Op::kReadsPositive ? (p >= 0 ? s.at(r, p) : T(NAN)) : T(0);
      State rst;
#pragma unroll
      for (int u = 0; u < kColsPerLane; ++u) {
        const int64_t c = c0 + lane + 32 * u;
        if (c >= s.cols) continue;
        const T v = s.at(r, c);
        op.add(rst, v, rpos, c, c == p);
        if (kBoth) op.add(cst[u], v, cpos[u], r, r == c);
      }
      for (int o = 16; o > 0; o >>= 1) op.merge(rst, shfl_down(rst, o));  // lane 0 holds the row's part
      if (lane == 0) row_part[r * col_tiles + blockIdx.x] = rst;
    }
    if (kBoth) {
      __syncthreads();  // the previous row tile's column states are read
#pragma unroll
      for (int u = 0; u < kColsPerLane; ++u) col_states[warp * kTileCols + lane + 32 * u] = cst[u];
      __syncthreads();
      const int64_t c = c0 + threadIdx.x;
      if (threadIdx.x < kTileCols && c < s.cols) {
        State acc = col_states[threadIdx.x];
        for (int w = 1; w < kWarps; ++w) op.merge(acc, col_states[w * kTileCols + threadIdx.x]);
        col_part[rt * s.cols + c] = acc;
      }
    }
  }
}

// Per query (direction d, index q): the partials merged in tile order, then the result.
template <typename In, typename Op>
__global__ void contrastive_finish(Scores<In> s, const int64_t* positives, Op op, const typename Op::State* row_part,
                                   const typename Op::State* col_part, int64_t col_tiles, int64_t row_tiles,
                                   int64_t directions, In* loss, typename Op::Extra* extra) {
  using T = typename Traits<In>::Acc;
  using State = typename Op::State;
  const int64_t n = s.rows;
  const int64_t per_direction = Op::kExtraPerQuery * n;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < directions * n;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = e / n, q = e % n;
    State acc;
    if (d == 0) {
      for (int64_t t = 0; t < col_tiles; ++t) op.merge(acc, row_part[q * col_tiles + t]);
    } else {
      for (int64_t t = 0; t < row_tiles; ++t) op.merge(acc, col_part[t * s.cols + q]);
    }
    const int64_t p = positive_of(positives, q, s.cols);
    const T pos = p >= 0 ? s.at(q, p) : T(NAN);
    op.finish(acc, pos, q, n, loss + e, extra + d * per_direction);
  }
}

unsigned flat_grid(int64_t work) {
  const int64_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 * 32 ? blocks : 65535 * 32);
}

template <typename In, typename Op>
int64_t work_bytes_for(const Matrix& m, bool square) {
  const int64_t col_tiles = tiles(m.cols, kTileCols), row_tiles = tiles(m.rows, kTileRows);
  return (m.rows * col_tiles + (square ? row_tiles * m.cols : 0)) * static_cast<int64_t>(sizeof(typename Op::State));
}

template <typename In, typename Op>
void run_reduction(const Matrix& m, const int64_t* positives, const Op& op, void* work, void* loss,
                   typename Op::Extra* extra, cudaStream_t stream) {
  using State = typename Op::State;
  const Scores<In> s = scores_of<In>(m);
  const int64_t col_tiles = tiles(m.cols, kTileCols), row_tiles = tiles(m.rows, kTileRows);
  State* row_part = static_cast<State*>(work);
  State* col_part = row_part + m.rows * col_tiles;
  const dim3 grid(static_cast<unsigned>(col_tiles), row_grid(row_tiles));
  if (positives)
    launch<contrastive_tiles<In, Op, false>>(grid, kThreads, stream, s, positives, op, row_part, col_part);
  else
    launch<contrastive_tiles<In, Op, true>>(grid, kThreads, stream, s, positives, op, row_part, col_part);
  const int64_t directions = positives ? 1 : 2;
  launch<contrastive_finish<In, Op>>(flat_grid(directions * m.rows), kThreads, stream, s, positives, op,
                                     static_cast<const State*>(row_part), static_cast<const State*>(col_part),
                                     col_tiles, row_tiles, directions, static_cast<In*>(loss), extra);
}

// ---- backward ----

// dL/dS[i, j] from each direction's statistics (shift, 1 / total, negatives' share) and upstream
// gradient; a score whose row and column share a shift takes one exponential.
template <typename In>
__global__ void infonce_grad(Scores<In> s, const int64_t* positives, const typename Traits<In>::Acc* grad,
                             const typename Traits<In>::Acc* stats, double temperature, In* out) {
  using T = typename Traits<In>::Acc;
  const T k = kLog2e / temperature, inv_t = 1.0 / temperature;
  const int64_t n = s.rows, cols = s.cols;
  const T* col_st = stats + 3 * n;  // square only
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < n * cols;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i = e / cols, j = e % cols;
    const int64_t p = positive_of(positives, i, cols);
    T v;
    if (j == p) {  // the positive of row i (and, square, of column i): -(negatives' share) / T
      v = -inv_t * grad[i] * stats[2 * n + i];
      if (!positives) v -= inv_t * grad[n + i] * col_st[2 * n + i];
    } else {
      const T x = s.at(i, j), shift = stats[i];
      const T er = exp2_shifted((x - shift) * k);
      v = er * (grad[i] * inv_t * stats[n + i]);
      if (!positives) {
        const T ec = col_st[j] == shift ? er : exp2_shifted((x - col_st[j]) * k);
        v += ec * (grad[n + j] * inv_t * col_st[n + j]);
      }
    }
    out[e] = from_acc<In>(v);
  }
}

// Sum of hinges reads each column's positive from `diag` (the diagonal in the accumulator type,
// square only): read through S, S[j, j] would be one scattered load per score.
template <typename In>
__global__ void vse_triplet_grad(Scores<In> s, const int64_t* positives, const typename Traits<In>::Acc* grad,
                                 const int64_t* aux, const typename Traits<In>::Acc* diag, double margin,
                                 bool max_violation, In* out) {
  using T = typename Traits<In>::Acc;
  const T m = margin;
  const int64_t n = s.rows, cols = s.cols;
  const bool square = positives == nullptr;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < n * cols;
       e += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i = e / cols, j = e % cols;
    const int64_t p = positive_of(positives, i, cols);
    T v = 0;
    if (max_violation) {
      if (j == p) {
        v = -((aux[i] >= 0 ? grad[i] : T(0)) + (square && aux[n + i] >= 0 ? grad[n + i] : T(0)));
      } else {
        v = (j == aux[i] ? grad[i] : T(0)) + (square && aux[n + j] == i ? grad[n + j] : T(0));
      }
    } else if (j == p) {
      v = -(grad[i] * static_cast<T>(aux[i]) + (square ? grad[n + i] * static_cast<T>(aux[n + i]) : T(0)));
    } else {
      const T x = s.at(i, j);
      const T pos = p >= 0 ? s.at(i, p) : T(NAN);
      v = (m + x - pos > T(0) ? grad[i] : T(0)) + (square && m + x - diag[j] > T(0) ? grad[n + j] : T(0));
    }
    out[e] = from_acc<In>(v);
  }
}

}  // namespace

int64_t infonce_work_bytes(Matrix scores, bool square) {
  int64_t bytes = 0;
  dispatch(scores.dtype, [&](auto in) {
    using In = decltype(in);
    bytes = work_bytes_for<In, InfoNCEOp<typename Traits<In>::Acc>>(scores, square);
  });
  return bytes;
}

cudaError_t infonce(Matrix scores, const int64_t* positives, double temperature, void* work, void* loss, void* stats,
                    cudaStream_t stream) {
  if (scores.rows == 0) return cudaSuccess;
  return dispatch(scores.dtype, [&](auto in) {
    using In = decltype(in);
    using T = typename Traits<In>::Acc;
    run_reduction<In>(scores, positives, InfoNCEOp<T>{static_cast<T>(kLog2e / temperature)}, work, loss,
                      static_cast<T*>(stats), stream);
  });
}

cudaError_t infonce_backward(Matrix scores, const int64_t* positives, const void* grad_acc, const void* stats_acc,
                             double temperature, void* out, cudaStream_t stream) {
  if (scores.rows == 0 || scores.cols == 0) return cudaSuccess;
  return dispatch(scores.dtype, [&](auto in) {
    using In = decltype(in);
    using T = typename Traits<In>::Acc;
    launch<infonce_grad<In>>(flat_grid(scores.rows * scores.cols), kThreads, stream, scores_of<In>(scores), positives,
                             static_cast<const T*>(grad_acc), static_cast<const T*>(stats_acc), temperature,
                             static_cast<In*>(out));
  });
}

int64_t vse_triplet_work_bytes(Matrix scores, bool square, bool max_violation) {
  int64_t bytes = 0;
  dispatch(scores.dtype, [&](auto in) {
    using In = decltype(in);
    using T = typename Traits<In>::Acc;
    bytes = max_violation ? work_bytes_for<In, HardestOp<T>>(scores, square)
                          : work_bytes_for<In, HingeSumOp<T>>(scores, square);
  });
  return bytes;
}

cudaError_t vse_triplet(Matrix scores, const int64_t* positives, double margin, bool max_violation, void* work,
                        void* loss, int64_t* aux, cudaStream_t stream) {
  if (scores.rows == 0) return cudaSuccess;
  return dispatch(scores.dtype, [&](auto in) {
    using In = decltype(in);
    using T = typename Traits<In>::Acc;
    if (max_violation)
      run_reduction<In>(scores, positives, HardestOp<T>{static_cast<T>(margin)}, work, loss, aux, stream);
    else
      run_reduction<In>(scores, positives, HingeSumOp<T>{static_cast<T>(margin)}, work, loss, aux, stream);
  });
}

cudaError_t vse_triplet_backward(Matrix scores, const int64_t* positives, const void* grad_acc, const int64_t* aux,
                                 const void* diag_acc, double margin, bool max_violation, void* out,
                                 cudaStream_t stream) {
  if (scores.rows == 0 || scores.cols == 0) return cudaSuccess;
  return dispatch(scores.dtype, [&](auto in) {
    using In = decltype(in);
    using T = typename Traits<In>::Acc;
    launch<vse_triplet_grad<In>>(flat_grid(scores.rows * scores.cols), kThreads, stream, scores_of<In>(scores),
                                 positives, static_cast<const T*>(grad_acc), aux, static_cast<const T*>(diag_acc),
                                 margin, max_violation, static_cast<In*>(out));
  });
}

}  // namespace cuda
}  // namespace itr
