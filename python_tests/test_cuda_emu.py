"""The CUDA kernels (csrc/cuda/*.cu) on the CPU emulation of CUDA (csrc/cuda_emu/, built by
cuda_emu.py): every launcher against the CPU op on the same inputs, under several thread orders
whose outputs must be bit-identical; and the emulation's own checks, on small kernels with known
defects (csrc/cuda_emu/selftest_kernels.cpp)."""
import contextlib
import os
import re
import subprocess
import sys

import pytest
import torch

import cuda_emu
from helpers import ALL_DTYPES, cosine_scores

REASON = cuda_emu.unavailable_reason()
pytestmark = [pytest.mark.emulated, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

COLS = [1, 3, 17, 64, 1023, 1024, 1025, 2049]  # tile and partial-block edges of the kernels
# Triplet-SN's edges: 32 columns per block of its column pass, 256 threads striding its row pass
TRIPLET_SIZES = [1, 3, 17, 31, 33, 64, 255, 257]
# The cases `make cuda-emu-asan` also runs under ASan + UBSan (marker asan): partial tiles, where an
# off-by-one bound reads past the last row, in a float64 and a float16 build of each kernel.
ASAN_SIZES = (1, 17, 1025, 33, 257)
ASAN_DTYPES = (torch.float64, torch.float16)
LAYOUTS = ["contiguous", "transposed", "padded"]
REL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2 * torch.finfo(torch.float16).eps,
       torch.bfloat16: 2 * torch.finfo(torch.bfloat16).eps}


@pytest.fixture(scope="module", autouse=True)
def emulation():
    return cuda_emu.load()


def variant(options, *indices):
    """One of `options`, cycling with the case's indices: across the (columns, dtype) grid every
    option meets every dtype and many sizes, without the cost of the full product."""
    return options[sum(indices) % len(options)]


def scores_in(layout, q, n, dtype, gen):
    """(q, n) cosine scores of `dtype`, contiguous, as the transpose of a (n, q) tensor, or as a
    view with padded rows and a column stride of 2."""
    s = cosine_scores(q, n, gen, spread=2.0).to(dtype)
    if layout == "transposed":
        return s.T.contiguous().T
    if layout == "padded":
        wide = torch.full((q, 2 * n + 3), float("nan"), dtype=dtype)
        wide[:, : 2 * n : 2] = s
        return wide[:, : 2 * n : 2]
    return s


def mask(q, n, gen):
    """About 70% valid; the last row fully masked when there are several."""
    valid = torch.rand(q, n, generator=gen) > 0.3
    if q > 1:
        valid[-1] = False
    return valid


def tied_relevance(q, n, gen, levels=8):
    """Relevance in [0, 1] on a grid: ties, and exact in every dtype."""
    return torch.randint(0, levels + 1, (q, n), generator=gen).double() / levels


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def bits(t):
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def run_emulated(op, *args):
    """itr_kernels_emu.<op>(*args) under every seed of cuda_emu.SEEDS: the outputs must be
    bit-identical (a result that depends on the order of a block's threads differs between seeds)."""
    outs = None
    for seed in cuda_emu.SEEDS:
        cuda_emu.set_seed(seed)
        got = as_tuple(getattr(torch.ops.itr_kernels_emu, op)(*args))
        if outs is None:
            outs = got
            continue
        for i, (a, b) in enumerate(zip(outs, got)):
            assert torch.equal(bits(a), bits(b)), f"{op} output {i}: seed {seed} differs from seed {cuda_emu.SEEDS[0]}"
    return outs


@contextlib.contextmanager
def single_seed():
    """One thread order, for the costly cases."""
    seeds = cuda_emu.SEEDS
    cuda_emu.SEEDS = seeds[:1]
    try:
        yield
    finally:
        cuda_emu.SEEDS = seeds


def upcast(args):
    return [a.double() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]


