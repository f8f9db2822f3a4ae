// Run-time choice of the CPU kernels' instruction set. setup.py compiles every csrc/cpu/*.cpp once
// for the portable baseline and, on x86-64 with GCC, again for x86-64-v3 (AVX2 + FMA) and
// x86-64-v4 (AVX-512) through generated wrappers (csrc/cpu/isa_variant.h). Each copy hands its
// registrations to this registry instead of registering with the dispatcher itself; at import,
// isa.cpp registers only the copy for the best level the running CPU supports, so one binary runs
// everywhere and still uses the wide vectors where they exist.
#pragma once

#include <torch/library.h>

#include <string>

// The level a translation unit is compiled for: 0 baseline, 1 x86-64-v3, 2 x86-64-v4.
#ifndef ITR_CPU_ISA
#define ITR_CPU_ISA 0
#endif

// Outside namespace itr, which the variant wrappers rename per level.
namespace itr_cpu_isa {

using RegisterFn = void (*)(torch::Library&);

// Records the registration function of one kernel file at one level (static initialisation).
bool add_kernels(int level, RegisterFn fn);

// Registers the CPU kernels of the chosen level with the dispatcher (once; from PyInit__C, after all
// static initialisers ran). Returns an error message, empty on success. ITR_KERNELS_CPU_ISA
// (baseline, x86-64-v3, x86-64-v4) caps the level, e.g. to compare the variants on one machine.
std::string register_kernels();

// JSON fields for build_info(): the level that runs, those compiled, and those the CPU supports.
std::string info_json();

}  // namespace itr_cpu_isa

// Ends a kernel file: `ITR_CPU_KERNELS(m) { m.impl("op", &op_cpu); }` in place of
// TORCH_LIBRARY_IMPL(itr_kernels, CPU, m).
#define ITR_CPU_KERNELS(m)                                                                           \
  static void itr_register_cpu_kernels(torch::Library&);                                            \
  [[maybe_unused]] static const bool itr_cpu_kernels_added =                                        \
      ::itr_cpu_isa::add_kernels(ITR_CPU_ISA, &itr_register_cpu_kernels);                           \
  static void itr_register_cpu_kernels(torch::Library& m)
