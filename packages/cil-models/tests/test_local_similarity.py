"""PODNet's local-similarity head against a plain float64 reference; k-means imprinting."""

from __future__ import annotations

import pytest
import torch

from cil_models import (
    HeadStateError,
    IncrementalNet,
    LocalSimilarityHead,
    ModelConfigError,
    kmeans,
    kmeans_proxies,
)

SEEDS = (0, 1, 2)


def build(splits, k=3, dtype=torch.float64, **kw):
    head = LocalSimilarityHead(6, proxies_per_class=k, **kw).to(dtype)
    for size in splits:
        head.expand(size)
    return head


def reference(x, proxies, scale, merge_scale, kind):
    """Loops over samples, classes and proxies: s_ck = −‖x̂ − θ̂_ck‖² (or cos), softmax-merged."""
    out = torch.zeros(x.shape[0], proxies.shape[0], dtype=x.dtype)
    for b in range(x.shape[0]):
        xb = x[b] / x[b].norm()
        for c in range(proxies.shape[0]):
            sims = []
            for k in range(proxies.shape[1]):
                theta = proxies[c, k] / proxies[c, k].norm()
                sims.append(-(xb - theta).square().sum() if kind == "neg-squared-distance" else (xb * theta).sum())
            sims = torch.stack(sims)
            weights = torch.exp(merge_scale * sims) / torch.exp(merge_scale * sims).sum()
            out[b, c] = (weights * sims).sum()
    return scale * out


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("splits", [[4], [2, 3, 1]])
@pytest.mark.parametrize("kind", ["neg-squared-distance", "cosine"])
@pytest.mark.parametrize("fused", [False, True])
def test_matches_reference_values_and_gradients(seed, splits, kind, fused):
    torch.manual_seed(seed)
    head = build(splits, similarity=kind, fused=fused, scale_init=2.5, merge_scale=1.5)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    proxies = head.proxies().detach().clone().requires_grad_(True)
    scale = head.scale.detach().clone().requires_grad_(True)
    out = head(x)
    ref = reference(x_ref, proxies, scale, 1.5, kind)
    torch.testing.assert_close(out, ref)
    upstream = torch.randn_like(ref)
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(head.scale.grad, scale.grad)
    grads = torch.cat([b.weight.grad for b in head.blocks]).view_as(proxies)
    torch.testing.assert_close(grads, proxies.grad)
    torch.testing.assert_close(head.similarity(x), ref / scale)
    if kind == "neg-squared-distance":
        assert (head.similarity(x) <= 1e-12).all() and (head.similarity(x) >= -4 - 1e-12).all()


def test_gradcheck():
    torch.manual_seed(0)
    head = build([2, 1], k=2)
    names = [n for n, _ in head.named_parameters()]
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)

    def fn(x, *ps):
        return torch.func.functional_call(head, dict(zip(names, ps)), (x,))

    params = [p.detach().clone().requires_grad_(True) for p in head.parameters()]
    assert torch.autograd.gradcheck(fn, (x, *params))


def test_bookkeeping_init_and_norms():
    torch.manual_seed(0)
    head = LocalSimilarityHead(400, proxies_per_class=10)
    head.expand(5)
    head.expand(3)
    assert head.task_sizes == [5, 3] and head.num_classes == 8 and head.boundaries == [0, 5, 8]
    assert head.blocks[0].weight.shape == (50, 400) and head.proxies().shape == (8, 10, 400)
    assert head.full_bias() is None and head.proxies_per_class == 10
    std = head.blocks[0].weight.std().item()
    assert abs(std * 20 - 1) < 0.02  # Kaiming-normal, linear gain: N(0, 1/400)
    norms = head.weight_norms()
    assert norms.shape == (8,) and not norms.requires_grad
    torch.testing.assert_close(norms, head.proxies().detach().norm(dim=2).mean(dim=1))
    assert float(head.scale.detach()) == 1.0 and head.scale.requires_grad
    fixed = LocalSimilarityHead(4, learn_scale=False, scale_init=3.0)
    assert [n for n, _ in fixed.named_parameters()] == [] and float(fixed.scale) == 3.0
    with pytest.raises(HeadStateError, match="no classes yet"):
        fixed(torch.randn(2, 4))
    with pytest.raises(ModelConfigError, match="similarity must be one of"):
        LocalSimilarityHead(4, similarity="dot")
    with pytest.raises(ModelConfigError, match="proxies_per_class must be an int >= 1"):
        LocalSimilarityHead(4, proxies_per_class=0)


