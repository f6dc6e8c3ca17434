"""Every loss against values derived by hand; stop-gradients send no gradient."""

import math

import pytest
import torch
import torch.nn.functional as F

from fewlabels.losses import (
    byol_loss,
    dino_kl_divergence,
    dino_loss,
    estimate_nce_normalizer,
    moco_batch_loss,
    moco_queue_loss,
    npid_nce_loss,
    npid_softmax_loss,
    nt_xent_loss,
    simsiam_loss,
    teacher_entropy,
    updated_center,
)


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


# MoCo ---------------------------------------------------------------------------------------


E = math.e


def test_moco_queue_loss_matches_hand_derivation():
    # Queries q0=(1,0), q1=(0,1); keys k0=(1,0), k1=(1,0); queue (0,1), (-1,0); tau = 1:
    #   row 0 logits [1 | 0, -1] -> -1 + log(e + 1 + 1/e);  row 1 logits [0 | 1, 0] -> log(2 + e)
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    key = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    expected = ((-1 + math.log(E + 1 + 1 / E)) + math.log(2 + E)) / 2
    assert moco_queue_loss(query, key, queue, 1.0).item() == pytest.approx(expected, abs=1e-6)
    # Scale does not matter (query and key are normalised); tau = 0.5 doubles every logit.
    expected_half = ((-2 + math.log(E**2 + 1 + E**-2)) + math.log(2 + E**2)) / 2
    assert moco_queue_loss(3 * query, 0.5 * key, queue, 0.5).item() == pytest.approx(
        expected_half, abs=1e-6)


def test_moco_queue_loss_sends_no_gradient_to_keys_or_queue():
    query = torch.randn(4, 8, requires_grad=True)
    key = torch.randn(4, 8, requires_grad=True)
    queue = F.normalize(torch.randn(16, 8), dim=1).requires_grad_()
    moco_queue_loss(query, key, queue, 0.2).backward()
    assert key.grad is None and queue.grad is None
    assert query.grad is not None and query.grad.abs().sum() > 0


def test_moco_batch_loss_matches_hand_derivation_with_its_two_tau_factor():
    # q0=(1,0), q1=(0,1); k0=(1,0), k1=(-1,0); tau = 1: row 0 logits [1, -1] target 0
    # -> -1 + log(e + 1/e); row 1 logits [0, 0] target 1 -> log 2; times 2 tau = 2.
    query = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    key = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    mean = ((-1 + math.log(E + 1 / E)) + math.log(2)) / 2
    assert moco_batch_loss(query, key, 1.0).item() == pytest.approx(2 * mean, abs=1e-6)
    # tau = 0.5: logits doubled, factor 2 tau = 1.
    mean_half = ((-2 + math.log(E**2 + E**-2)) + math.log(2)) / 2
    assert moco_batch_loss(query, key, 0.5, gather=False).item() == pytest.approx(
        mean_half, abs=1e-6)


def test_moco_batch_loss_sends_no_gradient_to_keys():
    query = torch.randn(6, 8, requires_grad=True)
    key = torch.randn(6, 8, requires_grad=True)
    moco_batch_loss(query, key, 0.2).backward()
    assert key.grad is None and query.grad.abs().sum() > 0


# NPID ---------------------------------------------------------------------------------------

BANK = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])


def test_npid_softmax_loss_and_proximal_term_by_hand():
    # f0=(1,0) is image 0, f1=(0,1) is image 2; tau = 1 over the 3 rows of the bank:
    #   image 0: scores [1, 0, -1] -> -1 + log(e + 1 + 1/e); image 2: [0, 1, 0] -> log(2 + e)
    # Proximal: ||f0 - v0||^2 = 0, ||f1 - v2||^2 = |(1, 1)|^2 = 2; mean 1.
    features = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    indices = torch.tensor([0, 2])
    expected = ((-1 + math.log(E + 1 + 1 / E)) + math.log(2 + E)) / 2
    assert npid_softmax_loss(features, indices, BANK, 1.0).item() == pytest.approx(
        expected, abs=1e-6)
    with_proximal = npid_softmax_loss(features, indices, BANK, 1.0, proximal_weight=30.0)
    assert with_proximal.item() == pytest.approx(expected + 30.0, abs=1e-5)


def _nce_by_hand(score_rows, bank_size, m, tau, z):
    """-log h(data) - sum log(1 - h(noise)), h = P / (P + m/N), P = exp(s / tau) / Z."""
    total = 0.0
    for scores in score_rows:
        p = [math.exp(s / tau) / z for s in scores]
        h = [q / (q + m / bank_size) for q in p]
        total += -math.log(h[0]) - sum(math.log(1 - x) for x in h[1:])
    return total / len(score_rows)


