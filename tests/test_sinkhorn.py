"""Sinkhorn-Knopp: the requested marginals, closed-form plans, SwAV's matrix form, numerical
stability with large scores and a small epsilon, and 2 processes equal to 1 on the
concatenated batch; each on both paths (float64 scalings and the log domain)."""

import math

import pytest
import torch

import fewlabels.clustering.sinkhorn as sinkhorn_module
from fewlabels.clustering.sinkhorn import sinkhorn_knopp
from fewlabels.errors import UserError
from gloo_processes import run_on_processes

PATHS = ("products", "log domain")


def _force(path: str) -> None:
    """Make every call take ``path``: a range limit no scores exceed, or one all exceed."""
    sinkhorn_module.SCALING_FORM_MAX_RANGE = math.inf if path == "products" else -1.0


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    monkeypatch.setattr(sinkhorn_module, "SCALING_FORM_MAX_RANGE",
                        sinkhorn_module.SCALING_FORM_MAX_RANGE)  # restored after the test
    _force(request.param)
    return request.param


def _scores(rows: int = 37, clusters: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, clusters, generator=torch.Generator().manual_seed(seed))


def test_rows_are_distributions_and_clusters_are_balanced_after_enough_iterations(path):
    scores = _scores()
    plan = sinkhorn_knopp(scores, epsilon=0.5, iterations=200)
    assert plan.shape == (37, 5) and plan.dtype == torch.float32
    assert bool((plan >= 0).all())
    torch.testing.assert_close(plan.sum(dim=1), torch.ones(37), rtol=0, atol=1e-5)
    torch.testing.assert_close(plan.sum(dim=0), torch.full((5,), 37 / 5), rtol=1e-4, atol=0)


def test_given_marginals_are_met(path):
    scores = _scores(6, 3)
    rows = torch.tensor([1.0, 2.0, 0.5, 0.5, 3.0, 1.0])  # total 8
    columns = torch.tensor([4.0, 3.0, 1.0])
    plan = sinkhorn_knopp(scores, epsilon=0.3, iterations=500, row_marginals=rows,
                          column_marginals=columns)
    torch.testing.assert_close(plan.sum(dim=1), rows, rtol=1e-5, atol=0)
    torch.testing.assert_close(plan.sum(dim=0), columns, rtol=1e-4, atol=0)


def test_closed_forms(path):
    # Uniform scores: every sample spread evenly, after a single iteration.
    torch.testing.assert_close(sinkhorn_knopp(torch.full((4, 8), 3.0), iterations=1),
                               torch.full((4, 8), 1 / 8))
    # Scores that split into a row part and a column part, S_ij = f_i + g_j: the kernel is
    # rank one, so the plan is r_i c_j / total whatever f and g are.
    f, g = torch.tensor([0.3, -2.0, 1.0]), torch.tensor([5.0, 0.0])
    plan = sinkhorn_knopp(f[:, None] + g, epsilon=1.0, iterations=1)
    torch.testing.assert_close(plan, torch.full((3, 2), 0.5))
    # 2 x 2 by hand: exp(S / eps) = [[2, 1], [1, 1]] with unit marginals. A doubly stochastic
    # 2 x 2 plan is [[p, 1-p], [1-p, p]] and the scalings keep the cross ratio
    # Q11 Q22 / (Q12 Q21) = 2 * 1 / (1 * 1), so (p / (1-p))^2 = 2 and p = 2 - sqrt(2).
    epsilon = 0.1
    scores = torch.tensor([[math.log(2.0), 0.0], [0.0, 0.0]]) * epsilon
    p = 2 - math.sqrt(2)
    torch.testing.assert_close(sinkhorn_knopp(scores, epsilon=epsilon, iterations=100),
                               torch.tensor([[p, 1 - p], [1 - p, p]]))


