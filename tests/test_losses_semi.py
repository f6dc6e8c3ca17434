"""Semi-supervised building blocks against values derived by hand on 2-4 samples, 3 classes;
VAT's batch-norm and gradient hygiene; the gradient reversal layer."""

import math

import pytest
import torch
from torch import nn

from fewlabels.losses.consistency import (
    confidence_mask,
    entropy_loss,
    fixmatch_unlabeled_loss,
    frozen_batch_norm_statistics,
    mixup,
    mse_consistency,
    sample_beta,
    sharpen,
    soft_consistency_loss,
    vat_loss,
    vat_perturbation,
)
from fewlabels.losses.semi import (
    DistributionAlignment,
    FlexMatchThresholds,
    FreeMatchThresholds,
    distribution_alignment,
    freematch_fairness_loss,
)
from fewlabels.models.gradient_reversal import GradientReversal, dann_lambda, reverse_gradient

LN2, LN3 = math.log(2.0), math.log(3.0)


# Sharpening and MixUp. ---------------------------------------------------------------------


def test_sharpen_hand_values_identity_and_one_hot_limit():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]])
    # T = 1/2 squares then renormalises: 0.25, 0.09, 0.04 over 0.38.
    expected = torch.tensor([0.25, 0.09, 0.04]) / 0.38
    assert torch.allclose(sharpen(p, 0.5)[0], expected, atol=1e-6)
    assert torch.allclose(sharpen(p, 1.0), p, atol=1e-6)
    cold = sharpen(p, 0.01)
    assert torch.allclose(cold, torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]), atol=1e-6)
    with pytest.raises(ValueError):
        sharpen(p, 0.0)


def test_beta_sampler_is_reproducible_and_has_the_right_moments():
    draws = sample_beta(0.75, 0.75, 20000, torch.Generator().manual_seed(0))
    again = sample_beta(0.75, 0.75, 20000, torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    assert bool(((draws >= 0) & (draws <= 1)).all())
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)) = 0.1 for a = 0.75.
    assert draws.mean().item() == pytest.approx(0.5, abs=0.01)
    assert draws.var().item() == pytest.approx(0.1, abs=0.005)
    skewed = sample_beta(2.0, 5.0, 20000, torch.Generator().manual_seed(1))
    assert skewed.mean().item() == pytest.approx(2.0 / 7.0, abs=0.01)


@pytest.mark.parametrize("per_sample", [True, False])
def test_mixup_keeps_the_larger_share_and_mixes_exactly(per_sample):
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(6, 1, 2, 2, generator=generator)
    targets = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2])]
    out = mixup(x, targets, 0.75, torch.Generator().manual_seed(5), per_sample=per_sample)
    lam, perm = out.weights, out.permutation
    assert bool((lam >= 0.5).all()) and bool((lam <= 1).all())
    assert sorted(perm.tolist()) == list(range(6))
    expected = lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x[perm]
    assert torch.allclose(out.inputs, expected, atol=1e-7, rtol=0)
    expected_targets = lam[:, None] * targets + (1 - lam[:, None]) * targets[perm]
    assert torch.allclose(out.targets, expected_targets, atol=1e-7, rtol=0)
    assert torch.allclose(out.targets.sum(dim=1), torch.ones(6))
    if not per_sample:
        assert bool((lam == lam[0]).all())
    again = mixup(x, targets, 0.75, torch.Generator().manual_seed(5), per_sample=per_sample)
    assert torch.equal(again.inputs, out.inputs) and torch.equal(again.permutation, perm)


# Confidence masks and the unlabeled losses. -------------------------------------------------

WEAK = torch.tensor([[0.5, 0.25, 0.25], [0.4, 0.35, 0.25], [0.125, 0.125, 0.75]])


def test_confidence_mask_counts_ties_and_per_class_thresholds():
    confidence, labels, mask = confidence_mask(WEAK, 0.5)
    assert torch.equal(confidence, torch.tensor([0.5, 0.4, 0.75]))
    assert labels.tolist() == [0, 0, 2]
    assert mask.tolist() == [True, False, True]  # 0.5 >= 0.5 counts
    _, _, mask = confidence_mask(WEAK, torch.tensor([0.5, 0.0, 0.8]))
    assert mask.tolist() == [True, False, False]  # sample 2 needs 0.8 for class 2
    assert confidence_mask(WEAK, 0.76)[2].sum().item() == 0


