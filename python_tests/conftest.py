import os
import random
import zlib

import pytest
import torch

# Fresh inputs every run; a failing run is replayed with ITR_TEST_SEED=<the seed in the header>.
SEED = int(os.environ.get("ITR_TEST_SEED", random.SystemRandom().randrange(2**31)))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_configure(config):
    config.addinivalue_line("markers", "emulated: runs the CUDA kernels on the CPU emulation of CUDA (cuda_emu.py)")


def pytest_report_header(config):
    return f"itr_kernels test seed: ITR_TEST_SEED={SEED}; devices: {', '.join(DEVICES)}"


def pytest_terminal_summary(terminalreporter):
    # Also under -q, which hides the header: a failure can always be replayed with this seed.
    terminalreporter.write_line(f"itr_kernels test seed: ITR_TEST_SEED={SEED}")


@pytest.fixture
def gen(request):
    """A CPU generator seeded from the run seed and the test id: fresh per run, reproducible."""
    g = torch.Generator()
    g.manual_seed(SEED ^ zlib.crc32(request.node.nodeid.encode()))
    return g


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        params = [pytest.param(d, marks=pytest.mark.skipif(d == "cuda" and not torch.cuda.is_available(),
                                                            reason="no CUDA device")) for d in ["cpu", "cuda"]]
        metafunc.parametrize("device", params)
