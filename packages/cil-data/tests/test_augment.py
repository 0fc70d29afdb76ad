"""Whole-batch augmentation against a per-image reference."""

from __future__ import annotations

import pytest
import torch

from cil_data import BatchAugment, DataError


def reference(images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, p: int, mean, std) -> torch.Tensor:
    out = []
    h, w = images.shape[2:]
    for i in range(len(images)):
        padded = torch.nn.functional.pad(images[i].float(), (p, p, p, p))
        crop = padded[:, int(dy[i]) : int(dy[i]) + h, int(dx[i]) : int(dx[i]) + w]
        if flip[i]:
            crop = crop.flip(2)
        m = torch.tensor(mean).view(-1, 1, 1)
        s = torch.tensor(std).view(-1, 1, 1)
        out.append((crop / 255 - m) / s)
    return torch.stack(out)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(("c", "p"), [(3, 4), (1, 2), (3, 0)])
def test_matches_per_image_reference(seed: int, c: int, p: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (9, c, 7, 5), generator=g, dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3)[:c], (0.2, 0.25, 0.3)[:c]
    aug = BatchAugment(mean, std, crop_padding=p)
    gen = torch.Generator().manual_seed(seed + 10)
    out = aug(x, gen)
    replay = torch.Generator().manual_seed(seed + 10)  # the same draws, in the documented order
    draws = torch.randint(0, 2 * p + 1, (2, 9), generator=replay)
    flips = torch.randint(0, 2, (9,), generator=replay).bool()
    want = reference(x, draws[0], draws[1], flips, p, mean, std)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-5)


def test_statistics_of_crops_and_flips() -> None:
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(4000, 1, 1, 1) + 1
    aug = BatchAugment((0.0,), (1.0,), crop_padding=1)
    out = (aug(x, torch.Generator().manual_seed(0)) * 255).round()
    centred = (out[:, 0] == x[:, 0].float()).all(2).all(1)
    flipped = (out[:, 0] == x[:, 0].flip(2).float()).all(2).all(1)
    assert abs(centred.float().mean() - 1 / 18) < 0.02 and abs(flipped.float().mean() - 1 / 18) < 0.02
    zero_rows = (out[:, 0] == 0).all(2).any(1).float().mean()  # a padded row shows when dy != 1
    assert abs(zero_rows - 2 / 3) < 0.03


def test_no_flip_no_crop_is_normalize_and_internal_generator_resumes() -> None:
    x = torch.randint(0, 256, (6, 3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    plain = BatchAugment((0.5,) * 3, (0.5,) * 3, crop_padding=0, flip=False)
    torch.testing.assert_close(plain(x), plain.normalize(x))
    torch.testing.assert_close(plain.normalize(x), (x.float() / 255 - 0.5) / 0.5)
    a = BatchAugment((0.5,) * 3, (0.5,) * 3, seed=5)
    state = a.state_dict()
    first = a(x)
    assert not torch.equal(first, a(x))
    a.load_state_dict(state)
    assert torch.equal(first, a(x))
    cl = BatchAugment((0.5,) * 3, (0.5,) * 3, channels_last=True)(x)
    assert cl.is_contiguous(memory_format=torch.channels_last)


def test_errors() -> None:
    aug = BatchAugment((0.5,), (0.5,))
    with pytest.raises(DataError, match="uint8"):
        aug(torch.zeros(2, 1, 4, 4))
    with pytest.raises(DataError, match="3 channels"):
        aug(torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(DataError, match="std must be > 0"):
        BatchAugment((0.5,), (0.0,))
    with pytest.raises(DataError, match="one value per channel"):
        BatchAugment((0.5, 0.5), (0.5,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_matches_cpu() -> None:
    x = torch.randint(0, 256, (64, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    aug = BatchAugment((0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    cpu = aug(x, torch.Generator().manual_seed(3))
    gpu = aug(x.cuda(), torch.Generator().manual_seed(3))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)
    gpu_gen = aug(x.cuda(), torch.Generator(device="cuda").manual_seed(3))
    assert gpu_gen.device.type == "cuda" and gpu_gen.shape == x.shape


def test_policies_flip_only_where_asked_and_draw_the_same_crops():
    from cil_data import AUGMENT_POLICIES, DataError

    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    outs = {}
    for policy in AUGMENT_POLICIES:
        aug = BatchAugment.from_policy(policy, (0.0,), (1.0 / 255.0,))
        outs[policy] = aug(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(outs["none"], x.float())
    crop_only = BatchAugment(((0.0,)), (1.0 / 255.0,), crop_padding=4, flip=False)
    assert torch.equal(outs["crop"], crop_only(x, generator=torch.Generator().manual_seed(3)))
    # crop,flip differs from crop only by mirroring some images of the same crops
    for b in range(2):
        same, mirrored = torch.equal(outs["crop"][b], outs["crop,flip"][b]), torch.equal(
            outs["crop"][b], outs["crop,flip"][b].flip(-1)) or torch.equal(outs["crop"][b].flip(-1), outs["crop,flip"][b])
        assert same or mirrored
    with pytest.raises(DataError, match="augment"):
        BatchAugment.from_policy("flip", (0.0,), (1.0,))
