"""iCaRL nearest-mean-of-exemplars classifier against a per-class loop reference."""

from __future__ import annotations

import pytest
import torch

from cil_models import HeadStateError, ModelConfigError, NMEClassifier, normalized_class_means

SEEDS = (0, 1, 2)


def reference_means(features, labels, num_classes):
    means = []
    for c in range(num_classes):
        rows = [f / f.norm() for f, y in zip(features, labels) if int(y) == c]
        mean = torch.stack(rows).mean(0)
        means.append(mean / mean.norm())
    return torch.stack(means)


@pytest.mark.parametrize("seed", SEEDS)
def test_means_scores_and_predictions_match_reference(seed):
    torch.manual_seed(seed)
    features = torch.randn(40, 5, dtype=torch.float64) * 3
    labels = torch.arange(40) % 6
    nme = NMEClassifier()
    nme.fit(features, labels, 6)
    means = reference_means(features, labels, 6)
    torch.testing.assert_close(nme.means, means)
    queries = torch.randn(9, 5, dtype=torch.float64)
    unit = queries / queries.norm(dim=1, keepdim=True)
    distances = torch.tensor([[float((u - m).norm()) for m in means] for u in unit], dtype=torch.float64)
    torch.testing.assert_close(nme.scores(queries), -distances)
    assert torch.equal(nme.predict(queries), distances.argmin(1))


def test_scale_invariance_and_low_precision_input():
    torch.manual_seed(0)
    features = torch.randn(30, 4)
    labels = torch.arange(30) % 3
    a, b = NMEClassifier(), NMEClassifier()
    a.fit(features, labels, 3)
    b.fit(features * 7.0, labels, 3)
    torch.testing.assert_close(a.means, b.means)
    c = NMEClassifier()
    c.fit(features.bfloat16(), labels, 3)
    assert c.means.dtype == torch.float32
    assert torch.equal(c.predict(features[:5].bfloat16()), a.predict(features[:5].bfloat16().float()))


def test_missing_classes():
    features, labels = torch.randn(6, 3), torch.tensor([0, 0, 2, 2, 4, 4])
    with pytest.raises(ModelConfigError, match=r"classes \[1, 3\] have no samples"):
        NMEClassifier().fit(features, labels, 5)
    nme = NMEClassifier(missing="ignore")
    nme.fit(features, labels, 5)
    scores = nme.scores(torch.randn(10, 3))
    assert torch.isinf(scores[:, [1, 3]]).all() and torch.isfinite(scores[:, [0, 2, 4]]).all()
    assert set(nme.predict(torch.randn(50, 3)).tolist()) <= {0, 2, 4}


def test_input_errors():
    nme = NMEClassifier()
    with pytest.raises(HeadStateError, match="not fitted"):
        nme.predict(torch.randn(2, 3))
    with pytest.raises(ModelConfigError, match=r"labels must lie in \[0, 2\]"):
        nme.fit(torch.randn(3, 2), torch.tensor([0, 1, 3]), 3)
    with pytest.raises(TypeError, match="labels must be an integer tensor"):
        nme.fit(torch.randn(3, 2), torch.tensor([0.0, 1.0, 2.0]), 3)
    with pytest.raises(ModelConfigError, match="features must be a floating-point tensor of shape"):
        nme.fit(torch.ones(3, 2, dtype=torch.long), torch.tensor([0, 1, 2]), 3)
    with pytest.raises(ModelConfigError, match="one label per feature row"):
        nme.fit(torch.randn(3, 2), torch.tensor([0, 1]), 3)
    nme.fit(torch.randn(3, 2), torch.tensor([0, 1, 2]), 3)
    with pytest.raises(ModelConfigError, match=r"features must have shape \[B, 2\], got \[4, 3\]"):
        nme.scores(torch.randn(4, 3))
    with pytest.raises(ModelConfigError, match="missing must be one of"):
        NMEClassifier(missing="zero")


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    nme = NMEClassifier(missing="ignore")
    nme.fit(torch.randn(20, 4), torch.arange(20) % 4, 5)
    path = tmp_path / "nme.pt"
    torch.save(nme.state_dict(), path)
    other = NMEClassifier()
    other.load_state_dict(torch.load(path, weights_only=True))
    queries = torch.randn(7, 4)
    assert torch.equal(other.scores(queries), nme.scores(queries)) and other.missing == "ignore"
    empty = NMEClassifier()
    empty.load_state_dict(NMEClassifier().state_dict())
    assert empty.num_classes == 0
    with pytest.raises(ModelConfigError, match="state must be a dict with the keys"):
        other.load_state_dict({"means": None})


def test_normalized_class_means_counts_and_empty_rows():
    means, counts = normalized_class_means(torch.randn(5, 3), torch.tensor([0, 0, 1, 1, 1]), 3)
    assert counts.tolist() == [2, 3, 0]
    assert torch.equal(means[2], torch.zeros(3))
    torch.testing.assert_close(means[:2].norm(dim=1), torch.ones(2))