def assert_accurate(got, cpu, truth, dtype, what):
    """`got` (emulated CUDA) against `cpu` (the CPU op, same inputs) and `truth` (the CPU op in
    float64 on the same inputs): identical non-finite entries, and on the rest an error norm
    against the truth at most twice the CPU op's plus REL[dtype] of the truth's norm and 1e-12 per
    element. The kernels differ in summation order and, in float32, in the exponential (the GPU's
    ex2.approx and Newton reciprocal, the CPU's polynomial); REL is the float32 bound of the suite's
    own accuracy tests, and for float16 / bfloat16 2 eps, the suite's low-precision rule."""
    assert got.shape == cpu.shape and got.dtype == cpu.dtype, what
    finite = torch.isfinite(cpu)
    assert torch.equal(finite, torch.isfinite(got)), f"{what}: non-finite entries differ"
    assert torch.equal(cpu[~finite].double().nan_to_num(), got[~finite].double().nan_to_num()), what
    got, cpu, truth = got[finite].double(), cpu[finite].double(), truth[finite].double()
    scale = truth.norm().item()
    err, cpu_err = (got - truth).norm().item(), (cpu - truth).norm().item()
    assert err <= 2 * cpu_err + REL[dtype] * scale + 1e-12 * max(1, got.numel()) ** 0.5, (what, err, cpu_err, scale)


def compare(op, args, dtype):
    """The emulated op against the CPU op on `args`: integer outputs exactly, floating ones by
    assert_accurate. Returns the emulated outputs."""
    got = run_emulated(op, *args)
    cpu = as_tuple(getattr(torch.ops.itr_kernels, op)(*args))
    truth = as_tuple(getattr(torch.ops.itr_kernels, op)(*upcast(args)))
    assert len(got) == len(cpu)
    for i, (g, c, t) in enumerate(zip(got, cpu, truth)):
        if g.is_floating_point():
            assert_accurate(g, c, t, dtype, f"{op} output {i}")
        else:
            assert torch.equal(g, c), f"{op} output {i}"
    return got


def cases(sizes, *extra):
    """(size, dtype, *extra) parameters, marked asan where the size and dtype are ASan's."""
    extra = extra or [()]
    return [pytest.param(n, dtype, *e, marks=[pytest.mark.asan] if n in ASAN_SIZES and dtype in ASAN_DTYPES else [])
            for n in sizes for dtype in ALL_DTYPES for e in extra]


def rows_for(n):
    return 3 if n <= 1024 else 2


# ---- every launcher against the CPU ops ----

@pytest.mark.parametrize("n,dtype", cases(COLS))
def test_smooth_rank(n, dtype, gen):
    i, j = COLS.index(n), ALL_DTYPES.index(dtype)
    q = rows_for(n)
    scores = scores_in(variant(LAYOUTS, i, j), q, n, dtype, gen)
    valid = mask(q, n, gen) if variant([True, False], i, j) else None
    tau = variant([0.05, 0.5, 0.01], i)
    compare("smooth_rank", (scores, valid, tau), dtype)
    upstream = torch.randn(q, n, generator=gen, dtype=torch.float64).to(dtype)
    compare("smooth_rank_backward", (upstream, scores, valid, tau), dtype)