def test_npid_nce_loss_by_hand_when_every_row_is_the_same():
    # With identical rows the noise draw cannot matter: every score is f . u.
    u = torch.tensor([0.6, 0.8])
    bank = u.repeat(10, 1)
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    m, tau, z = 4, 0.5, 7.0
    expected = _nce_by_hand([[0.6] * (m + 1), [0.8] * (m + 1)], 10, m, tau, z)
    loss = npid_nce_loss(features, torch.tensor([3, 7]), bank, tau, m, z,
                         generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("num_negatives", [3, 40])  # gathered rows / one product with the bank
def test_npid_nce_loss_by_hand_with_the_drawn_noise(num_negatives):
    bank = F.normalize(torch.randn(5, 2, generator=torch.Generator().manual_seed(1)), dim=1)
    features = torch.tensor([[1.0, 0.0], [0.6, -0.8]])
    indices = torch.tensor([4, 1])
    tau, z = 0.3, 11.0
    # The noise rows are one randint(N, (n, m)) call on the generator, after the features.
    noise = torch.randint(5, (2, num_negatives), generator=torch.Generator().manual_seed(2))
    rows = []
    for i in range(2):
        candidates = [int(indices[i])] + [int(j) for j in noise[i]]
        rows.append([float(bank[j] @ features[i]) for j in candidates])
    expected = _nce_by_hand(rows, 5, num_negatives, tau, z)
    loss = npid_nce_loss(features, indices, bank, tau, num_negatives, torch.tensor(z),
                         generator=torch.Generator().manual_seed(2), proximal_weight=10.0)
    proximal = float((features - bank[indices]).square().sum(1).mean())
    assert loss.item() == pytest.approx(expected + 10.0 * proximal, rel=1e-5)


def test_nce_normalizer_is_n_times_the_mean_exponential():
    u = torch.tensor([0.6, 0.8])
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z = estimate_nce_normalizer(features, u.repeat(10, 1), temperature=0.5, num_negatives=16)
    assert z.item() == pytest.approx(10 * (math.exp(1.2) + math.exp(1.6)) / 2, rel=1e-5)


def test_npid_losses_send_no_gradient_to_the_bank():
    bank = F.normalize(torch.randn(20, 4), dim=1).requires_grad_()
    features = torch.randn(3, 4, requires_grad=True)
    indices = torch.tensor([1, 5, 9])
    loss = npid_softmax_loss(features, indices, bank, proximal_weight=1.0) + npid_nce_loss(
        features, indices, bank, num_negatives=8, normalizer=20.0, proximal_weight=1.0)
    loss.backward()
    assert bank.grad is None and features.grad.abs().sum() > 0


# BYOL, SimSiam ------------------------------------------------------------------------------


def test_byol_loss_is_two_minus_two_cosine_and_stops_the_target_gradient():
    # cos((1,0), (1,1)) = 1/sqrt 2 -> 2 - sqrt 2; cos((0,2), (0,-1)) = -1 -> 4.
    prediction = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0], [0.0, -1.0]], requires_grad=True)
    loss = byol_loss(prediction, target)
    assert loss.item() == pytest.approx((2 - math.sqrt(2) + 4) / 2, abs=1e-6)
    loss.backward()
    assert target.grad is None and prediction.grad.abs().sum() > 0


def test_simsiam_loss_is_minus_cosine_and_stops_the_projection_gradient():
    prediction = torch.tensor([[1.0, 0.0], [3.0, 4.0]], requires_grad=True)
    projection = torch.tensor([[1.0, 1.0], [4.0, -3.0]], requires_grad=True)
    loss = simsiam_loss(prediction, projection)
    assert loss.item() == pytest.approx(-(1 / math.sqrt(2) + 0.0) / 2, abs=1e-6)
    loss.backward()
    assert projection.grad is None and prediction.grad.abs().sum() > 0


# DINO ---------------------------------------------------------------------------------------


def test_dino_loss_by_hand_on_two_views():
    # K = 2, one image, two global views, no local view. Teacher (tau_t = 0.04): view 0 logits
    # (0, 0), view 1 (0.04 ln 3, 0) -> (1/2, 1/2) and (3/4, 1/4). Student (tau_s = 0.1):
    # view 0 (0, 0) -> (1/2, 1/2), view 1 (0.1 ln 3, 0) -> (3/4, 1/4). Pairs (t0, s1), (t1, s0):
    #   H((1/2, 1/2), (3/4, 1/4)) = -(ln(3/4) + ln(1/4)) / 2,  H((3/4, 1/4), (1/2, 1/2)) = ln 2.
    ln3 = math.log(3)
    teacher = torch.tensor([[0.0, 0.0], [0.04 * ln3, 0.0]])
    student = torch.tensor([[0.0, 0.0], [0.1 * ln3, 0.0]])
    expected = (-(math.log(3 / 4) + math.log(1 / 4)) / 2 + math.log(2)) / 2
    loss = dino_loss(student, teacher, torch.zeros(2), 0.1, 0.04, num_global_views=2)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # Centring with c = (0.04 ln 3, 0): teacher view 0 -> (1/4, 3/4), view 1 -> (1/2, 1/2).
    center = torch.tensor([[0.04 * ln3, 0.0]])
    expected_centred = (-(math.log(3 / 4) / 4 + 3 * math.log(1 / 4) / 4) + math.log(2)) / 2
    assert dino_loss(student, teacher, center, 0.1, 0.04, 2).item() == pytest.approx(
        expected_centred, abs=1e-6)


