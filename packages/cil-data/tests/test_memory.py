"""The exemplar memory: updates (herding/random, both budgets), and its HDF5 file."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cil_data import DataError, ExemplarMemory, MemoryBudget, MemoryFileError, herding_order
from cil_data.memory import SCHEMA_VERSION


def _phase(make_images, counts: list[int], first_label: int, seed: int, d: int = 5):
    labels = torch.cat([torch.full((n,), first_label + i) for i, n in enumerate(counts)]).long()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    labels = labels[perm]
    images = make_images(len(labels), (3, 4, 4), seed)
    feats = torch.randn(len(labels), d, generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64)
    return images, labels, feats


def test_growing_herding_memory_against_reference(make_images) -> None:
    mem = ExemplarMemory(MemoryBudget.per_class(4))
    x0, y0, f0 = _phase(make_images, [10, 3], 0, 0)
    mem.update(x0, y0, f0, 2)
    x1, y1, f1 = _phase(make_images, [6, 8], 2, 1)
    mem.update(x1, y1, f1, 4)
    assert mem.labels.tolist() == [0] * 4 + [1] * 3 + [2] * 4 + [3] * 4
    assert mem.original_counts.tolist() == [10, 3, 6, 8] and mem.num_classes == 4 and len(mem) == 15
    assert mem.class_counts(6).tolist() == [4, 3, 4, 4, 0, 0]
    # images of each class = the herding order of that class's samples (reference: herding_order per class)
    for x, y, f, classes in ((x0, y0, f0, (0, 1)), (x1, y1, f1, (2, 3))):
        for c in classes:
            idx = torch.nonzero(y == c).flatten()
            want = x[idx[herding_order(f[idx], 4)]]
            assert torch.equal(mem.images[mem.labels == c], want)
    assert mem.images.dtype == torch.uint8 and mem.images.device.type == "cpu"


@pytest.mark.parametrize("selection", ["herding", "random"])
def test_added_names_the_rows_of_the_update_that_became_the_last_exemplars(make_images, selection) -> None:
    mem = ExemplarMemory(MemoryBudget.total(12), selection)
    assert mem.added.tolist() == []
    for first, counts, seed in ((0, [10, 10], 2), (2, [2, 10], 3), (4, [1], 5)):
        x, y, f = _phase(make_images, counts, first, seed)
        mem.update(x, y, f, first + len(counts))
        k = len(mem.added)
        assert k == int((mem.labels >= first).sum())  # every exemplar of the new classes, and only those
        assert torch.equal(mem.images[len(mem) - k:], x[mem.added])
        assert torch.equal(mem.labels[len(mem) - k:], y[mem.added])
        assert mem.added.dtype == torch.int64


def test_total_budget_shrinks_keeping_the_first_k(make_images) -> None:
    mem = ExemplarMemory(MemoryBudget.total(12))
    x0, y0, f0 = _phase(make_images, [10, 10], 0, 2)
    mem.update(x0, y0, f0, 2)
    before = {c: mem.images[mem.labels == c].clone() for c in (0, 1)}
    assert mem.class_counts().tolist() == [6, 6]
    x1, y1, f1 = _phase(make_images, [2, 10], 2, 3)
    mem.update(x1, y1, f1, 4)
    # 12 over 4 classes, class 2 has only 2: water filling gives [4, 3, 2, 3]
    assert mem.class_counts().tolist() == [4, 3, 2, 3]
    for c, k in ((0, 4), (1, 3)):
        assert torch.equal(mem.images[mem.labels == c], before[c][:k])


def test_random_selection_is_seeded_and_uniform(make_images) -> None:
    x, y, _ = _phase(make_images, [20, 20], 0, 4)
    a = ExemplarMemory(MemoryBudget.per_class(5), "random", seed=3)
    b = ExemplarMemory(MemoryBudget.per_class(5), "random", seed=3)
    c = ExemplarMemory(MemoryBudget.per_class(5), "random", seed=4)
    for m in (a, b, c):
        m.update(x, y, None, 2)
    assert a.equals(b) and not torch.equal(a.images, c.images)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    d, e = ExemplarMemory(MemoryBudget.per_class(5), "random"), ExemplarMemory(MemoryBudget.per_class(5), "random")
    d.update(x, y, None, 2, generator=g1)
    e.update(x, y, None, 2, generator=g2)
    assert d.equals(e)
    # every sample of a class is equally likely to be kept
    hits = torch.zeros(40)
    flat = x.flatten(1)
    for seed in range(200):
        m = ExemplarMemory(MemoryBudget.per_class(5), "random", seed=seed)
        m.update(x, y, None, 2)
        kept = (m.images.flatten(1)[:, None, :] == flat[None]).all(2).any(0)
        hits += kept
    assert hits.sum() == 200 * 10 and hits.min() > 25 and hits.max() < 75  # ≈ 50 each


def test_update_errors(make_images) -> None:
    x, y, f = _phase(make_images, [5, 5], 0, 5)
    mem = ExemplarMemory(MemoryBudget.per_class(2))
    with pytest.raises(DataError, match="needs features"):
        mem.update(x, y, None, 2)
    with pytest.raises(DataError, match="one row per image"):
        mem.update(x, y, f[:3], 2)
    with pytest.raises(DataError, match="out of range"):
        mem.update(x, y + 5, f, 2)
    with pytest.raises(DataError, match="no sample"):
        mem.update(x, y, f, 3)
    with pytest.raises(DataError, match="uint8"):
        mem.update(x.float(), y, f, 2)
    mem.update(x, y, f, 2)
    with pytest.raises(DataError, match="must exceed"):
        mem.update(x, y, f, 2)
    with pytest.raises(DataError, match="new classes 2..3 only"):
        mem.update(x, y + 1, f, 4)
    with pytest.raises(DataError, match="per sample"):
        mem.update(make_images(10, (3, 5, 5)), y + 2, f, 4)
    with pytest.raises(DataError, match="smaller than the 3 classes"):
        ExemplarMemory(MemoryBudget.total(2)).update(x, torch.arange(10) % 3, f, 3)
    with pytest.raises(DataError, match="selection"):
        ExemplarMemory(MemoryBudget.per_class(2), "kmeans")
    with pytest.raises(DataError, match="MemoryBudget"):
        ExemplarMemory(20)


def _memory(make_images, seed: int = 0, n: int = 40) -> ExemplarMemory:
    x, y, f = _phase(make_images, [n // 2, n - n // 2], 0, seed)
    mem = ExemplarMemory(MemoryBudget.total(30))
    mem.update(x, y, f, 2)
    mem.class_order = [1, 0]
    return mem


def test_save_load_roundtrip(tmp_path: Path, make_images) -> None:
    mem = _memory(make_images)
    path = tmp_path / "memory.h5"
    mem.save(path)
    loaded = ExemplarMemory.load(path, expect_class_order=[1, 0])
    assert loaded.equals(mem) and loaded.budget == mem.budget and loaded.selection == "herding"
    assert loaded.images.dtype == torch.uint8 and loaded.labels.dtype == torch.int64
    assert [p.name for p in tmp_path.iterdir()] == ["memory.h5"]  # no temporary file left
    assert loaded.added.tolist() == []  # the last update's rows are not saved
    empty = ExemplarMemory(MemoryBudget.per_class(3), "random")
    empty.save(tmp_path / "empty.h5")
    assert ExemplarMemory.load(tmp_path / "empty.h5").equals(empty)
    # a loaded memory keeps growing like the original
    x, y, f = _phase(make_images, [7], 2, 11)
    mem.update(x, y, f, 3)
    loaded.update(x, y, f, 3)
    assert loaded.equals(mem)


def test_refuses_corrupt_foreign_and_mismatching_files(tmp_path: Path, make_images) -> None:
    mem = _memory(make_images)
    path = tmp_path / "m.h5"
    mem.save(path)
    with pytest.raises(MemoryFileError, match="class order"):
        ExemplarMemory.load(path, expect_class_order=[0, 1])

    flipped = tmp_path / "flipped.h5"
    flipped.write_bytes(path.read_bytes())
    with h5py.File(flipped, "r+") as f:
        f["images"][0, 0, 0, 0] = (int(f["images"][0, 0, 0, 0]) + 1) % 256
    with pytest.raises(MemoryFileError, match="checksum mismatch"):
        ExemplarMemory.load(flipped)

    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(MemoryFileError, match="corrupt"):
        ExemplarMemory.load(truncated)

    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(MemoryFileError, match="cannot be read"):
        ExemplarMemory.load(text)

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["images"] = np.zeros((1, 3, 2, 2), np.uint8)
    with pytest.raises(MemoryFileError, match="not a cil exemplar-memory file"):
        ExemplarMemory.load(foreign)

    future = tmp_path / "future.h5"
    future.write_bytes(path.read_bytes())
    with h5py.File(future, "r+") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(MemoryFileError, match="schema version"):
        ExemplarMemory.load(future)

    meta = tmp_path / "meta.h5"
    meta.write_bytes(path.read_bytes())
    with h5py.File(meta, "r+") as f:
        m = json.loads(f.attrs["meta"])
        m["budget"]["size"] = 999
        f.attrs["meta"] = json.dumps(m, sort_keys=True)
    with pytest.raises(MemoryFileError, match="checksum"):
        ExemplarMemory.load(meta)

    with pytest.raises(FileNotFoundError, match="no exemplar memory"):
        ExemplarMemory.load(tmp_path / "absent.h5")
    mem.save(tmp_path / "new" / "folder" / "m.h5")  # missing folders are created
    assert ExemplarMemory.load(tmp_path / "new" / "folder" / "m.h5").equals(mem)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="cannot be created"):
        mem.save(tmp_path / "file" / "m.h5")


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path: Path, make_images, monkeypatch) -> None:
    old = _memory(make_images, 0)
    new = _memory(make_images, 1)
    path = tmp_path / "m.h5"
    old.save(path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", boom)
    with pytest.raises(OSError, match="disk full"):
        new.save(path)
    monkeypatch.undo()
    assert ExemplarMemory.load(path).equals(old)
    assert [p.name for p in tmp_path.iterdir()] == ["m.h5"]