@pytest.mark.parametrize("n,dtype,compute_grad", cases(COLS, (True,), (False,)))
def test_smooth_ndcg(n, dtype, compute_grad, gen):
    i, j = COLS.index(n), ALL_DTYPES.index(dtype)
    q = rows_for(n)
    scores = scores_in(variant(LAYOUTS, i, j + 1), q, n, dtype, gen)
    relevance = tied_relevance(q, n, gen).to(dtype)
    valid = mask(q, n, gen) if variant([True, False], i, j, compute_grad) else None
    k = variant([0, 1, 5, n // 2], i, j)
    linear_gain = variant([False, True], i, j, 1)
    compare("smooth_ndcg", (scores, relevance, valid, 0.05, k, linear_gain, compute_grad), dtype)


@pytest.mark.parametrize("b,dtype", cases(TRIPLET_SIZES))
def test_triplet_sn(b, dtype, gen):
    i, j = TRIPLET_SIZES.index(b), ALL_DTYPES.index(dtype)
    scores = scores_in(variant(LAYOUTS, i, j + 2), b, b, dtype, gen)
    relevance, rho = variant([(None, 1.0), (tied_relevance(b, b, gen).to(dtype), 0.6)], i, j)
    margin, temperature = 0.2, variant([0.05, 0.5, 1e-6], i)  # 1e-6: near the VSE++ limit
    loss, stats = compare("triplet_sn", (scores, relevance, margin, temperature, rho), dtype)
    upstream = torch.randn(2, b, generator=gen, dtype=torch.float64).to(dtype)
    compare("triplet_sn_backward", (upstream, scores, relevance, stats, margin, temperature, rho), dtype)


# The contrastive kernels' edges: 64-row by 128-column tiles, 8 rows per warp, 4 columns per lane
CONTRASTIVE_SIZES = [1, 2, 33, 64, 65, 129, 200]


def contrastive_inputs(b, dtype, gen, i, j):
    """Square (b, b) scores, or (b, b + 37) rows with random positives, in a cycling layout."""
    square = variant([True, False], i, j)
    scores = scores_in(variant(LAYOUTS, i, j + 1), b, b if square else b + 37, dtype, gen)
    positives = None if square else torch.randint(0, b + 37, (b,), generator=gen)
    return scores, positives, (2 if square else 1)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("b", CONTRASTIVE_SIZES)
def test_infonce(b, dtype, gen):
    """Losses and gradients against the CPU op's; the statistics differ by design (the CPU may
    shift every query by one common score, the GPU shifts each by its own largest)."""
    i, j = CONTRASTIVE_SIZES.index(b), ALL_DTYPES.index(dtype)
    scores, positives, d = contrastive_inputs(b, dtype, gen, i, j)
    temperature = variant([0.05, 0.01, 0.5], i, j)
    ops = torch.ops.itr_kernels
    loss, stats = run_emulated("infonce", scores, positives, temperature)
    cpu_loss, cpu_stats = ops.infonce(scores, positives, temperature)
    truth_loss, truth_stats = ops.infonce(scores.double(), positives, temperature)
    assert_accurate(loss, cpu_loss, truth_loss, dtype, "infonce loss")
    s = scores.float() if dtype != torch.float64 else scores
    query_max = torch.stack([s.amax(dim=1), s.amax(dim=0)]) if d == 2 else s.amax(dim=1)[None]
    assert torch.equal(stats[:, 0], query_max.to(stats.dtype))   # each query's shift: its largest score
    upstream = torch.randn(d, b, generator=gen, dtype=torch.float64).to(dtype)
    (grad,) = run_emulated("infonce_backward", upstream, scores, positives, stats, temperature)
    cpu_grad = ops.infonce_backward(upstream, scores, positives, cpu_stats, temperature)
    truth_grad = ops.infonce_backward(upstream.double(), scores.double(), positives, truth_stats, temperature)
    assert_accurate(grad, cpu_grad, truth_grad, dtype, "infonce_backward")


@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("b", CONTRASTIVE_SIZES)
def test_vse_triplet(b, dtype, max_violation, gen):
    i, j = CONTRASTIVE_SIZES.index(b), ALL_DTYPES.index(dtype)
    scores, positives, d = contrastive_inputs(b, dtype, gen, i, j + max_violation)
    if variant([False, True], i, j):   # exact ties among the hardest negatives
        scores = (scores * 4).round() / 4
    _, aux = compare("vse_triplet", (scores, positives, 0.2, max_violation), dtype)
    upstream = torch.randn(d, b, generator=gen, dtype=torch.float64).to(dtype)
    compare("vse_triplet_backward", (upstream, scores, positives, aux, 0.2, max_violation), dtype)


def test_contrastive_special_values(gen):
    """NaN, -inf and +inf scores through the public API on the emulated kernels, as on the CPU:
    a NaN reaches only its row's and column's losses, a -inf negative adds nothing."""
    import itr_kernels as ik

    b = 70   # two row tiles
    scores = cosine_scores(b, b, gen).float()
    scores[3, 5] = float("nan")
    scores[10, 2] = -float("inf")
    scores[20, 21] = float("inf")
    calls = [lambda s: ik.infonce_loss(s, 0.05, "none"), lambda s: ik.triplet_loss(s, reduction="none"),
             lambda s: ik.triplet_loss(s, max_violation=False, reduction="none")]
    for call in calls:
        want = call(scores)
        with cuda_emu.routed():
            got = call(scores)
        assert torch.equal(torch.isnan(got), torch.isnan(want)) and torch.equal(torch.isinf(got), torch.isinf(want))
        finite = torch.isfinite(want)
        torch.testing.assert_close(got[finite], want[finite], rtol=1e-5, atol=1e-6)
        assert torch.isnan(want[0, 3]) and torch.isnan(want[1, 5])


# Every phi in every dtype; past 1024 columns (the slow cases) one phi per (columns, dtype), cycling.
KENDALL_CASES = [case for case in cases(COLS, (0,), (1,), (2,))
                 if case.values[0] <= 1024 or case.values[2] == (COLS.index(case.values[0]) +
                                                                  ALL_DTYPES.index(case.values[1])) % 3]


@pytest.mark.parametrize("n,dtype,phi", KENDALL_CASES)
def test_kendall_full(n, dtype, phi, gen):
    i, j = COLS.index(n), ALL_DTYPES.index(dtype)
    q = rows_for(n)
    scores = scores_in(variant(LAYOUTS, i, j, phi), q, n, dtype, gen)
    relevance = tied_relevance(q, n, gen).to(dtype)
    valid = mask(q, n, gen) if variant([True, False], i, phi) else None
    gap = variant([0.0, 0.3, 0.125], i, j)
    compare("kendall_full", (scores, relevance, valid, gap, phi, 0.05, 0.1, variant([True, False], j, phi)), dtype)


@pytest.mark.parametrize("n,dtype,window,stride,gap", cases(COLS, (1, 1, 0.0), (2, 1, 0.1), (3, 3, 0.0),
                                                             (8, 8, 0.25), (8, 3, 0.0), (5, 7, 0.1)))
def test_kendall_swhs(n, dtype, window, stride, gap, gen):
    i, j = COLS.index(n), ALL_DTYPES.index(dtype)
    q = rows_for(n)
    scores = scores_in(variant(LAYOUTS, i, j, window), q, n, dtype, gen)
    relevance = tied_relevance(q, n, gen).to(dtype)
    valid = mask(q, n, gen) if variant([True, False], i, j, stride) else None
    compare("kendall_swhs", (scores, relevance, valid, window, stride, gap), dtype)


def test_more_rows_than_the_grid_y_cap(gen):
    """65,537 rows: the grids are capped at 65,535 rows (in y, or in x for the Smooth-NDCG row
    stages), so blocks 0 and 1 loop to a second row. Each launch costs 65,535 blocks: one thread
    order, two columns, float32 for every launcher and bfloat16 (the tanh path) for smooth_rank."""
    q, n = 65537, 2
    scores = cosine_scores(q, n, gen)
    relevance = tied_relevance(q, n, gen)
    valid = torch.rand(q, n, generator=gen) > 0.2
    upstream = torch.randn(q, n, generator=gen, dtype=torch.float64)
    f32 = [t.float() for t in (scores, relevance, upstream)]
    cases = [("smooth_rank", (scores.bfloat16(), valid, 0.05), torch.bfloat16),
             ("smooth_rank", (f32[0], valid, 0.05), torch.float32),
             ("smooth_rank_backward", (f32[2], f32[0], valid, 0.05), torch.float32),
             ("smooth_ndcg", (f32[0], f32[1], valid, 0.05, 0, False, True), torch.float32),
             ("kendall_full", (f32[0], f32[1], valid, 0.1, 1, 0.0, 0.1, True), torch.float32),
             ("kendall_swhs", (f32[0], f32[1], valid, 1, 1, 0.0), torch.float32)]
    with single_seed():
        for op, args, dtype in cases:
            compare(op, args, dtype)


# ---- the emulation catches what it is there for ----

def selftest(kernel, x=None, grid=(1, 1, 1), block=(256, 1, 1), arg=0):
    x = torch.zeros(1) if x is None else x
    return torch.ops.itr_emu_selftest.run(kernel, x, list(grid), list(block), arg)


@pytest.mark.asan
def test_barrier_orders_shared_memory():
    x = torch.arange(512.0)
    expected = x.view(2, 256).roll(-1, dims=1).reshape(-1)
    for seed in cuda_emu.SEEDS:
        cuda_emu.set_seed(seed)
        assert torch.equal(selftest("rotate", x, grid=(2, 1, 1)), expected)


@pytest.mark.asan
def test_missing_barrier_shows():
    """Without the barrier, a thread reads its neighbour's slot before or after the neighbour wrote
    it, depending on the order: poison (NaN) in some places, differing between seeds."""
    x = torch.arange(512.0)
    expected = x.view(2, 256).roll(-1, dims=1).reshape(-1)
    outs = []
    for seed in (1, 2, 3):
        cuda_emu.set_seed(seed)
        outs.append(selftest("rotate_unsynced", x, grid=(2, 1, 1)))
    for out in outs:
        assert out.isnan().any() and not torch.equal(out, expected)
    assert any(not torch.equal(outs[0].isnan(), out.isnan()) for out in outs[1:])


@pytest.mark.asan
def test_unwritten_shared_memory_is_poison():
    out = selftest("read_unwritten", grid=(3, 1, 1))
    assert torch.equal(out.view(torch.int32), torch.full_like(out, 0, dtype=torch.int32) - 1)  # 0xFFFFFFFF: NaN


@pytest.mark.asan
def test_divergent_barrier_is_a_deadlock():
    with pytest.raises(RuntimeError) as info:
        selftest("divergent_barrier", arg=100)
    msg = str(info.value)
    assert "deadlock in kernel itr::emu_selftest::divergent_barrier, block (0, 0, 0)" in msg
    assert re.search(r"100 threads wait at __syncthreads\(\) csrc/cuda_emu/selftest_kernels.cpp:\d+: 0-99", msg)
    assert "156 threads exited: 100-255" in msg


@pytest.mark.asan
def test_barriers_on_different_lines_deadlock():
    with pytest.raises(RuntimeError) as info:
        selftest("two_barriers")
    waits = dict(re.findall(r"128 threads wait at __syncthreads\(\) csrc/cuda_emu/selftest_kernels.cpp:(\d+): (\d+),",
                            str(info.value)))
    assert "deadlock in kernel itr::emu_selftest::two_barriers" in str(info.value)
    assert sorted(waits.values()) == ["0", "1"] and len(waits) == 2  # evens at one line, odds at another


@pytest.mark.asan
def test_warp_collective_missing_lanes_is_a_deadlock():
    # mask names all 32 lanes, only lanes 0-15 call the shuffle
    with pytest.raises(RuntimeError, match=r"deadlock in kernel itr::emu_selftest::partial_shuffle.* wait at the "
                                           r"warp collective csrc/cuda_emu/selftest_kernels.cpp:\d+ with mask "
                                           r"0xffffffff \(warp 0\): 0-15"):
        selftest("partial_shuffle", torch.zeros(64), block=(64, 1, 1), arg=(0xFFFFFFFF << 8) | 16)


@pytest.mark.asan
def test_warp_collective_without_own_lane():
    with pytest.raises(RuntimeError, match=r"thread (1[6-9]|2\d|3[01]) calls the warp collective at "
                                           r"csrc/cuda_emu/selftest_kernels.cpp:\d+ with mask 0x0000ffff, which does "
                                           r"not include its own lane \1 \(kernel itr::emu_selftest::partial_shuffle"):
        selftest("partial_shuffle", torch.zeros(32), block=(32, 1, 1), arg=(0x0000FFFF << 8) | 32)


@pytest.mark.asan
def test_warp_collectives():
    lanes = torch.arange(64.0) % 32
    warp_base = torch.arange(64) // 32 * 32
    up = torch.where(lanes >= 3, lanes - 3, lanes)
    down8 = torch.where(lanes % 8 < 7, lanes + 1, lanes)
    expected = {0: None, 1: torch.full((64,), 496.0), 2: up, 3: torch.full((64,), 5.0), 4: down8,
                5: lanes + 1 - 2 * (lanes % 2)}
    for which, want in expected.items():
        out = selftest("warp_collectives", lanes, block=(64, 1, 1), arg=which)
        if which == 0:  # a tree sum down the lanes: lane 0 holds the warp's total
            assert torch.equal(out[warp_base.unique()], torch.full((2,), 496.0))
        else:
            assert torch.equal(out, want), which


@pytest.mark.asan
@pytest.mark.parametrize("grid,block,message", [
    ((1, 65536, 1), (256, 1, 1), "gridDim.y = 65536 exceeds 65535"),
    ((1, 1, 65536), (32, 1, 1), "gridDim.z = 65536 exceeds 65535"),
    ((2**31, 1, 1), (32, 1, 1), r"gridDim.x = 2147483648 exceeds 2\^31 - 1"),
    ((1, 1, 1), (1025, 1, 1), r"blockDim \(1025, 1, 1\) exceeds \(1024, 1024, 64\)"),
    ((1, 1, 1), (64, 32, 1), "2048 threads per block exceed 1024"),
    ((1, 1, 1), (1, 1, 65), r"blockDim \(1, 1, 65\) exceeds"),
    ((0, 1, 1), (32, 1, 1), "an empty grid"),
])
def test_launch_limits(grid, block, message):
    with pytest.raises(RuntimeError, match=r"CUDA error: invalid configuration argument .*invalid launch of "
                                           r"itr::emu_selftest::nothing: " + message):
        selftest("nothing", grid=grid, block=block)


def test_a_large_grid_with_barriers():
    """65,535 blocks of 256 threads with two barriers each (the grid-y maximum)."""
    assert selftest("two_barrier_rounds", grid=(1, 65535, 1)).item() == 255


@pytest.mark.asan
@pytest.mark.skipif(not cuda_emu.SANITIZE, reason="needs the AddressSanitizer build, which `make cuda-emu` runs")
def test_out_of_bounds_read_is_caught():
    """An off-by-one bound reads one element past a tensor: ASan stops the process and names it."""
    code = ("import sys, torch; sys.path.insert(0, 'python_tests'); import cuda_emu; cuda_emu.load(); "
            "torch.ops.itr_emu_selftest.run('read_past_end', torch.zeros(100), [1, 1, 1], [128, 1, 1], 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=cuda_emu.ROOT, capture_output=True, text=True,
                          env=dict(os.environ), timeout=600)
    assert done.returncode != 0
    assert "heap-buffer-overflow" in done.stderr and "read_past_end" in done.stderr, done.stderr[-3000:]


# ---- the relevance order of the CUDA binding (relevance_order) is the CPU ops' (ranks_before) ----

def test_masked_candidates_sort_last():
    """Column 0 is masked, column 2 valid with relevance -inf: column 0 stays out of the SW-HS
    windows and of the gain set (masked candidates come after every valid one), as on the CPU."""
    scores = torch.tensor([[0.3, 0.1, 0.2, 0.4]], dtype=torch.float64)
    relevance = torch.tensor([[0.0, 1.0, -float("inf"), 0.5]], dtype=torch.float64)
    valid = torch.tensor([[False, True, True, True]])
    for op, args in [("kendall_swhs", (scores, relevance, valid, 1, 1, 0.0)),
                     ("smooth_ndcg", (scores, relevance, valid, 0.1, 3, True, False))]:
        got, cpu = run_emulated(op, *args), getattr(torch.ops.itr_kernels, op)(*args)
        for g, c in zip(got, cpu):
            torch.testing.assert_close(g, c, equal_nan=True, rtol=0, atol=0)


def test_nan_relevance_sorts_last():
    """NaN relevance is ordered last among the valid candidates (torch's descending sort would put it
    first): the top-2 gain set and the SW-HS windows are the CPU's."""
    scores = torch.tensor([[0.3, 0.1, 0.2, 0.4]], dtype=torch.float64)
    relevance = torch.tensor([[0.5, float("nan"), 1.0, 0.25]], dtype=torch.float64)
    for op, args in [("kendall_swhs", (scores, relevance, None, 1, 1, 0.0)),
                     ("smooth_ndcg", (scores, relevance, None, 0.1, 2, True, False))]:
        got, cpu = run_emulated(op, *args), getattr(torch.ops.itr_kernels, op)(*args)
        for g, c in zip(got, cpu):
            torch.testing.assert_close(g, c, equal_nan=True, rtol=0, atol=0)
