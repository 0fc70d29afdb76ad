"""CIFAR pickles, npz arrays and image folders built in tmp_path; channel statistics."""

from __future__ import annotations

import io
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cil_data import (
    DataError,
    MissingDependencyError,
    channel_stats,
    dataset_from_arrays,
    estimate_image_folder_bytes,
    load_cifar,
    load_image_folder,
    load_npz,
    open_image_folder,
)

GLYPHS = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "glyphs100.npz"


# ---------------------------------------------------------------------------------------- CIFAR
@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_layouts(tmp_path: Path, fake_cifar, num_classes: int, protocol: int) -> None:
    train, test = fake_cifar(tmp_path, num_classes, 3 * num_classes, num_classes, protocol=protocol)
    ds = load_cifar(tmp_path, num_classes)
    assert ds.name == f"cifar{num_classes}" and ds.image_shape == (3, 32, 32) and len(ds.mean) == 3
    assert torch.equal(ds.train_images.reshape(len(train["y"]), -1), torch.from_numpy(train["x"]))
    assert ds.train_labels.tolist() == train["y"] and ds.test_labels.tolist() == test["y"]
    assert ds.class_names[1] == "class1"
    inner = tmp_path / ("cifar-100-python" if num_classes == 100 else "cifar-10-batches-py")
    assert torch.equal(load_cifar(inner, num_classes).test_images, ds.test_images)  # the inner folder works too
    # one pixel: channel planes R, G, B of 32×32, row-major
    assert int(ds.train_images[0, 1, 2, 3]) == int(train["x"][0, 1024 + 2 * 32 + 3])


def test_cifar_missing_folder_says_where_to_put_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cifar-100-python.*extract it into"):
        load_cifar(tmp_path)
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_cifar(tmp_path, 10)
    with pytest.raises(DataError, match="num_classes must be 10"):
        load_cifar(tmp_path, 20)


