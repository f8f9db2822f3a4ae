// Device helpers shared by the CUDA kernel files: element conversion, the per-dtype pair-term
// flavour, row access through strides, block reductions and dtype dispatch. CUDA headers only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#if defined(ITR_CUDA_EMU)
#include "cuda_emu/runtime.h"  // the device built-ins on the CPU (threadIdx, __syncthreads, ...)
#endif
#include "cuda/launchers.h"
#include "itr_kernels/contrastive_math.h"
#include "itr_kernels/ranking_math.h"

namespace itr {
namespace cuda {

constexpr int kThreads = 256;
constexpr int kMaxGridY = 65535;

// ---- element access ----

template <typename Acc> __device__ __forceinline__ Acc neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double neg_inf<double>() { return __longlong_as_double(0xfff0000000000000ULL); }

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename Out> __device__ __forceinline__ Out from_acc(float x);
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <typename Out> __device__ __forceinline__ Out from_acc(double x) { return x; }

// The accumulator and pair-term flavours of each input dtype: Sig for the sigmoid (forward),
// GradSig for sigma' (backward). float16 / bfloat16 take the one-op tanh sigmoid forward, but the
// float32 sigma' backward: the tanh form of sigma' cancels (see FastPairSigmoid).
template <typename In> struct Traits {
  using Acc = float;
  using Sig = PairSigmoid<float>;
  using GradSig = PairSigmoid<float>;
};
template <> struct Traits<double> {
  using Acc = double;
  using Sig = PairSigmoid<double>;
  using GradSig = PairSigmoid<double>;
};
template <> struct Traits<__half> {
  using Acc = float;
  using Sig = FastPairSigmoid;
  using GradSig = PairSigmoid<float>;
};
template <> struct Traits<__nv_bfloat16> {
  using Acc = float;
  using Sig = FastPairSigmoid;
  using GradSig = PairSigmoid<float>;
};

template <typename In>
struct RowReader {
  const In* data;
  const bool* valid;
  int64_t cols, row_stride, col_stride;
  // Staged score of (q, j): w = s * scale, -inf for a masked candidate (its pair terms vanish).
  template <typename Acc>
  __device__ __forceinline__ Acc staged(int64_t q, int64_t j, Acc scale) const {
    if (valid && !valid[q * cols + j]) return neg_inf<Acc>();
    return to_acc(data[q * row_stride + j * col_stride]) * scale;
  }
  __device__ __forceinline__ bool is_valid(int64_t q, int64_t j) const { return !valid || valid[q * cols + j]; }
};

template <typename T>
__device__ __forceinline__ T block_sum(T x) {
  __shared__ T partial[kThreads / 32];
  for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(0xffffffffu, x, o);
  __syncthreads();  // partial may still be read by a previous call
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = x;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
  return total;
}

// Dummy coefficient type for sweeps without one.
struct NoCoef {};
__device__ __forceinline__ float to_acc(NoCoef) { return 0.f; }

inline unsigned row_grid(int64_t rows) { return static_cast<unsigned>(rows < kMaxGridY ? rows : kMaxGridY); }

template <typename In>
inline RowReader<In> reader(const Matrix& m, const bool* valid) {
  return RowReader<In>{static_cast<const In*>(m.data), valid, m.cols, m.row_stride, m.col_stride};
}

// Calls f(In{}) with the C++ type of `dtype`.
template <typename F>
inline cudaError_t dispatch(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::kFloat64: f(double{}); break;
    case Dtype::kFloat32: f(float{}); break;
    case Dtype::kFloat16: f(__half{}); break;
    case Dtype::kBFloat16: f(__nv_bfloat16{}); break;
  }
  return cudaGetLastError();
}

}  // namespace cuda

// A ShiftedSum (contrastive_math.h) from the lane `o` above, for warp merges. In ShiftedSum's
// namespace, so that argument-dependent lookup finds it next to a kernel file's own overloads.
template <typename T>
__device__ __forceinline__ ShiftedSum<T> shfl_down(const ShiftedSum<T>& x, int o) {
  ShiftedSum<T> y;
  y.max = __shfl_down_sync(0xffffffffu, x.max, o);
  y.sum = __shfl_down_sync(0xffffffffu, x.sum, o);
  return y;
}

}  // namespace itr
