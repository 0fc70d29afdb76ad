"""SS-IL separated softmax cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import cil_losses as L
from cil_losses.errors import LossArgumentError


def _batch(gen, batch, num_old, num_classes, replay_share):
    is_replay = torch.rand(batch, generator=gen) < replay_share
    old = torch.randint(0, num_old, (batch,), generator=gen)
    new = torch.randint(num_old, num_classes, (batch,), generator=gen)
    return torch.where(is_replay, old, new), is_replay


@pytest.mark.parametrize("replay_share", [0.0, 0.3, 1.0], ids=["all-new", "mixed", "all-replay"])
@pytest.mark.parametrize("num_old, num_classes", [(4, 7), (1, 3), (6, 7)])
def test_matches_per_sample_reference(replay_share, num_old, num_classes, gen, rand, ref, grad_of, close):
    z = rand(gen, 8, num_classes, grad=True)
    y, is_replay = _batch(gen, 8, num_old, num_classes, replay_share)
    got = L.separated_softmax_cross_entropy(z, y, num_old, is_replay)
    want = ref.separated_ce(z, y, num_old, is_replay)
    close(got, want)
    close(grad_of(got, z)[0], grad_of(want, z)[0])


def test_no_old_classes_is_plain_ce(gen, rand, close):
    z, y = rand(gen, 5, 4), torch.randint(0, 4, (5,), generator=gen)
    close(L.separated_softmax_cross_entropy(z, y, 0, torch.zeros(5, dtype=torch.bool)), F.cross_entropy(z, y))
    close(L.separated_softmax_cross_entropy(z, y, 0, None), F.cross_entropy(z, y))


def test_replay_without_old_classes_is_an_error():
    with pytest.raises(LossArgumentError, match="num_old == 0"):
        L.separated_softmax_cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), 0, torch.tensor([True, False]))


def test_targets_must_match_their_group():
    with pytest.raises(LossArgumentError, match="target does not match is_memory"):
        L.separated_softmax_cross_entropy(torch.randn(2, 4), torch.tensor([0, 3]), 2, torch.tensor([False, False]))


def test_reductions_huge_logits_and_batch_of_one(ref, close):
    z = torch.tensor([[1e4, -1e4, -1e4, 1e4], [-1e4, 1e4, 1e4, -1e4]], dtype=torch.float64, requires_grad=True)
    y, is_replay = torch.tensor([1, 3]), torch.tensor([True, False])
    loss = L.separated_softmax_cross_entropy(z, y, 2, is_replay)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    close(loss, ref.separated_ce(z, y, 2, is_replay))
    per = L.separated_softmax_cross_entropy(z, y, 2, is_replay, reduction="none")
    assert per.shape == (2,)
    one = L.separated_softmax_cross_entropy(z[:1], y[:1], 2, torch.tensor([1]))  # 0/1 ints accepted
    close(one, ref.separated_ce(z[:1], y[:1], 2, torch.tensor([True])))


def test_num_old_range():
    with pytest.raises(LossArgumentError, match="num_old"):
        L.separated_softmax_cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), 3, None)
