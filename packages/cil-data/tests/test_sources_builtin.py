"""IDX reader, embedded subset and the Debian Fashion-MNIST files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from cil_data import DataError, load_embedded, load_fashion_mnist, read_idx
from cil_data.sources.fashion_mnist import DEFAULT_FASHION_MNIST_ROOT


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(("dtype", "code"), [(np.uint8, 0x08), (np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D)])
def test_idx_roundtrip(tmp_path: Path, gz: bool, dtype, code: int) -> None:
    a = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    if dtype == np.uint8:
        a = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    raw = _idx_bytes(a, code)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.shape == (2, 3, 5)
    np.testing.assert_array_equal(out, a)


def test_idx_bad_magic_and_truncation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(_idx_bytes(np.zeros((4, 4), np.uint8), 0x08)[:-3])
    with pytest.raises(DataError, match="header announces"):
        read_idx(short)
    notgz = tmp_path / "x.gz"
    notgz.write_bytes(b"plain bytes, not gzip")
    with pytest.raises(DataError, match="truncated or not gzip"):
        read_idx(notgz)


def test_embedded_subset() -> None:
    ds = load_embedded()
    assert ds.num_classes == 10 and ds.image_shape == (1, 28, 28)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert ds.train_counts().tolist() == [600] * 10
    assert torch.bincount(ds.test_labels, minlength=10).tolist() == [100] * 10
    assert 0.1 < ds.train_images.float().mean().item() / 255 < 0.5


def test_fashion_mnist_missing_folder_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "nowhere")
    (tmp_path / "partial").mkdir()
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path / "partial")


def test_fashion_mnist_from_small_idx_files(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8)
    y = (np.arange(20) % 10).astype(np.uint8)
    for prefix in ("train", "t10k"):
        (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(_idx_bytes(x, 0x08))
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(y, 0x08)))
    ds = load_fashion_mnist(tmp_path)
    assert torch.equal(ds.train_images[:, 0], torch.from_numpy(x)) and ds.train_labels.tolist() == y.tolist()


@pytest.mark.skipif(not Path(DEFAULT_FASHION_MNIST_ROOT).is_dir(), reason="Debian dataset-fashion-mnist not installed")
def test_full_fashion_mnist() -> None:
    ds = load_fashion_mnist()
    assert len(ds.train_labels) == 60000 and len(ds.test_labels) == 10000
    assert ds.train_counts().tolist() == [6000] * 10
    # the embedded subset is drawn from these files: every embedded image occurs in the full set
    emb = load_embedded()
    first = emb.train_images[:5].flatten(1)
    full = ds.train_images.flatten(1)
    for row in first:
        assert bool((full == row).all(1).any())
