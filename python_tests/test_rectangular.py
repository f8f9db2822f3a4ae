"""Rectangular in-batch scores with explicit positive columns (local rows against a global batch):
triplet and Triplet-SN against the reference and against the square forms; the listwise and BCLS
modules' rectangular path against the square path on the same data."""
import pytest
import torch

import itr_kernels as ik
from itr_kernels import reference as ref

from helpers import F64, cosine_scores


@pytest.mark.parametrize("max_violation", [True, False])
def test_triplet_rows_match_reference_and_square(gen, max_violation):
    s = cosine_scores(7, 7, gen)
    rows = ik.triplet_loss(s, 0.2, max_violation, "none", positives=torch.arange(7))
    torch.testing.assert_close(rows, ik.triplet_loss(s, 0.2, max_violation, "none")[0], **F64)
    rect = cosine_scores(5, 13, gen).requires_grad_()
    pos = torch.randint(0, 13, (5,), generator=gen)
    a = ik.triplet_loss(rect, 0.2, max_violation, "mean", positives=pos)
    b = ref.triplet_loss(rect, 0.2, max_violation, "mean", positives=pos)
    torch.testing.assert_close(a, b, **F64)
    ga, = torch.autograd.grad(a, rect)
    gb, = torch.autograd.grad(b, rect)
    torch.testing.assert_close(ga, gb, **F64)


@pytest.mark.parametrize("rho", [1.0, 0.6])
def test_triplet_sn_rows_match_reference_and_square(gen, rho):
    s = cosine_scores(9, 9, gen)
    r = torch.rand(9, 9, generator=gen, dtype=torch.float64)
    rows = ik.triplet_sn_loss(s, r, 0.2, 0.05, rho, "none", positives=torch.arange(9))
    torch.testing.assert_close(rows, ik.triplet_sn_loss(s, r, 0.2, 0.05, rho, "none")[0], **F64)
    rect = cosine_scores(6, 11, gen).requires_grad_()
    rr = torch.rand(6, 11, generator=gen, dtype=torch.float64)
    pos = torch.randint(0, 11, (6,), generator=gen)
    a = ik.triplet_sn_loss(rect, rr, 0.2, 0.05, rho, "mean", positives=pos)
    b = ref.triplet_sn_loss(rect, rr, 0.2, 0.05, rho, "mean", positives=pos)
    torch.testing.assert_close(a, b, **F64)
    torch.testing.assert_close(torch.autograd.grad(a, rect)[0], torch.autograd.grad(b, rect)[0], **F64)


@pytest.mark.parametrize("module", [ik.ListwiseITRLoss(), ik.BCLSLoss(), ik.ListwiseITRLoss(triplet_reduction="sum")])
def test_modules_rectangular_path_equals_square(gen, module):
    # All rows at once: the rectangular path on (S, S.T) with diagonal positives is the square path.
    s = cosine_scores(10, 10, gen)
    r = torch.rand(10, 10, generator=gen, dtype=torch.float64)
    r.fill_diagonal_(1.0)
    square = module(s, r)
    rect = module(s, r, positives=torch.arange(10), scores_t2i=s.T.contiguous())
    torch.testing.assert_close(rect, square, **F64)


def test_bad_positives(gen):
    s = cosine_scores(4, 6, gen)
    with pytest.raises(ValueError, match="square"):
        ik.triplet_loss(s)
    with pytest.raises(ValueError, match="positives must be 1-D"):
        ik.triplet_loss(s, positives=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"positives must hold column indices in \[0, 6\)"):
        ik.triplet_sn_loss(s, positives=torch.tensor([0, 1, 2, 6]))
    with pytest.raises(TypeError, match="integer"):
        ik.triplet_loss(s, positives=torch.zeros(4))
    with pytest.raises(ValueError, match="scores_t2i"):
        ik.ListwiseITRLoss()(s, torch.rand(4, 6, dtype=torch.float64), positives=torch.arange(4))
