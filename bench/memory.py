"""Peak extra memory of one call: CUDA allocator statistics on the GPU; on the CPU, the process's
peak resident set (VmHWM, reset through /proc/self/clear_refs) above the resident set before."""
import ctypes
import re

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _fix_malloc_thresholds():
    # glibc raises its mmap threshold after large frees, after which freed blocks stay resident and
    # hide later peaks; fixed thresholds return large blocks to the system at once.
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 20)
    except OSError:
        pass


_fix_malloc_thresholds()


def _status_kb(key):
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


def peak_extra_bytes(fn, device):
    """Run fn() once and return the peak memory it added, in bytes."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    fn()
    return max(0, _status_kb("VmHWM") - before) * 1024