def test_dino_loss_equals_the_papers_loop_over_view_pairs():
    generator = torch.Generator().manual_seed(0)
    n, views, classes = 3, 5, 7
    student = torch.randn(views * n, classes, generator=generator, requires_grad=True)
    teacher = torch.randn(2 * n, classes, generator=generator, requires_grad=True)
    center = torch.randn(1, classes, generator=generator, requires_grad=True)
    loss = dino_loss(student, teacher, center, 0.1, 0.05, num_global_views=2)
    t = torch.softmax((teacher.detach() - center.detach()) / 0.05, dim=-1).chunk(2)
    s = torch.log_softmax(student.detach() / 0.1, dim=-1).chunk(views)
    terms = [(-t[g] * s[v]).sum(-1).mean() for g in range(2) for v in range(views) if v != g]
    assert len(terms) == 2 * (views - 1)
    torch.testing.assert_close(loss.detach(), sum(terms) / len(terms))
    loss.backward()
    assert teacher.grad is None and center.grad is None and student.grad.abs().sum() > 0
    # Uniform teacher and student: every cross-entropy is log K.
    flat = dino_loss(torch.zeros(views * n, classes), torch.zeros(2 * n, classes),
                     torch.zeros(classes))
    assert flat.item() == pytest.approx(math.log(classes), abs=1e-6)


def test_dino_loss_in_bfloat16_autocast_stays_close():
    generator = torch.Generator().manual_seed(3)
    student, teacher = torch.randn(8 * 4, 64, generator=generator), torch.randn(8, 64,
                                                                                generator=generator)
    exact = dino_loss(student, teacher, torch.zeros(64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = dino_loss(student.bfloat16(), teacher.bfloat16(), torch.zeros(64))
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(exact.item(), rel=2e-2)


def test_updated_center_is_the_moving_average_of_the_batch_mean():
    center = torch.tensor([[1.0, -2.0, 0.5]])
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 3.0, 4.0], [4.0, 2.0, 0.0], [2.0, 2.0, 2.0]])
    # Column means (2, 2, 2); 0.9 c + 0.1 mean.
    expected = torch.tensor([[0.9 + 0.2, -1.8 + 0.2, 0.45 + 0.2]])
    torch.testing.assert_close(updated_center(center, logits, 0.9), expected)
    assert updated_center(center, logits, 0.9).shape == (1, 3)
    torch.testing.assert_close(updated_center(center[0], logits, 0.0), torch.full((3,), 2.0))


def test_teacher_entropy_monitors_both_kinds_of_collapse():
    classes = 4
    uniform = teacher_entropy(torch.zeros(6, classes), torch.zeros(classes), 0.04)
    assert uniform.of_mean.item() == pytest.approx(math.log(classes), abs=1e-6)
    assert uniform.mean.item() == pytest.approx(math.log(classes), abs=1e-6)
    # Every image sharply on its own class: per-image entropy 0, the mean spread over 2 classes.
    sharp = torch.tensor([[10.0, 0.0, 0.0, 0.0], [0.0, 10.0, 0.0, 0.0]])
    healthy = teacher_entropy(sharp, torch.zeros(classes), 0.04)
    assert healthy.mean.item() == pytest.approx(0.0, abs=1e-6)
    assert healthy.of_mean.item() == pytest.approx(math.log(2), abs=1e-6)
    # Every image on the same class: both entropies 0 (collapse to one dimension).
    same = teacher_entropy(sharp[:1].repeat(3, 1), torch.zeros(classes), 0.04)
    assert same.of_mean.item() == pytest.approx(0.0, abs=1e-6)


def test_dino_kl_is_the_loss_minus_the_teacher_entropy_and_zero_when_they_agree():
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(4 * 3, 5, generator=generator), torch.randn(2 * 3, 5,
                                                                               generator=generator)
    kl = dino_kl_divergence(student, teacher, torch.zeros(5), 0.1, 0.04)
    t = torch.softmax(teacher / 0.04, dim=-1)
    mean_entropy = -(t * t.log()).sum(-1).mean()
    torch.testing.assert_close(kl, dino_loss(student, teacher, torch.zeros(5)) - mean_entropy)
    # Student = teacher in every view (same temperature): KL 0.
    same = torch.randn(3, 5, generator=generator).repeat(2, 1)
    assert dino_kl_divergence(same, same, torch.zeros(5), 0.1, 0.1).abs().item() < 1e-6


def test_dino_loss_refuses_views_that_do_not_line_up():
    with pytest.raises(ValueError):  # 7 student rows are not views of the teacher's 2 images
        dino_loss(torch.zeros(7, 3), torch.zeros(4, 3), torch.zeros(3))
    with pytest.raises(ValueError):  # the student must have every global view and another one
        dino_loss(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(3))