def _swav_matrix_form(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's Algorithm: Q = exp(S / eps)^T [K, B], normalised to total 1, then each
    iteration gives every prototype mass 1/K and every sample 1/B; finally times B."""
    q = torch.exp(scores.double() / epsilon).T
    clusters, batch = q.shape
    q /= q.sum()
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * clusters
        q /= q.sum(dim=0, keepdim=True) * batch
    return (q * batch).T


def test_equals_swavs_multiplicative_iterations(path):
    scores = torch.nn.functional.normalize(_scores(16, 10, seed=1), dim=1)  # cosines
    for iterations in (1, 3):
        expected = _swav_matrix_form(scores, 0.05, iterations).float()
        torch.testing.assert_close(sinkhorn_knopp(scores, 0.05, iterations), expected,
                                   rtol=1e-4, atol=1e-6)


def test_large_scores_and_a_small_epsilon_stay_finite_in_float32():
    scores = 1000 * _scores(50, 7, seed=2)
    scores[:, 3] = -1e4  # a cluster far from every sample: all zeros in the plain form
    plan = sinkhorn_knopp(scores, epsilon=0.01, iterations=50)
    assert bool(torch.isfinite(plan).all())
    torch.testing.assert_close(plan.sum(dim=1), torch.ones(50), rtol=0, atol=1e-4)
    assert plan[:, 3].sum() > 1  # the far cluster still receives mass
    # Half-precision scores are computed (and returned) in float32.
    half = sinkhorn_knopp(_scores(8, 4).to(torch.bfloat16), epsilon=0.05)
    assert half.dtype == torch.float32 and bool(torch.isfinite(half).all())


def test_tolerance_stops_once_the_columns_are_balanced(path):
    scores = _scores()
    plan = sinkhorn_knopp(scores, epsilon=0.5, iterations=100_000, tolerance=1e-6)
    torch.testing.assert_close(plan.sum(dim=0), torch.full((5,), 37 / 5), rtol=1e-5, atol=0)
    # One step of the iteration changes nothing any more.
    torch.testing.assert_close(plan, sinkhorn_knopp(scores, epsilon=0.5, iterations=100_000,
                                                    tolerance=1e-7), rtol=1e-5, atol=1e-7)


def test_bad_input_is_a_user_error():
    scores = _scores(4, 2)
    with pytest.raises(UserError, match="same total"):
        sinkhorn_knopp(scores, column_marginals=torch.tensor([1.0, 1.0]))
    with pytest.raises(UserError, match="epsilon"):
        sinkhorn_knopp(scores, epsilon=0.0)
    with pytest.raises(UserError, match="shape"):
        sinkhorn_knopp(scores, row_marginals=torch.ones(3))
    with pytest.raises(UserError, match=r"\[B, K\]"):
        sinkhorn_knopp(scores[0])


# -- across devices: 2 processes (gloo) against 1 on the concatenated batch -------------------

LOCAL_ROWS = (3, 5)  # unequal local batches


def _compare(rank: int, world: int, out_dir: str) -> None:  # noqa: ARG001
    start = sum(LOCAL_ROWS[:rank])
    local = _scores(sum(LOCAL_ROWS), 4, seed=3)[start: start + LOCAL_ROWS[rank]]
    results = {}
    for path in PATHS:
        _force(path)
        results[path, "swav"] = sinkhorn_knopp(local, 0.05, 3, across_devices=True)
        results[path, "converged"] = sinkhorn_knopp(local, 0.5, 10_000,
                                                    across_devices=True, tolerance=1e-6)
    torch.save(results, f"{out_dir}/rank{rank}.pt")


def test_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path, monkeypatch):
    run_on_processes(_compare, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    scores = _scores(sum(LOCAL_ROWS), 4, seed=3)
    monkeypatch.setattr(sinkhorn_module, "SCALING_FORM_MAX_RANGE",
                        sinkhorn_module.SCALING_FORM_MAX_RANGE)
    for path in PATHS:
        _force(path)
        single = {"swav": sinkhorn_knopp(scores, 0.05, 3),
                  "converged": sinkhorn_knopp(scores, 0.5, 10_000, tolerance=1e-6)}
        for name, expected in single.items():
            together = torch.cat([r[path, name] for r in ranks])
            torch.testing.assert_close(together, expected, rtol=1e-5, atol=1e-6)
        # Balanced over the global batch, not per process.
        torch.testing.assert_close(torch.cat([r[path, "converged"] for r in ranks]).sum(0),
                                   torch.full((4,), 8 / 4), rtol=1e-5, atol=0)
