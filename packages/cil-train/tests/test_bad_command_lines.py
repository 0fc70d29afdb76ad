"""Every configuration error the command line can meet ends with exit code 2 and one readable paragraph
of our own (``cil-train: error: ...``), never a traceback: a table of bad command lines, each with the
words its message must contain. Bad data files of every source kind are made here, in a temporary folder.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cil_train import RunConfig
from cil_train.cli import main


def _npz(path: Path, **arrays) -> Path:
    g = np.random.default_rng(0)
    base = dict(x_train=g.integers(0, 256, (12, 16, 16), dtype=np.uint8), y_train=np.repeat(np.arange(4), 3),
                x_test=g.integers(0, 256, (8, 16, 16), dtype=np.uint8), y_test=np.repeat(np.arange(4), 2))
    base.update(arrays)
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad")
    f: dict[str, Path] = {}
    (d / "junk.npz").write_text("this is not an npz file\n")
    f["npz_not_zip"] = d / "junk.npz"
    good = _npz(d / "good.npz")
    f["npz_truncated"] = d / "truncated.npz"
    f["npz_truncated"].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    f["npz_missing_key"] = _npz(d / "missing.npz", y_test=None)
    f["npz_negative_label"] = _npz(d / "neg.npz", y_train=np.array([0, 1, 2, 3] * 2 + [-1, 1, 2, 3]))
    f["npz_test_label_unknown"] = _npz(d / "testlab.npz", y_test=np.array([0, 1, 2, 3, 0, 1, 2, 9]))
    f["npz_size_mismatch"] = _npz(d / "sizes.npz", x_test=np.zeros((8, 12, 12), np.uint8))
    f["npz_float_images"] = _npz(d / "float.npz", x_train=np.zeros((12, 16, 16), np.float32))
    f["npz_label_count"] = _npz(d / "count.npz", y_train=np.arange(5))
    f["npz_pickled"] = d / "pickled.npz"
    with zipfile.ZipFile(f["npz_pickled"], "w") as z:
        buf = io.BytesIO()
        np.save(buf, np.array([{"a": 1}] * 12, dtype=object), allow_pickle=True)
        z.writestr("x_train.npy", buf.getvalue())
        for k in ("y_train", "x_test", "y_test"):
            buf = io.BytesIO()
            np.save(buf, np.zeros(4, np.int64))
            z.writestr(f"{k}.npy", buf.getvalue())
    # CIFAR: an empty folder, and a folder whose batch files are garbage
    (d / "cifar_empty").mkdir()
    f["cifar_empty"] = d / "cifar_empty"
    cifar = d / "cifar_garbage" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (cifar / name).write_bytes(b"\x00garbage" * 10)
    f["cifar_garbage"] = d / "cifar_garbage"
    cifar100 = d / "cifar100_as_10" / "cifar-100-python"
    cifar100.mkdir(parents=True)
    for name in ("train", "test", "meta"):
        (cifar100 / name).write_bytes(pickle.dumps({b"nothing": 1}))
    f["cifar100_wrong_keys"] = d / "cifar100_as_10"
    # Fashion-MNIST: an empty folder, and IDX files with a bad magic number
    (d / "fm_empty").mkdir()
    f["fm_empty"] = d / "fm_empty"
    fm = d / "fm_garbage"
    fm.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (fm / name).write_bytes(b"\x13\x37" * 20)
        (fm / f"{name}.gz").write_bytes(b"\x13\x37" * 20)
    f["fm_garbage"] = fm
    # image folders: empty, no val/test split, a corrupt image
    (d / "if_empty").mkdir()
    f["if_empty"] = d / "if_empty"
    (d / "if_no_val" / "train" / "cat").mkdir(parents=True)
    (d / "if_no_val" / "train" / "cat" / "a.png").write_bytes(b"not a png")
    f["if_no_val"] = d / "if_no_val"
    for split in ("train", "val"):
        (d / "if_corrupt" / split / "cat").mkdir(parents=True)
        (d / "if_corrupt" / split / "cat" / "a.png").write_bytes(b"not a png at all")
    f["if_corrupt"] = d / "if_corrupt"
    # run folders for --resume
    (d / "not_a_folder").write_text("x")
    f["a_file"] = d / "not_a_folder"
    (d / "resume_bad_json").mkdir()
    (d / "resume_bad_json" / "config.json").write_text('{"method": "dgr", "epo')
    f["resume_bad_json"] = d / "resume_bad_json"
    (d / "resume_bad_value").mkdir()
    (d / "resume_bad_value" / "config.json").write_text(json.dumps({**RunConfig().to_dict(), "epochs": -3}))
    f["resume_bad_value"] = d / "resume_bad_value"
    (d / "resume_ok").mkdir()
    (d / "resume_ok" / "config.json").write_text(json.dumps(RunConfig().to_dict()))
    f["resume_ok"] = d / "resume_ok"
    return f


# (argv, words the message must contain); "{name}" is replaced by the path of files[name]
BAD = [
    # methods, presets, method options
    (["--method", "nope"], ["--method", "'nope'", "dgr"]),
    (["--preset", "cifar1000"], ["--preset", "cifar100-lt-lfs10"]),
    (["--preset", "cifar100-lt-lfs10"], ["--data-root"]),
    (["--method", "dgr", "--ssil-batch-new", "16"], ["--ssil-batch-new", "ssil", "--method dgr"]),
    (["--method", "icarl", "--kd-temperature", "0"], ["--kd-temperature"]),
    (["--method", "ssil", "--memory-per-class", "0"], ["ssil", "--memory-per-class"]),
    (["--method", "lwf", "--memory-total", "200"], ["lwf", "exemplar-free", "--memory-total"]),
    (["--memory-per-class", "5", "--memory-total", "50"], ["--memory-per-class", "--memory-total"]),
    (["--memory-total", "-5"], ["--memory-total"]),
    # model and training options
    (["--backbone", "vgg99"], ["--backbone", "'vgg99'", "resnet32"]),
    (["--epochs", "0"], ["--epochs"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--lr", "-0.1"], ["--lr"]),
    (["--lr-decay", "2"], ["--lr-decay"]),
    (["--momentum", "1.5"], ["--momentum"]),
    (["--threads", "0"], ["--threads"]),
    (["--checkpoint-every", "-1"], ["--checkpoint-every"]),
    (["--lr-schedule", "step"], ["--lr-steps"]),
    (["--lr-schedule", "step", "--lr-steps", "50", "--epochs", "10"], ["--lr-steps", "1..9"]),
    (["--amp", "fp16", "--device", "cpu"], ["--amp fp16", "CUDA"]),
    (["--method", "dgr", "--amp", "fp16", "--device", "cuda"], ["--amp fp16", "--method dgr", "loss scaling",
                                                                "--amp bf16"]),
    (["--method", "podnet-bsce", "--amp", "fp16", "--device", "cuda"], ["--amp fp16", "podnet-bsce", "clamp"]),
    (["--method", "bsce-meta", "--amp", "fp16", "--device", "cuda"], ["--amp fp16", "bsce-meta", "meta-gradient"]),
    (["--amp", "int4"], ["--amp", "bf16"]),
    (["--device", "tpu"], ["--device", "'tpu'"]),
    # protocol
    (["--imbalance", "0.5"], ["--imbalance", "≥ 1"]),
    (["--profile", "linear"], ["--profile", "exp", "step"]),
    (["--order", "sideways"], ["--order", "seed1993", "tail-first"]),
    (["--order", "0,1,2,3,4,5,6,7,8,99"], ["--order", "99"]),
    (["--order", "0,0,1,2,3,4,5,6,7,8"], ["--order"]),
    (["--order", "0,1,2"], ["--order", "10"]),
    (["--increments", "2,2"], ["--increments", "10"]),
    (["--phases", "11"], ["--phases", "10"]),
    (["--increments", "5,5", "--base-classes", "5"], ["--increments", "--base-classes"]),
    (["--image-size", "0"], ["--image-size"]),
    # data sources and files
    (["--data", "cifar100"], ["--data-root"]),
    (["--data", "npz", "--data-root", "{missing}"], ["--data-root", "no such .npz file"]),
    (["--data", "npz", "--data-root", "{npz_not_zip}"], ["junk.npz", "not an .npz file", "zip"]),
    (["--data", "npz", "--data-root", "{npz_truncated}"], ["truncated.npz"]),
    (["--data", "npz", "--data-root", "{npz_missing_key}"], ["missing.npz", "y_test"]),
    (["--data", "npz", "--data-root", "{npz_negative_label}"], ["neg.npz", "label"]),
    (["--data", "npz", "--data-root", "{npz_test_label_unknown}"], ["testlab.npz", "no training image"]),
    (["--data", "npz", "--data-root", "{npz_size_mismatch}"], ["sizes.npz", "(1, 12, 12)", "differ"]),
    (["--data", "npz", "--data-root", "{npz_float_images}"], ["float.npz", "uint8"]),
    (["--data", "npz", "--data-root", "{npz_label_count}"], ["count.npz", "label"]),
    (["--data", "npz", "--data-root", "{npz_pickled}"], ["pickled.npz", "pickle"]),
    (["--data", "cifar10", "--data-root", "{cifar_empty}"], ["--data cifar10", "cifar-10-batches-py"]),
    (["--data", "cifar10", "--data-root", "{cifar_garbage}"], ["--data cifar10", "cifar-10-batches-py", "not a readable CIFAR pickle"]),
    (["--data", "cifar100", "--data-root", "{cifar100_wrong_keys}"], ["--data cifar100", "cifar-100-python"]),
    (["--data", "fashion-mnist", "--data-root", "{fm_empty}"], ["--data fashion-mnist", "fm_empty"]),
    (["--data", "fashion-mnist", "--data-root", "{fm_garbage}"], ["--data fashion-mnist", "IDX"]),
    (["--data", "imagefolder", "--data-root", "{if_empty}"], ["--data imagefolder", "train"]),
    (["--data", "imagefolder", "--data-root", "{if_no_val}"], ["--data imagefolder", "val/"]),
    (["--data", "imagefolder", "--data-root", "{if_corrupt}", "--phases", "1"], ["--data imagefolder", "a.png"]),
    # run folders
    (["--out", "{a_file}"], ["--out", "not a folder"]),
    (["--resume", "{missing}"], ["--resume", "config.json"]),
    (["--resume", "{resume_bad_json}"], ["config.json", "damaged", "no readable checkpoint"]),
    (["--resume", "{resume_bad_value}"], ["config.json", "damaged", "--epochs"]),
    (["--resume", "{resume_ok}", "--epochs", "3"], ["--resume", "--epochs", "cannot be changed"]),
]


@pytest.mark.parametrize(("argv", "words"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_command_line_exits_2_with_one_readable_message(argv, words, files, tmp_path, capsys):
    paths = {**{k: str(v) for k, v in files.items()}, "missing": str(tmp_path / "missing" / "nothing.npz")}
    argv = [a.format(**paths) if a.startswith("{") else a for a in argv]
    if "--out" not in argv and "--resume" not in argv:
        argv += ["--out", str(tmp_path / "run")]
    code = main(argv + ["--progress", "none"] if "--resume" not in argv or "--epochs" in argv else argv)
    err = capsys.readouterr().err
    flat = " ".join(err.split())
    assert code == 2, err
    assert err.startswith("cil-train: error: ") and "Traceback" not in err, err
    assert err.count("cil-train: error:") == 1 and "warning" not in err, err
    for word in words:
        assert word in flat, (word, flat)
    assert not (tmp_path / "run").exists()  # nothing is left behind by a refused start


def test_the_table_is_long_enough():
    assert len(BAD) >= 30
