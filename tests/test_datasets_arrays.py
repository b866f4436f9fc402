"""MNIST, Fashion-MNIST, CIFAR-10/100 and SVHN loaders on tiny files in the real formats.

The fixtures fill every pixel of a class-k image with ``pixel_value(k)``, so the
label the loader assigns to each test image can be checked against its content.
"""

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from robustad.cli import main
from robustad.datasets import fixtures as fx
from robustad.datasets import load_dataset
from robustad.errors import UserError


def true_classes(x: torch.Tensor) -> np.ndarray:
    """Class of each fixture image from its (constant) pixel value."""
    values = np.rint(x.flatten(1)[:, 0].numpy() * 255).astype(int)
    return (values - 5) // 10


def check_one_class(data, normal: int, n_train: int, n_test: int, n_normal: int, chw) -> None:
    assert data.train_x.shape == (n_train, *chw) and data.train_x.dtype == torch.float32
    assert data.test_x.shape == (n_test, *chw) and data.test_x.dtype == torch.float32
    assert data.test_y.dtype == torch.int64 and data.test_y.shape == (n_test,)
    # Every training image is of the normal class, and its pixels are exactly k-th grey / 255.
    assert (true_classes(data.train_x) == normal).all()
    assert torch.equal(data.train_x, torch.full_like(data.train_x, fx.pixel_value(normal) / 255))
    # Test labels: 0 exactly for images of the normal class.
    np.testing.assert_array_equal(data.test_y.numpy(), (true_classes(data.test_x) != normal).astype(int))
    assert int((data.test_y == 0).sum()) == n_normal
    assert 0.0 <= float(data.test_x.min()) and float(data.test_x.max()) <= 1.0
    assert data.normal_class == normal and data.test_masks is None


def cli_error(capsys, *args) -> str:
    """Run ``bench run`` on a dataset and return stderr; asserts exit status 2."""
    out = Path(args[-1])
    argv = ["run", "--methods", "deepsvdd", "--attacks", "pgd", "--classes", "0", "--quiet",
            "--datasets", args[0], "--data-root", str(args[1]), "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    return capsys.readouterr().err


# -- MNIST ------------------------------------------------------------------------------
def test_mnist_idx_gz_in_torchvision_layout(tmp_path):
    fx.write_mnist(tmp_path, per_class=(3, 2))
    data = load_dataset("mnist", 3, str(tmp_path))
    check_one_class(data, 3, n_train=3, n_test=20, n_normal=2, chw=(1, 28, 28))
    assert data.info["source"] == str(tmp_path / "MNIST" / "raw")


def test_mnist_uncompressed_files_as_torchvision_extracts_them(tmp_path):
    fx.write_mnist(tmp_path, per_class=(2, 1), gz=False, folder="mnist")
    data = load_dataset("mnist", 9, str(tmp_path))
    check_one_class(data, 9, n_train=2, n_test=10, n_normal=1, chw=(1, 28, 28))


def test_mnist_missing_names_folder_and_download_flag(tmp_path, capsys):
    err = cli_error(capsys, "mnist", tmp_path / "nothing", tmp_path / "out")
    assert str(tmp_path / "nothing" / "MNIST" / "raw") in err and "--download" in err
    assert "train-images-idx3-ubyte" in err
    assert not (tmp_path / "out" / "checkpoints").exists() or not any(
        (tmp_path / "out" / "checkpoints").iterdir()
    )


def test_download_fetches_only_when_asked_and_names_a_failure(tmp_path, monkeypatch):
    import torchvision

    calls = []

    class FakeMNIST:  # torchvision's downloader, writing the files where torchvision would
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            fx.write_mnist(Path(root), per_class=(2, 1))

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    with pytest.raises(UserError, match="MNIST not found"):
        load_dataset("mnist", 0, str(tmp_path), download=False)
    assert calls == []  # nothing is fetched without --download
    data = load_dataset("mnist", 0, str(tmp_path), download=True)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert data.train_x.shape == (2, 1, 28, 28) and data.info["source"] == str(tmp_path / "MNIST" / "raw")

    class Offline:
        def __init__(self, root, **kwargs):
            raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "SVHN", Offline)
    with pytest.raises(UserError, match=r"downloading SVHN into .* failed \(network unreachable\)"):
        load_dataset("svhn", 0, str(tmp_path / "empty"), download=True)


