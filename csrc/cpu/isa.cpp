// The registry of isa.h and the run-time choice of the CPU kernels' instruction-set level.
#include "cpu/isa.h"

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

namespace itr_cpu_isa {
namespace {

constexpr const char* kNames[] = {"baseline", "x86-64-v3", "x86-64-v4"};
constexpr int kLevels = 3;

struct Entry {
  int level;
  RegisterFn fn;
};

// Function-local: filled by static initialisers of other files, whatever their order.
std::vector<Entry>& entries() {
  static std::vector<Entry> e;
  return e;
}

int compiled_max() {
  int m = 0;
  for (const Entry& e : entries()) m = e.level > m ? e.level : m;
  return m;
}

// The highest level whose instructions this CPU (and OS: __builtin_cpu_supports checks that the
// AVX registers are enabled) supports.
int supported_max() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return 2;
  if (__builtin_cpu_supports("x86-64-v3")) return 1;
#endif
  return 0;
}

int chosen = -1;

std::string quoted_list(int upto) {
  std::string s = "[";
  for (int l = 0; l <= upto; ++l) s += std::string(l ? ", " : "") + "\"" + kNames[l] + "\"";
  return s + "]";
}

}  // namespace

bool add_kernels(int level, RegisterFn fn) {
  entries().push_back({level, fn});
  return true;
}

std::string register_kernels() {
  if (chosen >= 0) return "";
  int level = std::min(compiled_max(), supported_max());
  if (const char* cap = std::getenv("ITR_KERNELS_CPU_ISA"); cap && *cap) {
    int c = 0;
    while (c < kLevels && std::string(cap) != kNames[c]) ++c;
    if (c == kLevels) return std::string("ITR_KERNELS_CPU_ISA must be baseline, x86-64-v3 or x86-64-v4, got ") + cap;
    level = std::min(level, c);
  }
  // Kept alive for the life of the process, like TORCH_LIBRARY_IMPL's.
  static torch::Library lib(torch::Library::IMPL, "itr_kernels", c10::DispatchKey::CPU, __FILE__, __LINE__);
  for (const Entry& e : entries())
    if (e.level == level) e.fn(lib);
  chosen = level;
  return "";
}

std::string info_json() {
  return std::string("\"cpu_isa\": \"") + (chosen >= 0 ? kNames[chosen] : "none") +
         "\", \"cpu_isa_compiled\": " + quoted_list(compiled_max()) +
         ", \"cpu_isa_supported\": " + quoted_list(supported_max());
}

}  // namespace itr_cpu_isa
