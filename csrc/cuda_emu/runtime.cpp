// The scheduler of the CPU emulation of CUDA (see runtime.h). A launch runs its blocks in turn;
// a block's threads are fibers (one stack each) that run one at a time, each until it reaches a
// barrier or exits. When none can run, the barriers that are complete are released and their
// threads resume in a random order drawn from the seed; when none is complete, no thread can ever
// move again: a deadlock, reported with the kernel, the block and where each thread waits.
#include "cuda_emu/runtime.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__) || defined(ITR_EMU_UCONTEXT)
#define ITR_EMU_USE_UCONTEXT 1
#include <ucontext.h>
#endif

// ---- the built-in variables ----

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

// The itr_emu_shared section (csrc/cuda_emu/shared.ld): every __shared__ variable of this library.
extern "C" char __start_itr_emu_shared[] __attribute__((weak));
extern "C" char __stop_itr_emu_shared[] __attribute__((weak));

namespace itr {
namespace emu {
namespace {

constexpr int kMaxThreads = 1024;
#if defined(__SANITIZE_ADDRESS__)
constexpr size_t kStackBytes = 512 << 10;  // ASan's redzones make frames several times larger
#else
constexpr size_t kStackBytes = 128 << 10;
#endif

enum class State : uint8_t { kRunnable, kAtBlockBarrier, kAtWarpBarrier, kExited };

struct Fiber {
#if defined(ITR_EMU_USE_UCONTEXT)
  ucontext_t context;
#else
  void* sp;  // saved stack pointer while suspended
#endif
  char* stack;  // lowest address of the stack (a guard page lies below it)
  uint3 idx;
  State state;
  const char* file;  // where it waits
  int line;
  unsigned mask;   // warp collective: lanes taking part,
  int src;         // the lane whose value this one receives,
  uint64_t value;  // its value in, the received value out
  void* fake_stack;
};

// splitmix64: seeds and thread orders.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  template <typename T>
  void shuffle(T* a, size_t n) {
    for (size_t i = n; i > 1; --i) std::swap(a[i - 1], a[(next() >> 32) * i >> 32]);
  }
};

struct Scheduler {
  std::mutex mutex;  // one launch at a time (the fibers and built-ins are global)
  Fiber fibers[kMaxThreads];
  char* stacks = nullptr;
#if defined(ITR_EMU_USE_UCONTEXT)
  ucontext_t main_context;
#else
  void* main_sp = nullptr;
#endif
  void* main_fake_stack = nullptr;
  const void* main_bottom = nullptr;
  size_t main_size = 0;
  bool stacks_dirty = false;  // a launch was abandoned mid-block (ASan: stale stack poison)
  int current = -1;
  int n_threads = 0;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  std::string kernel;
  std::string fault;  // set by a thread that cannot go on (the scheduler throws it)
  std::vector<int> runnable;
  Rng rng{0};
  uint64_t seed = 0;
  Stats stats{0, 0, 0, 0};
};

Scheduler& sched() {
  static Scheduler* s = new Scheduler();  // never destroyed: fibers may outlive static destruction
  return *s;
}

thread_local cudaError_t pending_error = cudaSuccess;
thread_local std::string pending_message;

// ---- context switch ----

#if !defined(ITR_EMU_USE_UCONTEXT)
extern "C" void itr_emu_switch(void** save_sp, void* to_sp);
extern "C" void itr_emu_trampoline();
// Saves the callee-saved registers on the current stack, stores its pointer in *save_sp, loads
// to_sp and restores the registers saved there. Flags, MXCSR and the x87 control word are not
// switched: the kernels never change rounding modes. The trampoline starts a new fiber: it calls
// itr_emu_fiber_main(fiber index in r12) on a 16-byte aligned stack.
asm(R"(
  .text
  .globl itr_emu_switch
  .hidden itr_emu_switch
  .type itr_emu_switch, @function
itr_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size itr_emu_switch, .-itr_emu_switch

  .globl itr_emu_trampoline
  .hidden itr_emu_trampoline
  .type itr_emu_trampoline, @function
itr_emu_trampoline:
  movq %r12, %rdi
  call itr_emu_fiber_main@PLT
  ud2
  .size itr_emu_trampoline, .-itr_emu_trampoline
)");
#endif

void asan_start_switch(void** fake_stack_save, const void* bottom, size_t size) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
#else
  (void)fake_stack_save, (void)bottom, (void)size;
#endif
}

void asan_finish_switch(void* fake_stack_save, const void** old_bottom, size_t* old_size) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake_stack_save, old_bottom, old_size);
#else
  (void)fake_stack_save, (void)old_bottom, (void)old_size;
#endif
}

