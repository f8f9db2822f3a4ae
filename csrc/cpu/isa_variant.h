// Included first by the wrappers setup.py generates (build/generated/cpu_isa/<kernel>.<level>.cpp),
// which then include csrc/cpu/<kernel>.cpp: that kernel file compiled for a wider instruction set.
//
// Why this way, not -march on the file: a file compiled with -mavx512f also emits its copies of the
// library's inline functions (ATen, c10, std) with AVX-512 instructions, under the same symbol
// names as the baseline files' copies; the linker keeps one of them, and if it keeps the AVX-512
// one the baseline code dies with SIGILL on an older CPU. Here every library header is read first,
// compiled for the baseline; only what follows (the kernel file and the project's own headers) gets
// the wider target, and `itr` is renamed so that the project's own inline functions and templates
// get their own symbol names per level. The baseline's inline library functions still inline into
// the wide kernels (a callee whose instruction set is a subset of the caller's may be inlined).
#pragma once

#if !defined(__GNUC__) || defined(__clang__) || !defined(__x86_64__)
#error "the CPU instruction-set variants are for GCC on x86-64 (setup.py builds only the baseline elsewhere)"
#endif

// Every library header the kernel files and csrc/cpu/*.h include: add here any new one a kernel
// file includes. python_tests/test_build.py checks the binary (no function outside the variants'
// namespaces uses an AVX instruction).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu/isa.h"

#if ITR_CPU_ISA == 1
#pragma GCC target("avx,avx2,bmi,bmi2,f16c,fma,lzcnt,movbe,popcnt,sse4.2,xsave")
#define itr itr_x86_64_v3
#elif ITR_CPU_ISA == 2
#pragma GCC target("avx,avx2,bmi,bmi2,f16c,fma,lzcnt,movbe,popcnt,sse4.2,xsave,avx512f,avx512bw,avx512cd,avx512dq,avx512vl")
#define itr itr_x86_64_v4
#else
#error "ITR_CPU_ISA must be 1 (x86-64-v3) or 2 (x86-64-v4) in a variant wrapper"
#endif
