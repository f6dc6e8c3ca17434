"""MoCo's queue and NPID's memory bank: contents after updates, norms, order with the losses."""

import pytest
import torch
import torch.nn.functional as F

from fewlabels.errors import UserError
from fewlabels.losses import moco_queue_loss, npid_nce_loss, npid_softmax_loss
from fewlabels.models.memory import FeatureQueue, MemoryBank


def _keys(count: int, start: int, dim: int = 3) -> torch.Tensor:
    """Distinct, not-normalised keys whose row r is (start + r + 1) * (1, 2, ..) + a twist."""
    values = torch.arange(start, start + count, dtype=torch.float32)[:, None] + 1
    return values * torch.arange(1, dim + 1) + torch.tensor([0.0, 1.0, -1.0])[:dim] * values**2


def test_queue_starts_as_random_unit_rows_reproducible_from_a_generator():
    queue = FeatureQueue(7, 3, generator=torch.Generator().manual_seed(0))
    again = FeatureQueue(7, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(queue.queue.norm(dim=1), torch.ones(7))
    assert torch.equal(queue.queue, again.queue) and queue.pointer.item() == 0
    assert set(queue.state_dict()) == {"queue", "pointer"}  # checkpoints hold the queue
    with pytest.raises(UserError):
        FeatureQueue(0, 3)


def test_queue_holds_exactly_the_last_k_keys_in_order_across_a_wrap_around():
    queue = FeatureQueue(5, 3, generator=torch.Generator().manual_seed(0))
    keys = _keys(8, 0)
    for step in range(4):  # batches of 2 into a queue of 5: the third and fourth wrap around
        queue.enqueue_(keys[2 * step: 2 * step + 2])
    torch.testing.assert_close(queue.ordered(), F.normalize(keys[3:], dim=1))
    assert queue.pointer.item() == 8 % 5
    torch.testing.assert_close(queue.queue.norm(dim=1), torch.ones(5))
    # Positions, not only order: rows 3,4 hold keys 3,4 (written at 3,4) and rows 0-2 keys 5-7.
    torch.testing.assert_close(queue.queue, F.normalize(keys[[5, 6, 7, 3, 4]], dim=1))


def test_queue_takes_the_last_keys_of_a_batch_longer_than_itself():
    queue = FeatureQueue(4, 3)
    queue.enqueue_(_keys(1, 0))  # pointer 1
    keys = _keys(6, 10)
    queue.enqueue_(keys)
    torch.testing.assert_close(queue.ordered(), F.normalize(keys[2:], dim=1))
    assert queue.pointer.item() == (1 + 6) % 4


def test_enqueue_after_the_loss_and_before_backward_leaves_the_step_unchanged():
    # The loss copies the queue: enqueueing this step's keys before backward() must neither
    # fail (in-place change of a saved tensor) nor change the gradient.
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(4, 3, generator=generator, requires_grad=True)
    key = torch.randn(4, 3, generator=generator)
    queue = FeatureQueue(6, 3, generator=generator)
    reference = moco_queue_loss(query, key, queue.queue.clone(), 0.2)
    (expected,) = torch.autograd.grad(reference, query)
    loss = moco_queue_loss(query, key, queue.queue, 0.2)
    queue.enqueue_(key)
    loss.backward()
    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(query.grad, expected)
    # The keys are negatives only from the next step on (no key is its own negative now).
    torch.testing.assert_close(queue.ordered()[-4:], F.normalize(key, dim=1))


def test_memory_bank_update_equals_the_formula_and_stays_unit_norm():
    memory = MemoryBank(6, 3, generator=torch.Generator().manual_seed(0))
    before = memory.bank.clone()
    torch.testing.assert_close(before.norm(dim=1), torch.ones(6))
    features = torch.tensor([[3.0, 0.0, 4.0], [0.0, -2.0, 0.0]])
    memory.update_(torch.tensor([4, 1]), features, momentum=0.5)
    for row, feature in ((4, features[0]), (1, features[1])):
        unit = feature / feature.norm()
        mixed = 0.5 * before[row] + 0.5 * unit
        torch.testing.assert_close(memory.bank[row], mixed / mixed.norm())
    untouched = [0, 2, 3, 5]
    assert torch.equal(memory.bank[untouched], before[untouched])
    for step in range(5):
        memory.update_(torch.tensor([step, 5]), torch.randn(2, 3), momentum=0.3)
    torch.testing.assert_close(memory.bank.norm(dim=1), torch.ones(6))
    memory.update_(torch.tensor([2]), torch.tensor([[0.0, 5.0, 0.0]]), momentum=0.0)
    torch.testing.assert_close(memory.bank[2], torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(UserError):
        memory.update_(torch.tensor([2]), torch.ones(1, 3), momentum=1.5)


def test_memory_bank_uses_the_last_occurrence_of_a_repeated_index():
    memory = MemoryBank(4, 2)
    before = memory.bank.clone()
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    memory.update_(torch.tensor([3, 0, 3]), features, momentum=0.5)
    mixed = 0.5 * before[3] + 0.5 * features[2]
    torch.testing.assert_close(memory.bank[3], mixed / mixed.norm())


def test_bank_update_after_the_npid_losses_and_before_backward_is_safe():
    generator = torch.Generator().manual_seed(0)
    memory = MemoryBank(50, 4, generator=generator)
    features = torch.randn(3, 4, generator=generator, requires_grad=True)
    indices = torch.tensor([0, 7, 9])
    for loss_of in (
        lambda: npid_softmax_loss(features, indices, memory.bank, proximal_weight=1.0),
        lambda: npid_nce_loss(features, indices, memory.bank, num_negatives=4, normalizer=50.0,
                              generator=torch.Generator().manual_seed(1)),
        lambda: npid_nce_loss(features, indices, memory.bank, num_negatives=100,
                              normalizer=50.0, generator=torch.Generator().manual_seed(1)),
    ):
        bank = memory.bank.clone()
        reference = loss_of()
        (expected,) = torch.autograd.grad(reference, features)
        memory.bank.copy_(bank)
        loss = loss_of()
        memory.update_(indices, features, momentum=0.5)
        (gradient,) = torch.autograd.grad(loss, features)
        torch.testing.assert_close(gradient, expected)
        memory.bank.copy_(bank)