// In a fiber: back to the scheduler, until the scheduler resumes this fiber.
void suspend() {
  Scheduler& s = sched();
  Fiber& f = s.fibers[s.current];
  asan_start_switch(&f.fake_stack, s.main_bottom, s.main_size);
#if defined(ITR_EMU_USE_UCONTEXT)
  swapcontext(&f.context, &s.main_context);
#else
  itr_emu_switch(&f.sp, s.main_sp);
#endif
  asan_finish_switch(f.fake_stack, &s.main_bottom, &s.main_size);
}

[[noreturn]] void fiber_loop(int index) {
  Scheduler& s = sched();
  asan_finish_switch(nullptr, &s.main_bottom, &s.main_size);
  for (;;) {  // one iteration per block of the launch
    s.body(s.ctx);
    s.fibers[index].state = State::kExited;
    suspend();
  }
}

}  // namespace
}  // namespace emu
}  // namespace itr

extern "C" __attribute__((used)) void itr_emu_fiber_main(long index) { itr::emu::fiber_loop(static_cast<int>(index)); }

namespace itr {
namespace emu {
namespace {

#if defined(ITR_EMU_USE_UCONTEXT)
void fiber_entry_uc(int index) { itr_emu_fiber_main(index); }
#endif

void allocate_stacks(Scheduler& s) {
  if (s.stacks) return;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t slot = kStackBytes + page;
  void* p = mmap(nullptr, slot * kMaxThreads, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error("CUDA emulation: cannot map the fiber stacks");
  s.stacks = static_cast<char*>(p);
  for (int i = 0; i < kMaxThreads; ++i) {
    mprotect(s.stacks + i * slot, page, PROT_NONE);  // a stack overflow faults instead of corrupting
    s.fibers[i].stack = s.stacks + i * slot + page;
  }
}

// A fresh fiber whose first resumption calls itr_emu_fiber_main(i).
void init_fiber(Scheduler& s, int i) {
  Fiber& f = s.fibers[i];
#if defined(__SANITIZE_ADDRESS__)
  if (s.stacks_dirty) ASAN_UNPOISON_MEMORY_REGION(f.stack, kStackBytes);
#endif
#if defined(ITR_EMU_USE_UCONTEXT)
  getcontext(&f.context);
  f.context.uc_stack.ss_sp = f.stack;
  f.context.uc_stack.ss_size = kStackBytes;
  f.context.uc_link = nullptr;
  makecontext(&f.context, reinterpret_cast<void (*)()>(fiber_entry_uc), 1, i);
#else
  // The frame itr_emu_switch pops: r15, r14, r13, r12 (= i), rbx, rbp (= 0, ends backtraces), and
  // the return address (the trampoline), leaving the stack 16-byte aligned for its call.
  const uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + kStackBytes - 16) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top);
  *--sp = reinterpret_cast<void*>(&itr_emu_trampoline);
  *--sp = nullptr;                                                   // rbp
  *--sp = nullptr;                                                   // rbx
  *--sp = reinterpret_cast<void*>(static_cast<intptr_t>(i));        // r12
  *--sp = nullptr;                                                   // r13
  *--sp = nullptr;                                                   // r14
  *--sp = nullptr;                                                   // r15
  f.sp = sp;
#endif
  f.fake_stack = nullptr;
}

void resume(Scheduler& s, int i) {
  Fiber& f = s.fibers[i];
  s.current = i;
  threadIdx = f.idx;
  f.state = State::kRunnable;
  asan_start_switch(&s.main_fake_stack, f.stack, kStackBytes);
#if defined(ITR_EMU_USE_UCONTEXT)
  swapcontext(&s.main_context, &f.context);
#else
  itr_emu_switch(&s.main_sp, f.sp);
#endif
  asan_finish_switch(s.main_fake_stack, nullptr, nullptr);
}

// ---- reports ----

std::string kernel_name(const char* pretty) {
  // "... kernel_name() [with auto Kernel = itr::cuda::{anonymous}::rank_kernel<float, float>]"
  std::string s = pretty;
  const size_t at = s.find("Kernel = ");
  if (at != std::string::npos) s = s.substr(at + 9, s.rfind(']') - at - 9);
  for (size_t p; (p = s.find("{anonymous}::")) != std::string::npos;) s.erase(p, 13);
  return s;
}

std::string site(const char* file, int line) {
  std::string f = file ? file : "?";
  const size_t at = f.rfind("csrc/");
  if (at != std::string::npos) f = f.substr(at);
  return f + ":" + std::to_string(line);
}

std::string dim(const dim3& d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

// "0-99, 128, 130-131"
std::string ranges(const std::vector<int>& ids) {
  std::string out;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!out.empty()) out += ", ";
    out += std::to_string(ids[i]);
    if (j > i) out += "-" + std::to_string(ids[j]);
    i = j + 1;
  }
  return out;
}

std::string where(const Scheduler& s) {
  return "kernel " + s.kernel + ", block " + dim(dim3(blockIdx.x, blockIdx.y, blockIdx.z)) + " of grid " +
         dim(gridDim) + ", " + std::to_string(s.n_threads) + " threads per block";
}

[[noreturn]] void deadlock(Scheduler& s) {
  // Group the threads by what they wait for.
  std::vector<std::pair<std::string, std::vector<int>>> groups;
  for (int i = 0; i < s.n_threads; ++i) {
    const Fiber& f = s.fibers[i];
    std::string what;
    if (f.state == State::kExited) {
      what = "exited";
    } else if (f.state == State::kAtBlockBarrier) {
      what = "wait at __syncthreads() " + site(f.file, f.line);
    } else {
      char mask[16];
      std::snprintf(mask, sizeof mask, "0x%08x", f.mask);
      what = "wait at the warp collective " + site(f.file, f.line) + " with mask " + mask + " (warp " +
             std::to_string(i / 32) + ")";
    }
    auto g = groups.begin();
    while (g != groups.end() && g->first != what) ++g;
    if (g == groups.end()) groups.push_back({what, {i}});
    else g->second.push_back(i);
  }
  std::string msg = "CUDA emulation: deadlock in " + where(s) + ": no barrier can complete (";
  for (size_t i = 0; i < groups.size(); ++i)
    msg += (i ? "; " : "") + std::to_string(groups[i].second.size()) + " threads " + groups[i].first + ": " +
           ranges(groups[i].second);
  msg += "). __syncthreads() must be reached by every thread of the block, and a warp collective by every "
         "lane of its mask, at the same call";
  s.stacks_dirty = true;
  throw std::runtime_error(msg);
}

bool same_site(const Fiber& a, const Fiber& b) {
  return a.line == b.line && (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}

// Releases every warp collective whose lanes have all arrived at the same call with the same mask,
// exchanging their values; appends the released threads to `out`.
void release_warps(Scheduler& s, std::vector<int>& out) {
  const int warps = (s.n_threads + 31) / 32;
  for (int w = 0; w < warps; ++w) {
    Fiber* lanes = s.fibers + 32 * w;
    const int n = s.n_threads - 32 * w < 32 ? s.n_threads - 32 * w : 32;
    unsigned handled = 0;
    for (int l = 0; l < n; ++l) {
      const Fiber& f = lanes[l];
      if (f.state != State::kAtWarpBarrier || (handled >> l & 1)) continue;
      const unsigned mask = f.mask;
      handled |= mask;
      bool complete = true;
      for (int m = 0; m < 32 && complete; ++m) {
        if (!(mask >> m & 1)) continue;
        complete = m < n && lanes[m].state == State::kAtWarpBarrier && lanes[m].mask == mask &&
                   same_site(lanes[m], f);
      }
      if (!complete) continue;
      uint64_t received[32];
      for (int m = 0; m < 32; ++m)
        if (mask >> m & 1) received[m] = (mask >> lanes[m].src & 1) ? lanes[lanes[m].src].value : ~uint64_t(0);
      for (int m = 0; m < 32; ++m) {
        if (!(mask >> m & 1)) continue;
        lanes[m].value = received[m];
        lanes[m].state = State::kRunnable;
        out.push_back(32 * w + m);
      }
    }
  }
}

void run_block(Scheduler& s) {
  char* const begin = __start_itr_emu_shared;
  char* const end = __stop_itr_emu_shared;
  if (end > begin) std::memset(begin, 0xFF, end - begin);
  const int n = s.n_threads;
  s.runnable.resize(n);
  for (int i = 0; i < n; ++i) {
    s.fibers[i].state = State::kRunnable;
    s.runnable[i] = i;
  }
  s.rng.shuffle(s.runnable.data(), n);
  std::vector<int> released;
  released.reserve(n);
  for (;;) {
    while (!s.runnable.empty()) {
      const int i = s.runnable.back();
      s.runnable.pop_back();
      resume(s, i);
      if (!s.fault.empty()) {
        s.stacks_dirty = true;
        throw std::runtime_error("CUDA emulation: " + s.fault + " (" + where(s) + ")");
      }
    }
    released.clear();
    release_warps(s, released);
    if (released.empty()) {
      // The block barrier: every thread waits at the same __syncthreads().
      int at_barrier = 0, exited = 0;
      const Fiber* first = nullptr;
      bool same = true;
      for (int i = 0; i < n; ++i) {
        const Fiber& f = s.fibers[i];
        if (f.state == State::kExited) {
          ++exited;
        } else if (f.state == State::kAtBlockBarrier) {
          ++at_barrier;
          if (!first) first = &f;
          same = same && same_site(f, *first);
        }
      }
      if (exited == n) return;
      if (at_barrier != n || !same) deadlock(s);
      for (int i = 0; i < n; ++i) {
        s.fibers[i].state = State::kRunnable;
        released.push_back(i);
      }
    }
    ++s.stats.releases;
    s.rng.shuffle(released.data(), released.size());
    s.runnable.assign(released.begin(), released.end());
  }
}

void set_error(cudaError_t err, const std::string& message) {
  pending_error = err;
  pending_message = message;
}

// The limits of every GPU since compute capability 3.0; static shared memory (48 KiB per block)
// is checked on the real build (csrc/cuda/check.sh), where ptxas reports it per kernel.
std::string config_error(dim3 grid, dim3 block) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0) return "an empty block " + dim(block);
  if (block.x > 1024 || block.y > 1024 || block.z > 64) return "blockDim " + dim(block) + " exceeds (1024, 1024, 64)";
  if (threads > 1024) return std::to_string(threads) + " threads per block exceed 1024";
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return "an empty grid " + dim(grid);
  if (grid.x > 2147483647u) return "gridDim.x = " + std::to_string(grid.x) + " exceeds 2^31 - 1";
  if (grid.y > 65535) return "gridDim.y = " + std::to_string(grid.y) + " exceeds 65535";
  if (grid.z > 65535) return "gridDim.z = " + std::to_string(grid.z) + " exceeds 65535";
  return "";
}

}  // namespace

