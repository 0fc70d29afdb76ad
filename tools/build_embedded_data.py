"""Build the embedded default data set of cil-data from the Debian package ``dataset-fashion-mnist``.

A class-stratified subset of Fashion-MNIST: for each of the 10 classes, ``--train-per-class``
training and ``--test-per-class`` test images drawn without replacement with
``numpy.random.default_rng(--seed)``, kept in the original file order. The result is written as a
compressed npz (keys ``x_train, y_train, x_test, y_test`` as uint8, ``classes``, ``sha256`` of the
four arrays, ``source_sha256`` of the four source files, ``seed``) next to the MIT licence notice.

    apt-get install -y dataset-fashion-mnist
    hatch run python tools/build_embedded_data.py            # rewrites the shipped file
    hatch run python tools/build_embedded_data.py --check    # verifies the shipped file is reproducible

The build is deterministic: the same source files and arguments give byte-identical arrays.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path

import numpy as np

from cil_data.sources.fashion_mnist import DEFAULT_FASHION_MNIST_ROOT, FASHION_MNIST_CLASSES, fashion_mnist_arrays

OUT_DIR = Path(__file__).resolve().parents[1] / "packages" / "cil-data" / "src" / "cil_data" / "embedded"
LICENCE = """Fashion-MNIST subset shipped with cil-data
===========================================

The file fashion_mnist_subset.npz holds 7,000 of the 70,000 images of Fashion-MNIST
(600 training and 100 test images per class, drawn with tools/build_embedded_data.py
from the Debian package dataset-fashion-mnist).

Fashion-MNIST: Han Xiao, Kashif Rasul, Roland Vollgraf. "Fashion-MNIST: a Novel Image
Dataset for Benchmarking Machine Learning Algorithms." arXiv:1708.07747, 2017.
https://github.com/zalandoresearch/fashion-mnist

The MIT License (MIT)

Copyright © 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this
software and associated documentation files (the "Software"), to deal in the Software
without restriction, including without limitation the rights to use, copy, modify, merge,
publish, distribute, sublicense, and/or sell copies of the Software, and to permit persons
to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED,
INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR
PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE
FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER
DEALINGS IN THE SOFTWARE.
"""


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of each class, drawn without replacement, returned in file order."""
    chosen = []
    for c in range(int(labels.max()) + 1):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            sys.exit(f"class {c} has only {len(idx)} images, fewer than --per-class {per_class}")
        chosen.append(rng.choice(idx, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def build(root: str, train_per_class: int, test_per_class: int, seed: int) -> dict[str, np.ndarray]:
    a = fashion_mnist_arrays(root)
    rng = np.random.default_rng(seed)
    tr = stratified_indices(a["train_labels"], train_per_class, rng)
    te = stratified_indices(a["test_labels"], test_per_class, rng)
    arrays = {
        "x_train": a["train_images"][tr].astype(np.uint8),
        "y_train": a["train_labels"][tr].astype(np.uint8),
        "x_test": a["test_images"][te].astype(np.uint8),
        "y_test": a["test_labels"][te].astype(np.uint8),
    }
    digest = hashlib.sha256()
    for key in ("x_train", "y_train", "x_test", "y_test"):
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    source = hashlib.sha256()
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        source.update(np.ascontiguousarray(a[key]).tobytes())
    arrays.update(
        classes=np.array(FASHION_MNIST_CLASSES),
        sha256=np.array(digest.hexdigest()),
        source_sha256=np.array(source.hexdigest()),
        seed=np.array(seed),
    )
    return arrays


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=DEFAULT_FASHION_MNIST_ROOT, help="folder with the Fashion-MNIST IDX files (default: %(default)s)")
    p.add_argument("--train-per-class", type=int, default=600)
    p.add_argument("--test-per-class", type=int, default=100)
    p.add_argument("--seed", type=int, default=1993)
    p.add_argument("--out", type=Path, default=OUT_DIR, help="output folder (default: the cil-data package)")
    p.add_argument("--check", action="store_true", help="rebuild in memory and compare with the file in --out")
    args = p.parse_args(argv)
    arrays = build(args.root, args.train_per_class, args.test_per_class, args.seed)
    target = args.out / "fashion_mnist_subset.npz"
    if args.check:
        shipped = np.load(target)
        same = all(np.array_equal(shipped[k], arrays[k]) for k in arrays)
        print(f"{target}: {'reproducible (identical arrays)' if same else 'DIFFERS from a fresh build'}")
        return 0 if same else 1
    args.out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    target.write_bytes(buf.getvalue())
    (args.out / "LICENSE-fashion-mnist.txt").write_text(LICENCE)
    print(
        f"wrote {target} ({target.stat().st_size / 1e6:.2f} MB): {len(arrays['y_train'])} train, "
        f"{len(arrays['y_test'])} test images, sha256 {arrays['sha256']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