def test_mnist_truncated_file_is_named(tmp_path):
    d = fx.write_mnist(tmp_path, per_class=(2, 1))
    f = d / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(f.read_bytes())
    f.write_bytes(gzip.compress(raw[:-100]))  # a valid gzip of a short IDX payload
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz is truncated"):
        load_dataset("mnist", 0, str(tmp_path))
    f.write_bytes(gzip.compress(raw)[:50])  # a cut gzip stream
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz is corrupt or truncated"):
        load_dataset("mnist", 0, str(tmp_path))


# -- Fashion-MNIST ----------------------------------------------------------------------------
def test_fmnist_reads_idx_files_written_by_the_test(tmp_path):
    fx.write_fmnist(tmp_path / "fm", per_class=(4, 3))
    data = load_dataset("fmnist", 6, str(tmp_path / "fm"))
    check_one_class(data, 6, n_train=4, n_test=30, n_normal=3, chw=(1, 28, 28))
    assert data.class_name == "Shirt"


def test_fmnist_mismatched_files_are_an_error(tmp_path):
    d = fx.write_fmnist(tmp_path / "fm", per_class=(2, 1))
    from robustad.datasets.idx import write_idx

    write_idx(d / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))  # 5 labels for 20 images
    with pytest.raises(UserError, match="do not match each other"):
        load_dataset("fmnist", 0, str(d))


DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fmnist_real_debian_files():
    data = load_dataset("fmnist", 0)
    assert data.info["source"] == str(DEBIAN)
    assert data.train_x.shape == (6000, 1, 28, 28) and data.train_x.dtype == torch.float32
    assert data.test_x.shape == (10000, 1, 28, 28)
    assert int((data.test_y == 0).sum()) == 1000 and int(data.test_y.sum()) == 9000
    assert float(data.train_x.min()) == 0.0 and float(data.train_x.max()) == 1.0
    assert data.class_name == "T-shirt/top"


# -- CIFAR ------------------------------------------------------------------------------------
def test_cifar10_pickles(tmp_path):
    fx.write_cifar10(tmp_path, per_class=(5, 2))
    data = load_dataset("cifar10", 4, str(tmp_path))
    check_one_class(data, 4, n_train=5, n_test=20, n_normal=2, chw=(3, 32, 32))
    assert data.class_name == "deer"


def test_cifar10_channel_order_matches_torchvision(tmp_path):
    """The pickle stores 1024 red, then green, then blue values per image (row-major)."""
    d = fx.write_cifar10(tmp_path, per_class=(1, 1))
    with open(d / "test_batch", "rb") as fh:
        batch = pickle.load(fh)
    x = batch[b"data"].copy()
    x[0] = np.arange(3072) % 251  # a pattern that tells channels, rows and columns apart
    batch[b"data"] = x
    with open(d / "test_batch", "wb") as fh:
        pickle.dump(batch, fh, protocol=2)
    data = load_dataset("cifar10", 0, str(tmp_path))
    img = np.rint(data.test_x[0].numpy() * 255).astype(int)  # (3,32,32)
    c, r, col = 2, 5, 7
    assert img[c, r, col] == (c * 1024 + r * 32 + col) % 251


def test_cifar100_uses_the_20_coarse_labels(tmp_path):
    fx.write_cifar100(tmp_path, per_class=(2, 1))
    data = load_dataset("cifar100", 7, str(tmp_path))
    # 5 fine classes per superclass: 5 × 2 training and 5 × 1 normal test images out of 100.
    check_one_class(data, 7, n_train=10, n_test=100, n_normal=5, chw=(3, 32, 32))
    assert data.class_name == "insects"
    with pytest.raises(UserError, match="classes 0..19"):
        load_dataset("cifar100", 20, str(tmp_path))


def test_cifar_truncated_pickle_is_named(tmp_path, capsys):
    d = fx.write_cifar10(tmp_path, per_class=(2, 1))
    f = d / "data_batch_3"
    f.write_bytes(f.read_bytes()[:-300])
    with pytest.raises(UserError, match="data_batch_3 is corrupt, truncated"):
        load_dataset("cifar10", 0, str(tmp_path))
    err = cli_error(capsys, "cifar10", tmp_path, tmp_path / "out")
    assert "data_batch_3" in err and "fetch it again" in err