void launch_erased(const char* name, dim3 grid, dim3 block, void (*body)(void*), void* ctx) {
  Scheduler& s = sched();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.kernel = kernel_name(name);
  const std::string bad = config_error(grid, block);
  if (!bad.empty()) {
    set_error(cudaErrorInvalidConfiguration, "CUDA emulation: invalid launch of " + s.kernel + ": " + bad);
    return;
  }
  allocate_stacks(s);
  s.n_threads = static_cast<int>(block.x * block.y * block.z);
  s.body = body;
  s.ctx = ctx;
  s.fault.clear();
  blockDim = block;
  gridDim = grid;
  uint64_t h = 1469598103934665603ull;  // the order depends on the seed and the kernel (FNV-1a)
  for (const char* c = name; *c; ++c) h = (h ^ static_cast<unsigned char>(*c)) * 1099511628211ull;
  s.rng.s = s.seed ^ h;
  for (int i = 0; i < s.n_threads; ++i) {
    init_fiber(s, i);
    s.fibers[i].idx = uint3{i % block.x, i / block.x % block.y, i / (block.x * block.y)};
  }
  s.stacks_dirty = false;
  ++s.stats.launches;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = uint3{x, y, z};
        run_block(s);
        ++s.stats.blocks;
        s.stats.threads += s.n_threads;
      }
}