def test_expansion_keeps_old_outputs_bit_identical():
    torch.manual_seed(0)
    head = LocalSimilarityHead(64, proxies_per_class=10)
    head.expand(10)
    x = torch.randn(32, 64)
    before = head(x).detach().clone()
    head.expand(5)
    assert torch.equal(head(x)[:, :10], before)


def test_explicit_and_imprinted_proxies():
    torch.manual_seed(0)
    head = build([], k=2)
    centres = torch.randn(3, 2, 6, dtype=torch.float64)
    head.expand_imprinted(centres)  # no existing proxies: used as given
    torch.testing.assert_close(head.proxies(), centres)
    mean_norm = centres.norm(dim=2).mean()
    new = torch.randn(2, 2, 6, dtype=torch.float64)
    head.expand_imprinted(new)
    torch.testing.assert_close(head.proxies()[3:], new * mean_norm)
    head.expand(1, weight=torch.ones(2, 6, dtype=torch.float64))
    assert torch.equal(head.proxies()[5], torch.ones(2, 6, dtype=torch.float64))
    with pytest.raises(ModelConfigError, match=r"centres must be a tensor \[n_new, 2, 6\]"):
        head.expand_imprinted(torch.randn(2, 3, 6))


def test_kmeans_finds_separated_clusters_and_is_a_fixed_point():
    g = torch.Generator().manual_seed(0)
    truth = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]], dtype=torch.float64)
    points = torch.cat([c + 0.1 * torch.randn(30, 2, generator=g, dtype=torch.float64) for c in truth])
    centres = kmeans(points, 3, generator=torch.Generator().manual_seed(1))
    order = torch.cdist(truth, centres).argmin(dim=1)
    torch.testing.assert_close(centres[order], truth, atol=0.1, rtol=0)
    # Lloyd fixed point: each centre is the mean of the points nearest to it.
    assignment = torch.cdist(points, centres).argmin(dim=1)
    for j in range(3):
        torch.testing.assert_close(centres[j], points[assignment == j].mean(dim=0))
    again = kmeans(points, 3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, centres)


def test_kmeans_with_fewer_points_than_clusters_cycles_the_points():
    points = torch.arange(6.0).view(3, 2)
    centres = kmeans(points, 5)
    assert torch.equal(centres, points[[0, 1, 2, 0, 1]])


def test_kmeans_proxies_per_class_on_normalised_features():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(40, 8, generator=g) * 3
    labels = torch.arange(40) % 2
    centres = kmeans_proxies(features, labels, 2, 4, generator=torch.Generator().manual_seed(0))
    assert centres.shape == (2, 4, 8)
    assert (centres.norm(dim=2) <= 1 + 1e-6).all()  # means of unit vectors
    unit = torch.nn.functional.normalize(features[labels == 1], dim=1)
    alone = kmeans_proxies(features[labels == 1], torch.zeros(20, dtype=torch.long), 1, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(alone[0], kmeans(unit, 4, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(ModelConfigError, match="at least one sample per class"):
        kmeans_proxies(features, labels, 3, 4)
    with pytest.raises(ModelConfigError, match=r"labels must lie in \[0, 1\]"):
        kmeans_proxies(features, labels - 1, 2, 4)


def test_network_with_local_similarity_head():
    torch.manual_seed(0)
    net = IncrementalNet("resnet8", head="local-similarity", in_channels=1, head_options={"proxies_per_class": 3})
    assert isinstance(net.head, LocalSimilarityHead) and net.head.proxies_per_class == 3
    net.expand(4)
    x = torch.randn(5, 1, 16, 16)
    with torch.no_grad():
        feats = net.eval().features(x)
        centres = kmeans_proxies(feats, torch.arange(5) % 2, 2, 3)
    net.expand_imprinted(centres)
    assert net.task_sizes == [4, 2] and net(x).shape == (5, 6)
    state = net.checkpoint_state()
    restored = IncrementalNet.from_checkpoint_state(state)
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), net(x))


def test_kmeans_refuses_a_generator_off_the_cpu():
    """The k-means++ draws run on the CPU whatever the points' device: a CUDA generator (as
    ``torch.Generator(device=features.device)`` gives on a GPU) would fail inside torch with a less
    clear message. A stand-in carries the device, as no CUDA generator can be made on a CPU-only host."""
    from types import SimpleNamespace

    points = torch.randn(20, 4)
    with pytest.raises(ModelConfigError, match="CPU generator"):
        kmeans(points, 3, generator=SimpleNamespace(device=torch.device("cuda", 0)))
