// csrc/cuda/contrastive_kernels.cu compiled as C++ for the CPU emulation of CUDA (a .cpp name, so
// that torch's extension builder hands it to the host compiler rather than nvcc).
#include "cuda/contrastive_kernels.cu"