void sync_block(const char* file, int line) {
  Scheduler& s = sched();
  Fiber& f = s.fibers[s.current];
  f.state = State::kAtBlockBarrier;
  f.file = file;
  f.line = line;
  suspend();
}

uint64_t warp_exchange(unsigned mask, uint64_t value, int src_lane, const char* file, int line) {
  Scheduler& s = sched();
  Fiber& f = s.fibers[s.current];
  const int lane = s.current & 31;
  if (!(mask >> lane & 1)) {
    char m[16];
    std::snprintf(m, sizeof m, "0x%08x", mask);
    s.fault = "thread " + std::to_string(s.current) + " calls the warp collective at " + site(file, line) +
              " with mask " + m + ", which does not include its own lane " + std::to_string(lane);
    f.state = State::kExited;
    suspend();  // never resumed: the scheduler throws
  }
  f.state = State::kAtWarpBarrier;
  f.mask = mask;
  f.src = src_lane;
  f.value = value;
  f.file = file;
  f.line = line;
  suspend();
  return f.value;
}

void set_seed(uint64_t seed) {
  Scheduler& s = sched();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.seed = seed;
}

uint64_t seed() { return sched().seed; }

Stats stats() { return sched().stats; }

void check(cudaError_t err, const char* expr) {
  if (err != cudaSuccess) {
    std::string msg = std::string("CUDA error: ") + cudaGetErrorString(err) + " (" + expr + ")";
    if (!pending_message.empty()) msg += ": " + pending_message;
    pending_message.clear();
    throw std::runtime_error(msg);
  }
  if (pending_error != cudaSuccess) {
    const std::string msg = pending_message;
    pending_error = cudaSuccess;
    pending_message.clear();
    throw std::runtime_error("CUDA emulation: a launch failed but " + std::string(expr) + " returned cudaSuccess: " +
                             msg);
  }
  pending_message.clear();
}

}  // namespace emu
}  // namespace itr

// ---- the CUDA runtime calls the kernel files make ----

extern "C" cudaError_t cudaGetLastError(void) {
  const cudaError_t err = itr::emu::pending_error;
  itr::emu::pending_error = cudaSuccess;
  return err;
}

extern "C" const char* cudaGetErrorString(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unknown error (the CUDA emulation names only the errors it raises)";
  }
}