def test_cifar_bad_contents(tmp_path: Path, fake_cifar) -> None:
    fake_cifar(tmp_path, 100, 200, 100)
    folder = tmp_path / "cifar-100-python"
    with open(folder / "train", "wb") as fh:
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [0, 1, 2, 100]}, fh)
    with pytest.raises(DataError, match="outside 0..99"):
        load_cifar(tmp_path)
    with open(folder / "train", "wb") as fh:
        pickle.dump({b"data": np.zeros((4, 1024), np.uint8), b"fine_labels": [0, 1, 2, 3]}, fh)
    with pytest.raises(DataError, match=r"\[N, 3072\]"):
        load_cifar(tmp_path)
    with open(folder / "train", "wb") as fh:
        pickle.dump({b"images": 1}, fh)
    with pytest.raises(DataError, match="missing key"):
        load_cifar(tmp_path)
    (folder / "train").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="not a readable CIFAR pickle"):
        load_cifar(tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_refuses_pickles_that_would_run_code(tmp_path: Path, fake_cifar) -> None:
    fake_cifar(tmp_path, 100, 200, 100)
    with open(tmp_path / "cifar-100-python" / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": _Evil()}, fh)
    with pytest.raises(DataError, match="refusing to load"):
        load_cifar(tmp_path)


# ------------------------------------------------------------------------------------------ npz
def test_npz_layouts_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (12, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "g.npz", x_train=grey, y_train=np.arange(12, dtype=np.int16) % 4, x_test=grey[:4],
             y_test=np.arange(4) % 4, classes=np.array(list("abcd")))
    ds = load_npz(tmp_path / "g.npz")
    assert ds.name == "g" and ds.image_shape == (1, 6, 6) and ds.class_names == list("abcd")
    assert ds.train_labels.dtype == torch.int64
    torch.testing.assert_close(torch.tensor(ds.mean), torch.tensor([grey.mean() / 255], dtype=torch.float32).double(), check_dtype=False)

    hwc = rng.integers(0, 256, (8, 5, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", x_train=hwc, y_train=np.arange(8) % 2, x_test=hwc, y_test=np.arange(8) % 2)
    dc = load_npz(tmp_path / "c.npz", name="colour", mean=(0.5,) * 3, std=(0.5,) * 3)
    assert dc.name == "colour" and dc.class_names == ["0", "1"] and dc.mean == (0.5,) * 3
    assert torch.equal(dc.train_images, torch.from_numpy(hwc).permute(0, 3, 1, 2))

    np.savez(tmp_path / "f.npz", x_train=grey.astype(np.float32), y_train=np.arange(12) % 4, x_test=grey, y_test=np.arange(12) % 4)
    with pytest.raises(DataError, match="uint8"):
        load_npz(tmp_path / "f.npz")
    np.savez(tmp_path / "k.npz", x_train=grey, y_train=np.arange(12) % 4)
    with pytest.raises(DataError, match=r"lacks the array\(s\) \['x_test', 'y_test'\]"):
        load_npz(tmp_path / "k.npz")
    np.savez(tmp_path / "l.npz", x_train=grey, y_train=np.arange(12) * 0.5, x_test=grey, y_test=np.arange(12))
    with pytest.raises(DataError, match="labels must be integers"):
        load_npz(tmp_path / "l.npz")
    np.savez(tmp_path / "s.npz", x_train=grey[:, :5], y_train=np.arange(12) % 4, x_test=grey, y_test=np.arange(12) % 4)
    with pytest.raises(DataError, match="differ in shape"):
        load_npz(tmp_path / "s.npz")
    np.savez(tmp_path / "e.npz", x_train=grey, y_train=np.arange(12) % 4 * 2, x_test=grey, y_test=np.arange(12) % 4)
    with pytest.raises(DataError, match="no training image"):
        load_npz(tmp_path / "e.npz")
    np.savez(tmp_path / "r.npz", x_train=grey, y_train=np.arange(12) % 4, x_test=grey, y_test=np.arange(12) % 4,
             classes=np.array(list("abc")))
    with pytest.raises(DataError, match="out of range"):
        load_npz(tmp_path / "r.npz")
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "missing.npz")
    with pytest.raises(DataError, match=r"\[N, H, W\]"):
        dataset_from_arrays("x", np.zeros((2, 4, 4, 4), np.uint8), np.zeros(2, int), np.zeros((1, 4, 4), np.uint8), np.zeros(1, int))


@pytest.mark.needs_shared
@pytest.mark.skipif(not GLYPHS.is_file(), reason="../shared/data/glyphs100.npz only exists for developers and CI")
def test_glyphs100() -> None:
    ds = load_npz(GLYPHS)
    assert ds.num_classes == 100 and ds.image_shape == (1, 32, 32)
    assert ds.train_counts().tolist() == [841] * 100 and len(ds.test_labels) == 21300
    assert ds.class_names[0] == "!" and abs(ds.mean[0] - 0.055) < 0.01


# --------------------------------------------------------------------------------- image folder
def _write_tree(root: Path, splits: dict[str, dict[str, int]], size=(12, 9)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, classes in splits.items():
        for name, n in classes.items():
            folder = root / split / name / "sub"
            folder.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(arr).save(folder / f"{i}.{'png' if i % 2 else 'bmp'}")
            (root / split / name / "notes.txt").write_text("ignored")


def test_image_folder_in_memory(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    from PIL import Image

    _write_tree(tmp_path, {"train": {"dog": 3, "cat": 2}, "val": {"cat": 1, "dog": 2}})
    ds = load_image_folder(tmp_path, image_size=8, num_workers=2)
    assert ds.class_names == ["cat", "dog"] and ds.name == tmp_path.name
    assert ds.train_images.shape == (5, 3, 8, 8) and ds.train_images.dtype == torch.uint8
    assert ds.train_labels.tolist() == [0, 0, 1, 1, 1] and ds.test_labels.tolist() == [0, 1, 1]
    # the first cat image by hand: shorter side (9) → 8, then centre crop of the width
    with Image.open(tmp_path / "train" / "cat" / "sub" / "0.bmp") as im:
        w, h = im.size
        ref = im.convert("RGB").resize((round(w * 8 / h), 8), Image.BILINEAR)
        left = (ref.size[0] - 8) // 2
        ref = np.asarray(ref.crop((left, 0, left + 8, 8))).transpose(2, 0, 1)
    assert torch.equal(ds.train_images[0], torch.from_numpy(ref.copy()))
    grey = load_image_folder(tmp_path, image_size=4, mode="L", resize="stretch")
    assert grey.image_shape == (1, 4, 4)
    assert estimate_image_folder_bytes(tmp_path, 8) == 8 * (3 * 64 + 8)
    with pytest.raises(DataError, match="open_image_folder"):
        load_image_folder(tmp_path, image_size=8, max_bytes=100)


def test_image_folder_lazy(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    _write_tree(tmp_path, {"train": {"a": 2, "b": 3}, "test": {"a": 1, "b": 1}})
    eager = load_image_folder(tmp_path, image_size=6)
    lazy = open_image_folder(tmp_path, image_size=6)
    assert lazy.num_classes == 2 and lazy.train_labels.tolist() == eager.train_labels.tolist()
    assert len(lazy.train) == 5 and lazy.image_shape == (3, 6, 6)
    x, y = lazy.train[3]
    assert torch.equal(x, eager.train_images[3]) and y == int(eager.train_labels[3])
    assert torch.equal(lazy.test.decode([1, 0]), eager.test_images[[1, 0]])
    loader = torch.utils.data.DataLoader(lazy.train, batch_size=2)
    xb, yb = next(iter(loader))
    assert xb.shape == (2, 3, 6, 6) and yb.tolist() == [0, 0]
    # a scenario runs on the lazy data set and decodes just a phase's images
    from cil_data import IncrementalScenario

    sc = IncrementalScenario(lazy, [1, 0], [1, 1])
    assert sc.phase(0).train_indices.tolist() == [2, 3, 4]
    x, y = sc.train_data(0)
    assert torch.equal(x, eager.train_images[[2, 3, 4]]) and y.tolist() == [0, 0, 0]
    xt, yt = sc.test_data(1)
    assert torch.equal(xt, eager.test_images[sc.phase(1).test_indices])
    with pytest.raises(DataError, match="images"):
        IncrementalScenario(type("LabelsOnly", (), {"train_labels": lazy.train_labels, "test_labels": lazy.test_labels,
                                                     "num_classes": 2})(), [1, 0], [1, 1]).train_data(0)


def test_image_folder_errors(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    with pytest.raises(DataError, match="no train/"):
        load_image_folder(tmp_path)
    _write_tree(tmp_path, {"train": {"a": 1, "b": 1}})
    with pytest.raises(DataError, match="neither val/ nor test/"):
        load_image_folder(tmp_path)
    _write_tree(tmp_path, {"val": {"c": 1}})
    with pytest.raises(DataError, match="no counterpart in train/"):
        load_image_folder(tmp_path)
    other = tmp_path / "other"
    _write_tree(other, {"train": {"a": 1, "b": 0}, "val": {"a": 1}})
    with pytest.raises(DataError, match=r"hold no image"):
        load_image_folder(other)
    broken = tmp_path / "broken"
    _write_tree(broken, {"train": {"a": 1}, "val": {"a": 1}})
    (broken / "train" / "a" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="bad.jpg: cannot decode"):
        load_image_folder(broken)
    with pytest.raises(DataError, match="mode"):
        load_image_folder(broken, mode="CMYK")


def test_missing_pillow_gives_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train = tmp_path / "train" / "a"
    train.mkdir(parents=True)
    (train / "x.png").write_bytes(b"\x89PNG")
    (tmp_path / "val").mkdir()
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import Image` raise ImportError
    with pytest.raises(MissingDependencyError, match="pip install pillow"):
        load_image_folder(tmp_path)


# ----------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("seed", range(3))
def test_channel_stats_against_float64(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import cil_data.stats as stats

    monkeypatch.setattr(stats, "_CHUNK_PIXELS", 50)  # several chunks
    x = torch.randint(0, 256, (17, 3, 5, 4), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    mean, std = channel_stats(x)
    xf = x.double().div(255).transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), xf.mean(1))
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), xf.std(1, unbiased=False))
    with pytest.raises(DataError, match="uint8"):
        channel_stats(x.float())


def test_npz_says_its_augmentation_and_a_non_npz_file_is_named(tmp_path: Path) -> None:
    x = np.zeros((4, 8, 8), dtype=np.uint8)
    y = np.array([0, 1, 0, 1])
    np.savez(tmp_path / "chars.npz", x_train=x, y_train=y, x_test=x, y_test=y, augment=np.array("crop"))
    assert load_npz(tmp_path / "chars.npz").augment == "crop"
    np.savez(tmp_path / "plain.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    assert load_npz(tmp_path / "plain.npz").augment == "crop,flip"
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=y, x_test=x, y_test=y, augment=np.array("mirror"))
    with pytest.raises(DataError, match="augment"):
        load_npz(tmp_path / "bad.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip archive at all")
    with pytest.raises(DataError, match="not an .npz file"):
        load_npz(junk)