def test_fixmatch_loss_divides_by_all_unlabeled_samples():
    # Confident: sample 0 (class 0, strong logits uniform: CE = ln 3) and sample 2 (class 2,
    # strong probabilities (1/4, 1/4, 1/2): CE = ln 2). Sample 1 is masked out.
    strong = torch.tensor([[0.0, 0.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, LN2]],
                          requires_grad=True)
    loss, mask = fixmatch_unlabeled_loss(strong, WEAK, threshold=0.5)
    assert mask.tolist() == [True, False, True]
    assert loss.item() == pytest.approx((LN3 + LN2) / 3, abs=1e-6)
    loss.backward()
    assert torch.equal(strong.grad[1], torch.zeros(3))  # the masked sample sends nothing


def test_fixmatch_loss_zero_when_nothing_is_confident():
    loss, mask = fixmatch_unlabeled_loss(torch.randn(3, 3), WEAK, threshold=0.95)
    assert loss.item() == 0.0 and not bool(mask.any())


def test_uda_soft_consistency_hand_value():
    # Weak sample 0: probabilities (4/6, 1/6, 1/6) >= 0.6, sharpened with T = 1/2 to
    # (16, 1, 1) / 18; sample 1 is uniform (1/3 < 0.6), masked out. Strong: uniform.
    weak = torch.tensor([[math.log(4.0), 0.0, 0.0], [0.0, 0.0, 0.0]])
    strong = torch.zeros(2, 3)
    target = torch.tensor([16.0, 1.0, 1.0]) / 18
    kl = float((target * (target * 3).log()).sum())
    loss, mask = soft_consistency_loss(strong, weak, temperature=0.5, threshold=0.6)
    assert mask.tolist() == [True, False]
    assert loss.item() == pytest.approx(kl / 2, abs=1e-6)


def test_entropy_and_mse_hand_values():
    logits = torch.tensor([[0.0, 0.0, 0.0], [LN2, 0.0, 0.0]])
    # Uniform: ln 3; (1/2, 1/4, 1/4): 1/2 ln 2 + 1/2 ln 4 = 1.5 ln 2.
    assert entropy_loss(logits).item() == pytest.approx((LN3 + 1.5 * LN2) / 2, abs=1e-6)
    p = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    q = torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    # Squared distances 2 and 1/2, each over K = 3 classes, then the batch mean: 5/12.
    assert mse_consistency(p, q).item() == pytest.approx(5 / 12, abs=1e-7)


# VAT. ---------------------------------------------------------------------------------------


def _tiny_model(momentum: float | None = 0.1) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2, momentum=momentum),
                          nn.ReLU(), nn.Flatten(), nn.Linear(2 * 5 * 5, 3))
    return model.double().train()


def _images() -> torch.Tensor:
    return torch.rand(6, 1, 5, 5, generator=torch.Generator().manual_seed(1),
                      dtype=torch.float64)


def _batch_norm_state(model: nn.Module) -> list[torch.Tensor]:
    layer = model[1]
    return [layer.running_mean.clone(), layer.running_var.clone(),
            layer.num_batches_tracked.clone()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vat_perturbation_has_norm_epsilon_and_beats_a_random_direction(dtype):
    # float32 with the paper's xi = 1e-6 too: the finite difference still finds the direction.
    model, images = _tiny_model().to(dtype), _images().to(dtype)
    logits = model(images).detach()
    r_adv = vat_perturbation(model, images, logits, epsilon=0.5, xi=1e-6,
                             power_iterations=2, generator=torch.Generator().manual_seed(2))
    assert r_adv.shape == images.shape and not r_adv.requires_grad
    assert torch.allclose(r_adv.flatten(1).norm(dim=1), torch.full((6,), 0.5, dtype=dtype))
    random = torch.randn(images.shape, generator=torch.Generator().manual_seed(9), dtype=dtype)
    random = 0.5 * random / random.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    model.eval()  # compare the two directions sample by sample, without batch coupling
    clean = model(images).softmax(dim=1)

    def kl(perturbation):
        log_q = model(images + perturbation).log_softmax(dim=1)
        return (clean * (clean.log() - log_q)).sum(dim=1)

    with torch.no_grad():
        assert kl(r_adv).mean() > 2 * kl(random).mean()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_vat_loss_keeps_batch_norm_statistics_and_parameter_gradients(momentum):
    model, images = _tiny_model(momentum), _images()
    logits = model(images)  # the clean pass moves the statistics, as it should
    before = _batch_norm_state(model)
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 7.0)
    with frozen_batch_norm_statistics(model):
        vat_perturbation(model, images, logits, epsilon=1.0,
                         generator=torch.Generator().manual_seed(0))
    for parameter in model.parameters():  # the search leaves .grad alone
        assert torch.equal(parameter.grad, torch.full_like(parameter, 7.0))
    model.zero_grad(set_to_none=True)
    loss = vat_loss(model, images, logits, epsilon=1.0, generator=torch.Generator().manual_seed(0))
    for saved, now in zip(before, _batch_norm_state(model), strict=True):
        assert torch.equal(saved, now)
    loss.backward()  # the graph built inside the frozen block is still valid
    assert all(p.grad is not None for p in model.parameters())
    assert loss.item() > 0


