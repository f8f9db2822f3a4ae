// Test-only kernels for the emulation's own tests (python_tests/test_cuda_emu.py): each one either
// has a defect that the emulation must report, or exercises one of its primitives. They are CUDA
// kernels written as for nvcc, run through the same launch<kernel>() as csrc/cuda/*.cu, and
// reachable from Python as itr_emu_selftest::run(kernel, x, grid, block, arg) -> out, where out
// has one float per launched thread (threads numbered x fastest, then blocks), or one for the
// kernels that write none or one.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "cuda/launch.cuh"
#include "cuda_emu/runtime.h"

namespace itr {
namespace emu_selftest {
namespace {

__device__ int64_t global_id() {
  const int64_t block = blockIdx.x + static_cast<int64_t>(gridDim.x) * (blockIdx.y + gridDim.y * blockIdx.z);
  const int64_t thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  return block * blockDim.x * blockDim.y * blockDim.z + thread;
}

// out = in rotated by one within each block of 256, through shared memory. Without the barrier
// a thread may read its neighbour's slot before the neighbour wrote it.
template <bool kSync>
__global__ void rotate(const float* in, float* out) {
  __shared__ float tile[256];
  const int64_t i = global_id();
  tile[threadIdx.x] = in[i];
  if (kSync) __syncthreads();
  out[i] = tile[(threadIdx.x + 1) % 256];
}

// Reads shared memory that no thread of the block wrote.
__global__ void read_unwritten(float* out) {
  __shared__ float tile[256];
  out[global_id()] = tile[threadIdx.x];
}

// A barrier that only the threads below `cut` reach.
__global__ void divergent_barrier(float* out, int cut) {
  if (static_cast<int>(threadIdx.x) < cut) __syncthreads();
  out[global_id()] = 1.f;
}

// Odd and even threads wait at different barriers.
__global__ void two_barriers(float* out) {
  if (threadIdx.x & 1) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[global_id()] = 1.f;
}

// The lanes below `lanes` shuffle with `mask`; the others skip it.
__global__ void partial_shuffle(const float* in, float* out, unsigned mask, int lanes) {
  float v = in[global_id()];
  if (static_cast<int>(threadIdx.x % 32) < lanes) v = __shfl_down_sync(mask, v, 1);
  out[global_id()] = v;
}

// Warp collectives on in = lane numbers: down and xor sums, up and indexed reads, a width of 8.
__global__ void warp_collectives(const float* in, float* out, int which) {
  const float v = in[global_id()];
  float r = v;
  switch (which) {
    case 0:
      for (int o = 16; o > 0; o >>= 1) r += __shfl_down_sync(0xffffffffu, r, o);
      break;
    case 1:
      for (int o = 16; o > 0; o >>= 1) r += __shfl_xor_sync(0xffffffffu, r, o);
      break;
    case 2:
      r = __shfl_up_sync(0xffffffffu, v, 3);
      break;
    case 3:
      r = __shfl_sync(0xffffffffu, v, 5);
      break;
    case 4:
      r = __shfl_down_sync(0xffffffffu, v, 1, 8);
      break;
    case 5:
      __syncwarp();
      r = __shfl_xor_sync(0x0000ffffu << (threadIdx.x & 16), v, 1);  // two half-warp groups
      break;
  }
  out[global_id()] = r;
}

// An off-by-one tile bound: the last thread reads in[n], one past the end (ASan reports it).
__global__ void read_past_end(const float* in, float* out, int64_t n) {
  const int64_t i = global_id();
  if (i < n) out[i] = in[i] + (i + 1 <= n ? in[i + 1] : 0.f);
}

// Two barriers per thread: for the scheduler's cost on a large grid.
__global__ void two_barrier_rounds(float* out) {
  __shared__ float tile[256];
  tile[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  const float v = tile[255 - threadIdx.x];
  __syncthreads();
  tile[threadIdx.x] = v;
  if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0) out[0] = v;
}

__global__ void nothing() {}

at::Tensor run(const std::string& kernel, const at::Tensor& x, at::IntArrayRef grid_size, at::IntArrayRef block_size,
               int64_t arg) {
  TORCH_CHECK(grid_size.size() == 3 && block_size.size() == 3, "grid and block: 3 sizes each");
  const dim3 grid(grid_size[0], grid_size[1], grid_size[2]);
  const dim3 block(block_size[0], block_size[1], block_size[2]);
  const at::Tensor in = x.to(at::kFloat).contiguous();
  const int64_t threads = grid_size[0] * grid_size[1] * grid_size[2] * block_size[0] * block_size[1] * block_size[2];
  const bool per_thread = kernel != "two_barrier_rounds" && kernel != "nothing";
  at::Tensor out = at::zeros({per_thread ? threads : 1}, in.options());
  const float* i = in.const_data_ptr<float>();
  float* o = out.mutable_data_ptr<float>();
  using cuda::launch;
  if (kernel == "rotate") launch<rotate<true>>(grid, block, nullptr, i, o);
  else if (kernel == "rotate_unsynced") launch<rotate<false>>(grid, block, nullptr, i, o);
  else if (kernel == "read_unwritten") launch<read_unwritten>(grid, block, nullptr, o);
  else if (kernel == "divergent_barrier") launch<divergent_barrier>(grid, block, nullptr, o, static_cast<int>(arg));
  else if (kernel == "two_barriers") launch<two_barriers>(grid, block, nullptr, o);
  else if (kernel == "partial_shuffle")
    launch<partial_shuffle>(grid, block, nullptr, i, o, static_cast<unsigned>(arg >> 8), static_cast<int>(arg & 255));
  else if (kernel == "warp_collectives") launch<warp_collectives>(grid, block, nullptr, i, o, static_cast<int>(arg));
  else if (kernel == "read_past_end") launch<read_past_end>(grid, block, nullptr, i, o, in.numel());
  else if (kernel == "two_barrier_rounds") launch<two_barrier_rounds>(grid, block, nullptr, o);
  else if (kernel == "nothing") launch<nothing>(grid, block, nullptr);
  else TORCH_CHECK(false, "no self-test kernel ", kernel);
  emu::check(cudaGetLastError(), kernel.c_str());
  return out;
}

}  // namespace
}  // namespace emu_selftest
}  // namespace itr

TORCH_LIBRARY(itr_emu_selftest, m) {
  m.def("run(str kernel, Tensor x, int[] grid, int[] block, int arg) -> Tensor");
  m.impl("run", c10::DispatchKey::CompositeExplicitAutograd, &itr::emu_selftest::run);
}
