// A CPU emulation of the CUDA execution model, so that the real kernels (csrc/cuda/*.cu, compiled
// with g++ -DITR_CUDA_EMU) run and are tested on machines without a GPU. What this header gives
// the kernel sources, on top of the CUDA headers' host declarations (dim3, __half, __nv_bfloat16
// and their conversions):
//   - threadIdx, blockIdx, blockDim, gridDim, warpSize;
//   - __shared__: block-shared static storage, poisoned (0xFF bytes) before every block;
//   - __syncthreads(), __syncwarp() and the warp shuffles, as barriers: each block's threads run
//     as fibers, in turn, and at every barrier release they resume in a seeded random order;
//     a barrier that can never complete is an error naming the kernel and the barrier's line;
//   - the device intrinsics the kernels use (__int_as_float, ...);
//   - cudaGetLastError(): launch-configuration errors reach the launchers as on a GPU.
// runtime.cpp has the scheduler. Not emulated: the memory model (a block's threads run one at a
// time, each up to its next barrier), timing, and warp-synchronous code without a collective.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <math.h>
#include <type_traits>

#if !defined(ITR_CUDA_EMU)
#error "cuda_emu/runtime.h is the CPU emulation of CUDA: compile with -DITR_CUDA_EMU"
#endif

// Shared memory: function-local statics. noinit (not section(...), which g++ 12 drops for statics
// of template instantiations) puts each in a .noinit.* section; csrc/cuda_emu/shared.ld gathers
// those into one section, which the runtime poisons before every block. used: without it, g++
// folds the reads of a never-written static to 0 instead of reading the poison.
#undef __shared__
#define __shared__ static __attribute__((noinit, used))
#define __launch_bounds__(...)

// Built-in variables, set by the scheduler before it resumes a thread.
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

namespace itr {
namespace emu {

// The scheduler's entry points (runtime.cpp). file/line name the barrier in error reports.
void sync_block(const char* file, int line);
// Warp collective: waits until every lane of `mask` arrives at the same call, then returns the
// 8-byte value that lane `src_lane` passed in (poison if src_lane is not in `mask`).
uint64_t warp_exchange(unsigned mask, uint64_t value, int src_lane, const char* file, int line);

// Runs kernel `name` on `grid` x `block` threads, body() being the kernel call of one thread.
// Invalid configurations set the error that cudaGetLastError() returns, as on a GPU; faults
// (deadlock, ...) throw std::runtime_error.
void launch_erased(const char* name, dim3 grid, dim3 block, void (*body)(void*), void* ctx);

template <typename F>
void launch(const char* name, dim3 grid, dim3 block, F&& body) {
  launch_erased(name, grid, block, [](void* f) { (*static_cast<std::remove_reference_t<F>*>(f))(); },
                const_cast<void*>(static_cast<const void*>(&body)));
}

// Thread order: the seed of the per-launch random order at barrier releases.
void set_seed(uint64_t seed);
uint64_t seed();

// Launches and blocks run so far (for reports).
struct Stats {
  uint64_t launches, blocks, threads, releases;
};
Stats stats();

// Throws (with the emulation's description of the launch error, if it has one) when err != 0,
// or when a launch error is still pending: a launcher that did not return it.
void check(cudaError_t err, const char* expr);

// This thread's lane: threadIdx linearised (x fastest), modulo 32, as in CUDA.
inline int lane_id() {
  return static_cast<int>((threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31u);
}

template <typename T>
T shuffle(unsigned mask, T var, int src_lane, const char* file, int line) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "a warp shuffle moves 1 to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = warp_exchange(mask, bits, src_lane, file, line);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

}  // namespace emu
}  // namespace itr

// ---- barriers and warp collectives (width: a power of two <= 32, as in CUDA) ----

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::itr::emu::sync_block(file, line);
}

inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::itr::emu::warp_exchange(mask, 0, ::itr::emu::lane_id(), file, line);
}

template <typename T>
T __shfl_sync(unsigned mask, T var, int src, int width = warpSize, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  const int lane = ::itr::emu::lane_id(), base = lane & ~(width - 1);
  return ::itr::emu::shuffle(mask, var, base + (src & (width - 1)), file, line);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize, const char* file = __builtin_FILE(),
                   int line = __builtin_LINE()) {
  const int lane = ::itr::emu::lane_id();
  const bool inside = (lane & (width - 1)) + static_cast<int>(delta) < width;
  return ::itr::emu::shuffle(mask, var, inside ? lane + static_cast<int>(delta) : lane, file, line);
}

template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize, const char* file = __builtin_FILE(),
                 int line = __builtin_LINE()) {
  const int lane = ::itr::emu::lane_id();
  const bool inside = (lane & (width - 1)) >= static_cast<int>(delta);
  return ::itr::emu::shuffle(mask, var, inside ? lane - static_cast<int>(delta) : lane, file, line);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize, const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  const int lane = ::itr::emu::lane_id(), src = lane ^ lane_mask;
  const bool inside = (src & ~(width - 1)) == (lane & ~(width - 1));
  return ::itr::emu::shuffle(mask, var, inside ? src : lane, file, line);
}

// ---- device intrinsics used by the kernels ----

inline float __int_as_float(int x) {
  float f;
  std::memcpy(&f, &x, sizeof f);
  return f;
}
inline int __float_as_int(float x) {
  int i;
  std::memcpy(&i, &x, sizeof i);
  return i;
}
inline double __longlong_as_double(long long x) {
  double d;
  std::memcpy(&d, &x, sizeof d);
  return d;
}
inline long long __double_as_longlong(double x) {
  long long i;
  std::memcpy(&i, &x, sizeof i);
  return i;
}
