import os
import random
import zlib

# torch.compile's caches in this checkout's build/, not the machine-wide /tmp/torchinductor_<user>:
# their keys ignore a custom op's fake kernel, so a graph cached by an older build of the ops (another
# output shape) would be reused after a rebuild. Set before torch is imported.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "build", "torchinductor-cache"))

import pytest  # noqa: E402
import torch  # noqa: E402

import cuda_emu  # noqa: E402
from hypothesis import settings as hypothesis_settings  # noqa: E402
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

# No example database (runs replay from the seed), and Hypothesis' other files (its constants cache)
# under build/, not in .hypothesis/ of the checkout.
set_hypothesis_home_dir(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build",
                                     "hypothesis"))
hypothesis_settings.register_profile("itr_kernels", database=None)
hypothesis_settings.load_profile("itr_kernels")

# Fresh inputs every run; a failing run is replayed with ITR_TEST_SEED=<the seed in the header>.
SEED = int(os.environ.get("ITR_TEST_SEED", random.SystemRandom().randrange(2**31)))

# "cuda-emu": CPU tensors, with the public API routed to the CUDA kernels running on the CPU
# emulation of CUDA (cuda_emu.py), wherever the CUDA headers are.
EMULATION_SKIP = cuda_emu.unavailable_reason()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (["cuda-emu"] if EMULATION_SKIP is None else [])


# Under cuda-emu the suite's parity sweeps stop at 4,096 entries (Q x N, or B x B): the emulation
# runs a block's threads one at a time (a 257 x 257 case costs ~10 s), and test_cuda_emu.py covers
# the long rows and tile edges against the CPU ops.
EMULATED_MAX_ENTRIES = 4096

# Known bugs of the CUDA path that the emulation found and that are not fixed yet: the cuda-emu
# cases they can fail are expected failures until then (not strict: random inputs do not always hit
# them); test_cuda_emu.py then has a strict xfail reproducer of each. None at present.
# (test name, params -> applies?, reason)
KNOWN_CUDA_BUGS = []


def pytest_collection_modifyitems(config, items):
    kept, dropped = [], []
    for item in items:
        params = item.callspec.params if hasattr(item, "callspec") else {}
        if params.get("device") == "cuda-emu":
            entries = params.get("q", 0) * params.get("n", 0) or params.get("b", 0) ** 2
            if entries > EMULATED_MAX_ENTRIES:
                dropped.append(item)
                continue
            for name, applies, reason in KNOWN_CUDA_BUGS:
                if item.originalname == name and applies(params):
                    item.add_marker(pytest.mark.xfail(strict=False, reason=reason))
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_configure(config):
    config.addinivalue_line("markers", "emulated: runs the CUDA kernels on the CPU emulation of CUDA (cuda_emu.py)")
    config.addinivalue_line("markers", "asan: an emulated case that `make cuda-emu-asan` also runs under ASan + UBSan")


def pytest_report_header(config):
    return f"itr_kernels test seed: ITR_TEST_SEED={SEED}; devices: {', '.join(DEVICES)}"


def pytest_terminal_summary(terminalreporter):
    # Also under -q, which hides the header: a failure can always be replayed with this seed.
    terminalreporter.write_line(f"itr_kernels test seed: ITR_TEST_SEED={SEED}")
    counts = {outcome: sum(1 for r in terminalreporter.stats.get(outcome, [])
                           if getattr(r, "when", "call") == "call" and "emulated" in getattr(r, "keywords", {}))
              for outcome in ("passed", "failed", "skipped")}
    if EMULATION_SKIP:
        terminalreporter.write_line(EMULATION_SKIP)
    elif any(counts.values()):
        terminalreporter.write_line(
            f"CUDA emulation ({'ASan + UBSan' if cuda_emu.SANITIZE else 'plain'}, thread orders "
            f"{','.join(map(str, cuda_emu.SEEDS))}): {counts['passed']} emulated cases passed, "
            f"{counts['failed']} failed, {counts['skipped']} skipped")


@pytest.fixture
def gen(request):
    """A CPU generator seeded from the run seed and the test id: fresh per run, reproducible."""
    g = torch.Generator()
    g.manual_seed(SEED ^ zlib.crc32(request.node.nodeid.encode()))
    return g


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        params = [pytest.param("cpu"),
                  pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
                  pytest.param("cuda-emu", marks=[pytest.mark.emulated,
                                                  pytest.mark.skipif(EMULATION_SKIP is not None,
                                                                     reason=EMULATION_SKIP or "")])]
        metafunc.parametrize("device", params, indirect=True)


@pytest.fixture
def device(request):
    """The device of a test's tensors. "cuda-emu" gives "cpu", with the public API running the CUDA
    kernels on the CPU emulation for the duration of the test."""
    if request.param == "cuda-emu":
        with cuda_emu.routed():
            yield "cpu"
    else:
        yield request.param
