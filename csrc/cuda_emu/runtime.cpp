// The scheduler of the CPU emulation of CUDA (see runtime.h). A launch runs its blocks in turn;
// a block's threads are fibers (one stack each) that run one at a time, each until it reaches a
// barrier or exits. When none can run, the barriers that are complete are released and their
// threads resume in a random order drawn from the seed; when none is complete, no thread can ever
// move again: a deadlock, reported with the kernel, the block and where each thread waits.
#include "cuda_emu/runtime.h"

#include <pthread.h>
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

// Bounds of the section of every __shared__ variable of this library (csrc/cuda_emu/shared.ld).
extern "C" char itr_emu_shared_begin[];
extern "C" char itr_emu_shared_end[];

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
  const void* main_bottom = nullptr;  // the launching thread's stack (ASan)
  size_t main_size = 0;
  bool stacks_dirty = false;  // a launch was abandoned mid-block (ASan: stale stack poison)
  int current = -1;
  int n_threads = 0;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  std::string kernel;
  std::string fault;  // set by a thread that cannot go on (the scheduler throws it)
  // The block's threads: runnable (a stack, drawn from the back), released from a warp
  // collective but not yet runnable, waiting at the block barrier, exited.
  int runnable[kMaxThreads];
  int n_runnable = 0;
  int pending[kMaxThreads];
  int n_pending = 0;
  unsigned arrived[kMaxThreads / 32];  // per warp: the lanes waiting at a warp collective
  int at_block = 0;
  const Fiber* first_at_block = nullptr;
  bool block_sites_differ = false;
  int exited = 0;
  Rng rng{0};
  uint64_t seed = 0;
  Stats stats{0, 0, 0, 0};
};

Scheduler* const sched = new Scheduler();  // never destroyed: fibers may outlive static destruction

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

// ASan must be told of every stack switch (it tracks the current stack's bounds).
void asan_start_switch(void** fake_stack_save, const void* bottom, size_t size) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(fake_stack_save, bottom, size);
#else
  (void)fake_stack_save, (void)bottom, (void)size;
#endif
}

void asan_finish_switch(void* fake_stack_save) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake_stack_save, nullptr, nullptr);
#else
  (void)fake_stack_save;
#endif
}

#if defined(ITR_EMU_USE_UCONTEXT)
#define ITR_EMU_SWITCH(from_context, to_context) swapcontext(&(from_context), &(to_context))
#else
#define ITR_EMU_SWITCH(from_sp, to_sp) itr_emu_switch(&(from_sp), (to_sp))
#endif
#if defined(ITR_EMU_USE_UCONTEXT)
#define ITR_EMU_CONTEXT(x) (x).context
#define ITR_EMU_MAIN_CONTEXT(s) (s).main_context
#else
#define ITR_EMU_CONTEXT(x) (x).sp
#define ITR_EMU_MAIN_CONTEXT(s) (s).main_sp
#endif

// In a fiber: hands the CPU to the next runnable thread of the block, or back to the scheduler
// when there is none; returns when this thread is resumed.
void suspend() {
  Scheduler& s = *sched;
  Fiber& f = s.fibers[s.current];
  if (s.n_runnable > 0 && s.fault.empty()) {
    const int next = s.runnable[--s.n_runnable];
    Fiber& t = s.fibers[next];
    s.current = next;
    threadIdx = t.idx;
    asan_start_switch(&f.fake_stack, t.stack, kStackBytes);
    ITR_EMU_SWITCH(ITR_EMU_CONTEXT(f), ITR_EMU_CONTEXT(t));
  } else {
    asan_start_switch(&f.fake_stack, s.main_bottom, s.main_size);
    ITR_EMU_SWITCH(ITR_EMU_CONTEXT(f), ITR_EMU_MAIN_CONTEXT(s));
  }
  asan_finish_switch(f.fake_stack);
}

