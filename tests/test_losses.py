"""NT-Xent against values derived by hand."""

import math

import pytest
import torch

from fewlabels.losses import nt_xent_loss


def test_nt_xent_matches_hand_derivation():
    # Views (already unit length): a0=(1,0) a1=(0,1) | a2=(1,0) a3=(-1,0); pairs (a0,a2), (a1,a3).
    # With tau = 1, each anchor's denominator sums exp(similarity) over the three others:
    #   l0 = l2 = -1 + log(1 + e + 1/e),  l1 = log 3,  l3 = log(1 + 2/e)
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    e = math.e
    expected = (2 * (-1 + math.log(1 + e + 1 / e)) + math.log(3) + math.log(1 + 2 / e)) / 4
    assert expected == pytest.approx(0.616317, abs=1e-6)
    assert nt_xent_loss(z1, z2, temperature=1.0).item() == pytest.approx(expected, abs=1e-6)


def test_nt_xent_temperature_and_scale_invariance():
    # tau = 0.5 doubles every logit; the projections are normalised, so scale does not matter.
    z1 = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    z2 = torch.tensor([[2.0, 0.0], [-7.0, 0.0]])
    e2 = math.e**2
    l0 = -2 + math.log(1 + e2 + 1 / e2)
    expected = (2 * l0 + math.log(3) + math.log(1 + 2 / e2)) / 4
    assert nt_xent_loss(z1, z2, temperature=0.5).item() == pytest.approx(expected, abs=1e-6)


def test_nt_xent_is_symmetric_in_views_and_low_for_identical_distinct_views():
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    assert nt_xent_loss(z1, z2).item() == pytest.approx(nt_xent_loss(z2, z1).item(), abs=1e-6)
    orthogonal = torch.eye(8)
    near_zero = nt_xent_loss(orthogonal, orthogonal, temperature=0.05)
    assert near_zero.item() < 1e-6
    assert nt_xent_loss(z1, z2).item() > near_zero.item()