class _Touch:
    """Unpickling this would create a file: the restricted loader must refuse it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_cifar_pickle_with_code_is_refused_without_running_it(tmp_path):
    d = fx.write_cifar10(tmp_path, per_class=(1, 1))
    marker = tmp_path / "owned"
    with open(d / "test_batch", "wb") as fh:
        pickle.dump({"data": np.zeros((1, 3072), np.uint8), "labels": [_Touch(str(marker))]}, fh, protocol=2)
    with pytest.raises(UserError, match=r"io.open, which is not plain data"):
        load_dataset("cifar10", 0, str(tmp_path))
    assert not marker.exists()


def test_cifar_missing_names_folder_and_download_flag(tmp_path, capsys):
    err = cli_error(capsys, "cifar10", tmp_path, tmp_path / "out")
    assert str(tmp_path / "cifar-10-batches-py") in err and "--download" in err


def test_cifar_wrong_array_shape_is_an_error(tmp_path):
    d = fx.write_cifar10(tmp_path, per_class=(1, 1))
    with open(d / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((10, 1000), np.uint8), b"labels": list(range(10))}, fh, protocol=2)
    with pytest.raises(UserError, match=r"not uint8 \(N, 3072\)"):
        load_dataset("cifar10", 0, str(tmp_path))


# -- SVHN ---------------------------------------------------------------------------------------
def test_svhn_mat_files_map_label_10_to_digit_0(tmp_path):
    fx.write_svhn(tmp_path / "svhn", per_class=(3, 2))
    data = load_dataset("svhn", 0, str(tmp_path))
    check_one_class(data, 0, n_train=3, n_test=20, n_normal=2, chw=(3, 32, 32))
    data = load_dataset("svhn", 5, str(tmp_path))
    check_one_class(data, 5, n_train=3, n_test=20, n_normal=2, chw=(3, 32, 32))


def test_svhn_corrupt_mat_is_named(tmp_path, capsys):
    d = fx.write_svhn(tmp_path, per_class=(1, 1))
    f = d / "test_32x32.mat"
    f.write_bytes(f.read_bytes()[:200])
    os.utime(f, ns=(1, 1))  # a new signature, so no in-process cache hides the change
    with pytest.raises(UserError, match="test_32x32.mat is corrupt, truncated"):
        load_dataset("svhn", 0, str(tmp_path))
    err = cli_error(capsys, "svhn", tmp_path / "elsewhere", tmp_path / "out")
    assert "train_32x32.mat" in err and "--download" in err


class _Py2Array:
    """Pickles like an array from Python 2's numpy: numpy.core path, data as a (latin-1) str."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct

        a = self.array
        state = (1, a.shape, a.dtype, False, a.tobytes().decode("latin1"))
        return (_reconstruct, (np.ndarray, (0,), b"b"), state)


def test_cifar_python2_style_pickle_is_read(tmp_path):
    """The published files name numpy.core.multiarray and hold the pixels as a str."""
    d = fx.write_cifar10(tmp_path, per_class=(1, 1))
    x = np.repeat(np.array([fx.pixel_value(k) for k in range(10)], np.uint8)[:, None], 3072, 1)
    raw = pickle.dumps({"data": _Py2Array(x), "labels": list(range(10))}, protocol=2)
    raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in raw
    (d / "test_batch").write_bytes(raw)
    data = load_dataset("cifar10", 3, str(tmp_path))
    check_one_class(data, 3, n_train=1, n_test=10, n_normal=1, chw=(3, 32, 32))


def test_test_subset_is_balanced_seeded_and_leaves_training_alone():
    full = load_dataset("digits", 3)
    sub = load_dataset("digits", 3, test_subset=60)
    again = load_dataset("digits", 3, test_subset=60)
    assert len(sub.test_y) == 60 and int(sub.test_y.sum()) == 30
    assert torch.equal(sub.test_x, again.test_x) and torch.equal(sub.train_x, full.train_x)
    # every kept image is a test image of the full split with its own label
    rows = {tuple(r.flatten().tolist()): int(lbl) for r, lbl in zip(full.test_x, full.test_y)}
    assert all(rows[tuple(r.flatten().tolist())] == int(lbl) for r, lbl in zip(sub.test_x, sub.test_y))
    # fewer normals than n/2: all of them are kept and anomalies fill the rest
    n_normal = int((full.test_y == 0).sum())
    big = load_dataset("digits", 3, test_subset=2 * n_normal + 20)
    assert int((big.test_y == 0).sum()) == n_normal and len(big.test_y) == 2 * n_normal + 20
    assert load_dataset("digits", 3, test_subset=10**6).test_x.shape == full.test_x.shape
    with pytest.raises(UserError, match="test_subset"):
        load_dataset("digits", 3, test_subset=0)