[[noreturn]] void fiber_loop(int index) {
  Scheduler& s = *sched;
  asan_finish_switch(nullptr);
  for (;;) {  // one iteration per block of the launch
    s.body(s.ctx);
    s.fibers[index].state = State::kExited;
    ++s.exited;
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
  // the return address (the trampoline), leaving the stack 16-byte aligned for its call. The tops
  // are staggered by 320 bytes: stacks 128 KiB apart would all map to the same cache sets.
  const uintptr_t top = reinterpret_cast<uintptr_t>(f.stack) + kStackBytes - 64 - (i % 128) * 320;
  void** sp = reinterpret_cast<void**>(top & ~uintptr_t(15));
  *--sp = reinterpret_cast<void*>(&itr_emu_trampoline);
  *--sp = nullptr;                                             // rbp
  *--sp = nullptr;                                             // rbx
  *--sp = reinterpret_cast<void*>(static_cast<intptr_t>(i));  // r12
  *--sp = nullptr;                                             // r13
  *--sp = nullptr;                                             // r14
  *--sp = nullptr;                                             // r15
  f.sp = sp;
#endif
  f.fake_stack = nullptr;
}

// From the scheduler: runs thread i, and the runnable threads it hands over to, until none is left.
void resume(Scheduler& s, int i) {
  Fiber& f = s.fibers[i];
  s.current = i;
  threadIdx = f.idx;
  asan_start_switch(&s.main_fake_stack, f.stack, kStackBytes);
  ITR_EMU_SWITCH(ITR_EMU_MAIN_CONTEXT(s), ITR_EMU_CONTEXT(f));
  asan_finish_switch(s.main_fake_stack);
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

std::string hex(unsigned mask) {
  char m[16];
  std::snprintf(m, sizeof m, "0x%08x", mask);
  return m;
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
      what = "wait at the warp collective " + site(f.file, f.line) + " with mask " + hex(f.mask) + " (warp " +
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

// Every lane of `mask` in warp w has arrived: if all at the same call with the same mask, exchange
// their values and release them (they become runnable at the next release round).
void release_warp(Scheduler& s, int w, unsigned mask, const Fiber& caller) {
  Fiber* lanes = s.fibers + 32 * w;
  for (unsigned m = mask; m; m &= m - 1) {
    const Fiber& l = lanes[__builtin_ctz(m)];
    if (l.mask != mask || !same_site(l, caller)) return;  // mismatched collectives: reported as a deadlock
  }
  uint64_t received[32];
  for (unsigned m = mask; m; m &= m - 1) {
    const int lane = __builtin_ctz(m);
    const int src = lanes[lane].src;
    received[lane] = (mask >> src & 1) ? lanes[src].value : ~uint64_t(0);  // a lane outside the mask: poison
  }
  for (unsigned m = mask; m; m &= m - 1) {
    const int lane = __builtin_ctz(m);
    lanes[lane].value = received[lane];
    lanes[lane].state = State::kRunnable;
    s.pending[s.n_pending++] = 32 * w + lane;
  }
  s.arrived[w] &= ~mask;
}

[[noreturn]] __attribute__((noinline)) void lane_not_in_mask(Scheduler& s, unsigned mask, const char* file,
                                                              int line) {
  s.fault = "thread " + std::to_string(s.current) + " calls the warp collective at " + site(file, line) +
            " with mask " + hex(mask) + ", which does not include its own lane " + std::to_string(s.current & 31);
  s.fibers[s.current].state = State::kExited;
  suspend();  // to the scheduler (a fault stops the hand-overs), which throws; never resumed
  __builtin_unreachable();
}

#if defined(__SANITIZE_ADDRESS__)
// ASan puts redzones between the shared variables (so it reports out-of-bounds shared accesses
// too): fill past its memset check, with a loop g++ must not turn into a memset call.
__attribute__((no_sanitize_address, optimize("no-tree-loop-distribute-patterns"))) void poison_shared() {
  uint64_t* p = reinterpret_cast<uint64_t*>(itr_emu_shared_begin);  // the section is 32-byte aligned and sized
  for (; p < reinterpret_cast<uint64_t*>(itr_emu_shared_end); ++p) *p = ~uint64_t(0);
}
#else
void poison_shared() { std::memset(itr_emu_shared_begin, 0xFF, itr_emu_shared_end - itr_emu_shared_begin); }
#endif

void run_block(Scheduler& s) {
  poison_shared();
  const int n = s.n_threads;
  for (int i = 0; i < n; ++i) {
    s.fibers[i].state = State::kRunnable;
    s.runnable[i] = i;
  }
  s.rng.shuffle(s.runnable, n);
  s.n_runnable = n;
  s.n_pending = 0;
  std::memset(s.arrived, 0, sizeof s.arrived);
  s.at_block = s.exited = 0;
  s.first_at_block = nullptr;
  s.block_sites_differ = false;
  for (;;) {
    if (s.n_runnable > 0) {
      const int i = s.runnable[--s.n_runnable];
      resume(s, i);
      if (!s.fault.empty()) {
        s.stacks_dirty = true;
        throw std::runtime_error("CUDA emulation: " + s.fault + " (" + where(s) + ")");
      }
      continue;
    }
    if (s.n_pending > 0) {  // warp collectives released since the last round
      std::memcpy(s.runnable, s.pending, s.n_pending * sizeof(int));
      s.n_runnable = s.n_pending;
      s.n_pending = 0;
    } else if (s.exited == n) {
      return;
    } else if (s.at_block == n && !s.block_sites_differ) {  // every thread at the same __syncthreads()
      for (int i = 0; i < n; ++i) {
        s.fibers[i].state = State::kRunnable;
        s.runnable[i] = i;
      }
      s.n_runnable = n;
      s.at_block = 0;
      s.first_at_block = nullptr;
    } else {
      deadlock(s);
    }
    s.rng.shuffle(s.runnable, s.n_runnable);
    ++s.stats.releases;
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

void find_main_stack(Scheduler& s) {
#if defined(__SANITIZE_ADDRESS__)
  pthread_attr_t attr;
  void* addr = nullptr;
  size_t size = 0;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    pthread_attr_getstack(&attr, &addr, &size);
    pthread_attr_destroy(&attr);
  }
  s.main_bottom = addr;
  s.main_size = size;
#else
  (void)s;
#endif
}

}  // namespace

void launch_erased(const char* name, dim3 grid, dim3 block, void (*body)(void*), void* ctx) {
  Scheduler& s = *sched;
  std::lock_guard<std::mutex> lock(s.mutex);
  s.kernel = kernel_name(name);
  const std::string bad = config_error(grid, block);
  if (!bad.empty()) {
    set_error(cudaErrorInvalidConfiguration, "CUDA emulation: invalid launch of " + s.kernel + ": " + bad);
    return;
  }
  allocate_stacks(s);
  find_main_stack(s);
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
  Scheduler& s = *sched;
  Fiber& f = s.fibers[s.current];
  f.state = State::kAtBlockBarrier;
  f.file = file;
  f.line = line;
  if (s.at_block++ == 0) s.first_at_block = &f;
  else if (!same_site(f, *s.first_at_block)) s.block_sites_differ = true;
  suspend();
}

uint64_t warp_exchange(unsigned mask, uint64_t value, int src_lane, const char* file, int line) {
  Scheduler& s = *sched;
  Fiber& f = s.fibers[s.current];
  const int lane = s.current & 31, warp = s.current >> 5;
  if (!(mask >> lane & 1)) lane_not_in_mask(s, mask, file, line);
  f.state = State::kAtWarpBarrier;
  f.mask = mask;
  f.src = src_lane;
  f.value = value;
  f.file = file;
  f.line = line;
  s.arrived[warp] |= 1u << lane;
  if ((s.arrived[warp] & mask) == mask) release_warp(s, warp, mask, f);
  suspend();
  return f.value;
}

void set_seed(uint64_t seed) {
  Scheduler& s = *sched;
  std::lock_guard<std::mutex> lock(s.mutex);
  s.seed = seed;
}

uint64_t seed() { return sched->seed; }

Stats stats() { return sched->stats; }

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