def test_vat_loss_gradient_comes_from_the_perturbed_pass_only():
    model, images = _tiny_model(), _images()
    logits = model(images)
    generator = torch.Generator().manual_seed(4)
    loss = vat_loss(model, images, logits, epsilon=1.0, generator=generator)
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    # Recompute by hand: same perturbation (same seed), KL with the clean target detached.
    with frozen_batch_norm_statistics(model):
        r_adv = vat_perturbation(model, images, logits, epsilon=1.0,
                                 generator=torch.Generator().manual_seed(4))
        log_q = model(images + r_adv).log_softmax(dim=1)
    target = logits.detach().softmax(dim=1)
    (target * (target.log() - log_q)).sum(dim=1).mean().backward()
    for a, p in zip(got, model.parameters(), strict=True):
        assert torch.allclose(a, p.grad)


def test_vat_loss_needs_a_module_for_batch_norm():
    model, images = _tiny_model(), _images()
    with pytest.raises(ValueError, match="batch_norm_owner"):
        vat_loss(lambda x: model(x), images, model(images), epsilon=1.0)


# FlexMatch, FreeMatch, distribution alignment. -----------------------------------------------


def test_flexmatch_thresholds_hand_values():
    flex = FlexMatchThresholds(num_images=6, num_classes=3, threshold=0.75)
    # Nothing confident yet: every beta is 0, so every threshold is 0 (warm-up or not).
    assert torch.equal(flex.class_thresholds(), torch.zeros(3))
    # sigma = (3, 1, 0), 2 unused: denominator max(3, 2) = 3, beta = (1, 1/3, 0),
    # M(beta) = beta / (2 - beta) = (1, 1/5, 0).
    flex.predictions.copy_(torch.tensor([0, 0, 0, 1, -1, -1]))
    assert torch.allclose(flex.class_thresholds(), torch.tensor([0.75, 0.15, 0.0]))
    # sigma = (1, 1, 0), 4 unused: warm-up denominator 4, beta = 1/4, M = 1/7.
    flex.predictions.copy_(torch.tensor([0, 1, -1, -1, -1, -1]))
    assert torch.allclose(flex.class_thresholds(), torch.tensor([0.75 / 7, 0.75 / 7, 0.0]))
    flex.warmup = False  # denominator max sigma = 1: beta = (1, 1, 0)
    assert torch.allclose(flex.class_thresholds(), torch.tensor([0.75, 0.75, 0.0]))


def test_flexmatch_update_records_confident_predictions_by_dataset_index():
    flex = FlexMatchThresholds(num_images=6, num_classes=3, threshold=0.75)
    flex.predictions.copy_(torch.tensor([2, -1, 1, -1, -1, -1]))
    probabilities = torch.tensor([[0.75, 0.125, 0.125], [0.5, 0.25, 0.25],
                                  [0.0625, 0.9375, 0.0]])
    flex.update(probabilities, torch.tensor([4, 2, 0]))
    # Index 4 confident at exactly 0.75 -> class 0; index 2 not confident, keeps its class 1;
    # index 0 -> class 1.
    assert flex.predictions.tolist() == [1, -1, 1, -1, 0, -1]
    assert "predictions" in flex.state_dict()


