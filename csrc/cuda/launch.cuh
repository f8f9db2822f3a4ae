// Every kernel launch goes through launch<kernel>(grid, block, stream, args...): with nvcc it is the
// <<<>>> launch of that kernel; in the CPU emulation of the CUDA execution model (ITR_CUDA_EMU,
// csrc/cuda_emu/) the same call runs the kernel's blocks on the host. One source for both builds.
#pragma once

#include <cuda_runtime.h>

#include <utility>

#if defined(ITR_CUDA_EMU)
#include "cuda_emu/runtime.h"
#endif

namespace itr {
namespace cuda {

// The kernel's name with its template arguments (for the emulation's reports).
template <auto Kernel>
const char* kernel_name() {
  return __PRETTY_FUNCTION__;
}

template <auto Kernel, typename... Args>
inline void launch(dim3 grid, dim3 block, cudaStream_t stream, Args&&... args) {
#if defined(ITR_CUDA_EMU)
  (void)stream;  // the emulation runs launches in order, synchronously
  ::itr::emu::launch(kernel_name<Kernel>(), grid, block, [&] { Kernel(args...); });
#else
  Kernel<<<grid, block, 0, stream>>>(std::forward<Args>(args)...);
#endif
}

}  // namespace cuda
}  // namespace itr
