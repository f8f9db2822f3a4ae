"""GPU-only behaviour (issue: CUDA kernels): CUDA graphs, long rows, 64-bit indexing, streams and
device indices. Skipped on machines without a CUDA device; the CPU kernels, checked against the
reference elsewhere, are the oracle for sizes the reference cannot hold."""
import pytest
import torch

import itr_kernels as ik
from itr_kernels import reference as ref

from helpers import cosine_scores

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_cuda_kernels_registered():
    assert "CUDA" in ik.build_info()["backends"]


def test_cuda_graphs_reduce_overhead(gen):
    """mode="reduce-overhead" replays CUDA graphs: wrong-stream launches would break it."""
    b = 64
    scores = cosine_scores(b, b, gen).float().cuda()
    rel = torch.rand(b, b, generator=gen).cuda()
    loss_fn = ik.ListwiseITRLoss()
    bcls = ik.BCLSLoss(window=4)

    def step(s, r):
        return loss_fn(s, r) + bcls(s, r) + ik.kendall_loss(s, r) + ik.infonce_loss(s, 0.05) + ik.triplet_loss(s)

    compiled = torch.compile(step, mode="reduce-overhead")
    for _ in range(3):  # record, then replay
        s = scores.clone().requires_grad_()
        loss = compiled(s, rel)
        loss.backward()
    s_ref = scores.clone().requires_grad_()
    expected = step(s_ref, rel)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(s.grad, s_ref.grad)


@pytest.mark.parametrize("fn", ["rank", "ndcg", "kendall", "infonce", "triplet", "triplet_sum"])
def test_long_rows_match_cpu(fn, gen):
    q, n = 2, 20000
    scores = cosine_scores(q, n, gen)
    rel = torch.rand(q, n, generator=gen, dtype=torch.float64)
    valid = torch.rand(q, n, generator=gen) > 0.1
    pos = torch.tensor([7, n - 1])
    call = {"rank": lambda s, d: ik.smooth_rank(s, 0.01, valid.to(d)),
            "ndcg": lambda s, d: ik.smooth_ndcg_loss(s, rel.to(d), 0.01, valid=valid.to(d), reduction="none"),
            "kendall": lambda s, d: ik.kendall_loss(s, rel.to(d), valid=valid.to(d), reduction="none"),
            "infonce": lambda s, d: ik.infonce_loss(s, 0.01, "none", pos.to(d)),
            "triplet": lambda s, d: ik.triplet_loss(s, 0.2, True, "none", pos.to(d)),
            "triplet_sum": lambda s, d: ik.triplet_loss(s, 0.2, False, "none", pos.to(d))}[fn]
    outs = []
    for device in ("cpu", "cuda"):
        s = scores.to(device).requires_grad_()
        out = call(s, device)
        out.sum().backward()
        outs.append((out.detach().cpu(), s.grad.cpu()))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-7, atol=1e-9)


def test_more_than_2_31_elements():
    """Q * N > 2^31: indices are 64-bit; check rows at both ends against the reference."""
    n = 4
    q = 2**31 // n + 3
    scores = torch.rand(q, n, device="cuda")
    out = ik.smooth_rank(scores, 0.1)
    rows = torch.tensor([0, 1, q // 2, q - 2, q - 1], device="cuda")
    torch.testing.assert_close(out[rows], ref.smooth_rank(scores[rows], 0.1))


def test_non_default_stream(gen):
    scores = cosine_scores(33, 57, gen).float().cuda()
    rel = torch.rand(33, 57, generator=gen).cuda()
    expected = ik.smooth_ndcg_loss(scores, rel, reduction="none")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = ik.smooth_ndcg_loss(scores, rel, reduction="none")
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(got, expected)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="one CUDA device")
def test_second_device(gen):
    scores = cosine_scores(9, 20, gen)
    rel = torch.rand(9, 20, generator=gen, dtype=torch.float64)
    got = ik.smooth_ndcg_loss(scores.to("cuda:1"), rel.to("cuda:1"), reduction="none")
    assert got.device == torch.device("cuda:1")
    torch.testing.assert_close(got.cpu(), ik.smooth_ndcg_loss(scores, rel, reduction="none"))


def test_deterministic_on_gpu(gen):
    scores = cosine_scores(300, 300, gen).float().cuda()
    rel = torch.rand(300, 300, generator=gen).cuda()
    runs = []
    for _ in range(2):
        s = scores.clone().requires_grad_()
        loss = ik.BCLSLoss(sampling="full")(s, rel) + ik.smooth_ndcg_loss(s, rel) + ik.triplet_sn_loss(s, rel, rho=0.8)
        loss = loss + ik.infonce_loss(s, 0.02) + ik.triplet_loss(s, max_violation=False)
        loss.backward()
        runs.append((loss.detach(), s.grad))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