def test_freematch_thresholds_hand_values():
    free = FreeMatchThresholds(num_classes=3, momentum=0.5)
    assert torch.allclose(free.class_thresholds(), torch.full((3,), 1 / 3))
    free.update(torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]]))
    # tau = (1/3 + 1/2) / 2 = 5/12; p = (1/3 + (3/8, 1/4, 3/8)) / 2 = (17/48, 14/48, 17/48);
    # thresholds p / max p * tau = (5/12, 14/17 * 5/12, 5/12).
    assert free.global_threshold.item() == pytest.approx(5 / 12)
    assert torch.allclose(free.class_thresholds(),
                          torch.tensor([5 / 12, 14 / 17 * 5 / 12, 5 / 12]))
    assert torch.allclose(free.label_histogram, torch.tensor([5 / 12, 1 / 6, 5 / 12]))
    assert set(free.state_dict()) == {"global_threshold", "class_probabilities",
                                      "label_histogram"}


def test_freematch_fairness_loss_hand_value():
    strong = torch.tensor([[LN2, 0, 0], [LN2, 0, 0], [0, LN2, 0], [0, 0, LN2], [9.0, 0, 0]])
    mask = torch.tensor([True, True, True, True, False])
    # Masked batch: mean probability (3/8, 5/16, 5/16), argmax histogram (1/2, 1/4, 1/4),
    # ratio (3/4, 5/4, 5/4) -> (3, 5, 5) / 13. EMA side: (0.4, 0.4, 0.2) / (0.5, 0.25, 0.25)
    # = (0.8, 1.6, 0.8) -> (1/4, 1/2, 1/4). Loss = sum target * log batch.
    loss = freematch_fairness_loss(strong, mask, torch.tensor([0.4, 0.4, 0.2]),
                                   torch.tensor([0.5, 0.25, 0.25]))
    expected = 0.25 * math.log(3 / 13) + 0.75 * math.log(5 / 13)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    none = freematch_fairness_loss(strong, torch.zeros(5, dtype=torch.bool),
                                   torch.full((3,), 1 / 3), torch.full((3,), 1 / 3))
    assert none.item() == 0.0


def test_distribution_alignment_hand_values():
    q = torch.tensor([[0.5, 0.25, 0.25]])
    uniform = torch.full((3,), 1 / 3)
    # Running mean equal to q, uniform prior: aligned to uniform.
    assert torch.allclose(distribution_alignment(q, q[0], uniform), uniform[None])
    # Prior (1/2, 1/4, 1/4), uniform mean: q * (3/2, 3/4, 3/4) = (3/4, 3/16, 3/16)
    # -> (2/3, 1/6, 1/6).
    aligned = distribution_alignment(q, uniform, torch.tensor([0.5, 0.25, 0.25]))
    assert torch.allclose(aligned, torch.tensor([[2 / 3, 1 / 6, 1 / 6]]))
    ema = DistributionAlignment(3, momentum=0.5)
    ema.update(q)
    assert torch.allclose(ema.prediction_mean, torch.tensor([5 / 12, 7 / 24, 7 / 24]))
    window = DistributionAlignment(3, window=2)
    window.update(q)  # history (uniform, q): mean (5/12, 7/24, 7/24)
    assert torch.allclose(window.prediction_mean, torch.tensor([5 / 12, 7 / 24, 7 / 24]))
    window.update(q)
    assert torch.allclose(window.prediction_mean, q[0])
    assert torch.allclose(window(q), uniform[None])


# Gradient reversal. -------------------------------------------------------------------------


def test_gradient_reversal_is_identity_forward_and_minus_lambda_backward():
    x = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    layer = GradientReversal()
    layer.coefficient = 0.3
    y = layer(x)
    assert torch.equal(y, x)
    (y ** 3).sum().backward()
    plain = 3 * x.detach() ** 2
    assert torch.allclose(x.grad, -0.3 * plain)
    x.grad = None
    (reverse_gradient(x, 2.0) ** 3).sum().backward()
    assert torch.allclose(x.grad, -2.0 * plain)


def test_dann_lambda_schedule():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_lambda(0.5) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    with pytest.raises(ValueError):
        dann_lambda(1.5)
