"""ImageNet-30, DAGM, ISIC 2018 and Cityscapes loaders on tiny files written in their real layouts.

The fixture writers (robustad/datasets/fixtures.py) encode what the loader must
recover: the class of an ImageNet-30 / ISIC image is its grey level
(``fx.class_grey``), DAGM defects are a white square under their label PNG (or a
white ellipse given only in ``Labels.txt``), Cityscapes ID frame ``i`` is grey
``10 + 20·i``.
"""

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from robustad.benchmark.store import Store
from robustad.cli import main
from robustad.datasets import dagm, images, load_dataset
from robustad.datasets import fixtures as fx
from robustad.datasets.imagenet30 import CLASSES as IN30
from robustad.errors import UserError

BOX_HALF = (slice(8, 16), slice(16, 24))  # fx.DEFECT_BOX after resizing 64 → 32


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTAD_CACHE_DIR", str(tmp_path / "cache"))
    images.clear_memory_cache()
    yield tmp_path / "cache" / "images"
    images.clear_memory_cache()


def run_cli(*argv) -> int:
    return main(["run", "--methods", "deepsvdd", "--attacks", "fgsm", "--quiet", *map(str, argv)])


def grey_class(x: torch.Tensor) -> list[int]:
    """The fixture class of each image from its mean grey level (inverse of fx.class_grey)."""
    return [round((float(v) * 255 - 8) / 8) for v in x.mean(dim=(1, 2, 3))]


def _truncate(p) -> None:
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


# -- ImageNet-30 ------------------------------------------------------------------------------------
def test_imagenet30_one_vs_rest_with_centre_crop(tmp_path):
    fx.write_imagenet30(tmp_path / "ImageNet30", train_classes=["acorn", "airliner"], per_class=(3, 2))
    data = load_dataset("imagenet30", "airliner", str(tmp_path), image_size=16)
    assert data.normal_class == 1 and data.class_name == "airliner"
    assert data.info["source"] == str(tmp_path / "ImageNet30")
    assert data.train_x.shape == (3, 3, 16, 16) and data.test_x.shape == (60, 3, 16, 16)
    # The white 8-px strips at the left and right edges are outside the centre crop.
    grey = fx.class_grey(1) / 255
    assert float((data.train_x - grey).abs().max()) <= 2 / 255
    assert float(data.test_x.amax()) <= (fx.class_grey(29) + 2) / 255
    assert grey_class(data.test_x) == [k for k in range(30) for _ in range(2)]
    assert data.test_y.tolist() == [int(k != 1) for k in range(30) for _ in range(2)]
    assert data.info["test_classes"][:4] == ["acorn", "acorn", "airliner", "airliner"]
    # The test split is shared by every normal class: decoded once, then served from memory.
    other = load_dataset("imagenet30", 0, str(tmp_path), image_size=16)
    assert other.info["cache"] == {"train": "decoded", "test": "memory"}
    assert torch.equal(other.test_x, data.test_x) and other.test_y.sum() == 58


def test_crop_resize_is_torchvisions_resize_256_centre_crop_224(tmp_path):
    tv = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(0)
    for w, h in ((300, 200), (181, 257)):
        path = tmp_path / f"{w}x{h}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        expected = np.asarray(tv.Compose([tv.Resize(256), tv.CenterCrop(224)])(Image.open(path)))
        assert np.array_equal(images.read_image(path, 224, "RGB", resize="crop"), expected)
        assert images.read_image(path, 224, "RGB").shape == (224, 224, 3)


def test_imagenet30_missing_class_corrupt_image_and_download(tmp_path, capsys):
    root = fx.write_imagenet30(tmp_path, train_classes=["acorn"], per_class=(2, 1))
    for f in (root / "one_class_test" / "volcano").iterdir():
        f.unlink()
    (root / "one_class_test" / "volcano").rmdir()
    with pytest.raises(UserError, match="one_class_test/volcano is missing"):
        load_dataset("imagenet30", "acorn", str(tmp_path), image_size=16)
    with pytest.raises(UserError, match="one_class_train/banjo is missing"):
        load_dataset("imagenet30", "banjo", str(tmp_path), image_size=16)
    fx.write_imagenet30(tmp_path, train_classes=["acorn"], per_class=(2, 1))
    _truncate(root / "one_class_test" / "goblet" / "goblet_000.JPEG")
    with pytest.raises(UserError, match=r"goblet/goblet_000.JPEG.*replace the file"):
        load_dataset("imagenet30", "acorn", str(tmp_path), image_size=16)
    assert [len(a) for a, _ in images._MEMORY.values()] == [2]  # the training set only, complete
    assert run_cli("--datasets", "imagenet30", "--classes", "acorn", "--data-root", tmp_path,
                   "--out", tmp_path / "o") == 2  # fmt: skip
    assert "goblet_000.JPEG" in capsys.readouterr().err
    assert run_cli("--datasets", "imagenet30", "--classes", "0", "--data-root", tmp_path / "none",
                   "--download", "--out", tmp_path / "o") == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "ImageNet-30 cannot be downloaded automatically" in err and "hendrycks/ss-ood" in err
    assert str(tmp_path / "none" / "ImageNet30") in err


# -- DAGM -----------------------------------------------------------------------------------------------
def test_dagm_one_class_split_labels_and_masks(tmp_path):
    fx.write_dagm(tmp_path / "DAGM", "Class3", train=(5, 2), test=(3, 3))
    data = load_dataset("dagm", "Class3", str(tmp_path), image_size=32)
    assert data.normal_class == 2 and data.class_name == "Class3"
    # Defective training images are left out; grey stays one channel.
    assert data.train_x.shape == (5, 1, 32, 32) and data.info["train_defective_left_out"] == 2
    assert float(data.train_x.max()) <= 140 / 255 + 1e-6  # texture only, no white defect
    assert data.test_x.shape == (6, 1, 32, 32) and data.test_y.tolist() == [0, 0, 0, 1, 1, 1]
    expected = torch.zeros(6, 32, 32)
    expected[3:, BOX_HALF[0], BOX_HALF[1]] = 1
    assert torch.equal(data.test_masks, expected)
    assert float(data.test_x[3:, 0, 9:15, 17:23].min()) == 1.0  # white under the mask


def test_dagm_ellipse_labels_give_the_ellipse_as_mask(tmp_path):
    fx.write_dagm(tmp_path, "Class1", train=(3, 0), test=(2, 3), ellipses=2)
    data = load_dataset("dagm", 0, str(tmp_path), image_size=32)
    assert data.test_y.tolist() == [0, 0, 1, 1, 1]
    # Centre (40.5, 24.5) 1-based = (40, 24) continuous, semi-axes 8 (x) and 4 (y), halved at 32 px.
    yy, xx = np.mgrid[0:32, 0:32] + 0.5
    ellipse = torch.from_numpy((((xx - 20) / 4) ** 2 + ((yy - 12) / 2) ** 2 <= 1).astype(np.float32))
    assert ellipse.sum() > 10
    assert torch.equal(data.test_masks[3], ellipse) and torch.equal(data.test_masks[4], ellipse)
    assert data.test_masks[2][BOX_HALF].min() == 1 and data.test_masks[:2].sum() == 0
    assert float(data.test_x[3, 0][ellipse == 1].mean()) > 0.85  # the painted ellipse is under the mask
    # A quarter turn swaps the axes (whichever way the angle turns).
    turned = dagm.ellipse_mask((8, 4, math.pi / 2, 40.5, 24.5), (64, 64), (32, 32))
    upright = (((xx - 20) / 2) ** 2 + ((yy - 12) / 4) ** 2 <= 1).astype(np.uint8)
    assert np.array_equal(turned, upright)


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda c: (c / "Test" / "Label" / "Labels.txt").unlink(),
            r"labels file .*Test/Label/Labels.txt is missing",
        ),
        (lambda c: _truncate(c / "Test" / "0002.PNG"), r"Test/0002.PNG.*replace the file"),
        (
            lambda c: (c / "Test" / "Label" / "0004_label.PNG").unlink(),
            "label image .*0004_label.PNG .* is missing",
        ),
        (
            lambda c: _append(c / "Train" / "Label" / "Labels.txt", "9 1\n"),
            "Train/Label/Labels.txt line 7 is not a DAGM label line",
        ),
        (
            lambda c: _append(c / "Test" / "Label" / "Labels.txt", "7 0 0007.PNG 0\n"),
            "image .*0007.PNG is missing",
        ),
    ],
)
def test_dagm_broken_class_is_named_and_exits_2(tmp_path, capsys, private_cache, damage, message):
    cls = fx.write_dagm(tmp_path, "Class1", train=(3, 2), test=(2, 2))
    damage(cls)
    with pytest.raises(UserError, match=message):
        load_dataset("dagm", "Class1", str(tmp_path), image_size=32)
    assert not private_cache.exists() or not list(private_cache.iterdir())
    assert run_cli("--datasets", "dagm", "--classes", "Class1", "--data-root", tmp_path,
                   "--out", tmp_path / "o") == 2  # fmt: skip
    assert "bench: error:" in capsys.readouterr().err


def test_dagm_missing_class_and_download_name_the_source(tmp_path, capsys):
    fx.write_dagm(tmp_path, "Class1", train=(2, 0), test=(1, 1))
    assert run_cli("--datasets", "dagm", "--classes", "Class4", "--data-root", tmp_path, "--download",
                   "--out", tmp_path / "o") == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "DAGM class 'Class4' not found" in err and str(tmp_path / "DAGM2007") in err
    assert "DAGM 2007 cannot be downloaded automatically" in err and "hci.iwr.uni-heidelberg.de" in err


def _append(path, text: str) -> None:
    path.write_text(path.read_text() + text)


# -- ISIC 2018 ----------------------------------------------------------------------------------------------
def test_isic2018_nv_is_normal_and_labels_come_from_the_csv(tmp_path):
    fx.write_isic2018(tmp_path / "ISIC2018", {"Training": {"MEL": 2, "NV": 4, "BKL": 1},
                                              "Test": {"NV": 2, "MEL": 1, "DF": 1, "VASC": 1},
                                              "Validation": {"BCC": 1, "NV": 1}})  # fmt: skip
    data = load_dataset("isic2018", "NV", str(tmp_path), image_size=16)
    assert data.class_name == "NV" and data.info["test_split"] == "test"
    assert data.train_x.shape == (4, 3, 16, 16)
    assert grey_class(data.train_x) == [1] * 4  # NV is diagnosis 1 of MEL,NV,BCC,...
    assert data.test_y.tolist() == [0, 0, 1, 1, 1]
    assert grey_class(data.test_x) == [1, 1, 0, 5, 6]
    assert data.info["test_diagnoses"] == ["NV", "NV", "MEL", "DF", "VASC"]
    val = load_dataset("isic2018", 0, str(tmp_path), image_size=16, test_split="validation")
    assert val.test_y.tolist() == [1, 0] and grey_class(val.test_x) == [2, 1]
    with pytest.raises(UserError, match="no class 'MEL'"):
        load_dataset("isic2018", "MEL", str(tmp_path), image_size=16)


def test_isic2018_missing_ground_truth_bad_rows_and_download(tmp_path, capsys):
    root = fx.write_isic2018(tmp_path)
    gt = root / "ISIC2018_Task3_Test_GroundTruth" / "ISIC2018_Task3_Test_GroundTruth.csv"
    rows = gt.read_text()
    gt.unlink()
    assert run_cli("--datasets", "isic2018", "--data-root", tmp_path, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert f"the ground-truth file {gt} is missing" in err and "challenge.isic-archive.com" in err
    gt.write_text(rows.replace("ISIC_0024313,0.0,1.0", "ISIC_0024313,1.0,1.0"))
    with pytest.raises(UserError, match=r"line 2: exactly one diagnosis must be 1"):
        load_dataset("isic2018", 0, str(tmp_path), image_size=16)
    gt.write_text(rows)
    (root / "ISIC2018_Task3_Training_Input" / "ISIC_0024307.jpg").unlink()
    with pytest.raises(
        UserError, match=r"ISIC_0024307.jpg \(named in .*Training_GroundTruth.csv line 3\) is missing"
    ):
        load_dataset("isic2018", 0, str(tmp_path), image_size=16)
    with pytest.raises(UserError, match="test_split must be test or validation"):
        load_dataset("isic2018", 0, str(tmp_path), image_size=16, test_split="train")
    assert run_cli("--datasets", "isic2018", "--data-root", tmp_path / "none", "--download",
                   "--out", tmp_path / "o") == 2  # fmt: skip
    assert "ISIC 2018 cannot be downloaded automatically" in capsys.readouterr().err


# -- Cityscapes ----------------------------------------------------------------------------------------------
def id_index(x: torch.Tensor) -> list[int]:
    return [round((float(v) * 255 - 10) / 20) for v in x.mean(dim=(1, 2, 3))]


def test_cityscapes_seeded_70_30_split_of_id_and_ood_as_anomalies(tmp_path):
    fx.write_cityscapes(tmp_path / "cityscapes", n_id=10, n_ood=4)
    data = load_dataset("cityscapes", "ID", str(tmp_path), image_size=16)
    assert data.class_name == "ID" and data.train_x.shape == (7, 3, 16, 16)
    assert data.test_y.tolist() == [0, 0, 0, 1, 1, 1, 1]
    train, test_id = id_index(data.train_x), id_index(data.test_x[:3])
    assert sorted(train + test_id) == list(range(10))  # disjoint, and together all ID frames
    # Pinned: the split is part of the benchmark (path order is aachen's odd, then bochum's even frames).
    assert train == [5, 7, 9, 0, 2, 4, 8] and test_id == [1, 3, 6]
    # OOD frames: grey 250 with a dark band (the band blurs a little at a quarter of the size).
    assert all(float(x.max()) == pytest.approx(250 / 255) and float(x.min()) < 0.15 for x in data.test_x[3:])
    assert "7 train / 3 test (seed 0); OOD: 4 test" in data.info["split"]
    images.clear_memory_cache()
    again = load_dataset("cityscapes", 0, str(tmp_path), image_size=16)
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_x, data.test_x)


def test_cityscapes_missing_ood_folder_and_corrupt_frame(tmp_path, capsys):
    root = fx.write_cityscapes(tmp_path, n_id=4, n_ood=1)
    _truncate(root / "OOD" / "lindau" / "ood_000.png")
    with pytest.raises(UserError, match=r"OOD/lindau/ood_000.png.*replace the file"):
        load_dataset("cityscapes", 0, str(tmp_path), image_size=16)
    for f in (root / "OOD" / "lindau").iterdir():
        f.unlink()
    with pytest.raises(UserError, match="OOD holds 0 images"):
        load_dataset("cityscapes", 0, str(tmp_path), image_size=16)
    assert run_cli("--datasets", "cityscapes", "--data-root", tmp_path / "none", "--download",
                   "--out", tmp_path / "o") == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "Cityscapes ID/OOD export was not found" in err and "cityscapes-dataset.com" in err
    assert f"{tmp_path / 'none' / 'cityscapes'}" in err and "ID/**/*.png" in err


# -- listing and a run ------------------------------------------------------------------------------------
def test_list_datasets_shows_the_new_datasets_and_their_files(tmp_path, capsys):
    fx.write_dagm(tmp_path, "Class1", train=(1, 0), test=(1, 1))
    assert main(["list", "datasets", "dagm", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0 Class1, 1 Class2" in out and "9 Class10" in out and "native_size: 224" in out
    assert f"files: NOT FOUND: {tmp_path}: 1/10 classes with Train/ and Test/ labels" in out
    fx.write_imagenet30(tmp_path, train_classes=["acorn"], per_class=(1, 1))
    assert main(["list", "datasets", "imagenet30", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "21 rotary_dial_telephone" in out and f"files: NOT FOUND: {tmp_path}: 1/30 classes" in out
    assert main(["list", "datasets", "isic2018", "--data-root", str(tmp_path / "x")]) == 0
    assert f"NOT FOUND: looked in {tmp_path / 'x'}, {tmp_path / 'x' / 'ISIC2018'}" in capsys.readouterr().out
    fx.write_cityscapes(tmp_path / "c", n_id=2, n_ood=1)
    assert main(["list", "datasets", "cityscapes", "--data-root", str(tmp_path / "c")]) == 0
    assert f"files: found: {tmp_path / 'c'}: ID/ and OOD/" in capsys.readouterr().out
    assert len(IN30) == 30 and len(set(IN30)) == 30


def test_bench_run_on_written_dagm_class(tmp_path, capsys):
    fx.write_dagm(tmp_path / "DAGM", "Class2", train=(6, 1), test=(3, 3))
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "dataset_params:\n  dagm: {image_size: 32}\n"
        "method_params:\n  deepsvdd: {epochs: 1, width: 4, rep_dim: 8, batch_size: 4}\n"
    )
    out = tmp_path / "res"
    code = run_cli("--datasets", "dagm", "--classes", "Class2", "--data-root", tmp_path,
                   "--config", cfg, "--device", "cpu", "--out", out)  # fmt: skip
    assert code == 0, capsys.readouterr().err
    with Store(out / "bench.sqlite") as store:
        (ev,) = store.jobs(kind="eval", status="done")
        (fit,) = store.jobs(kind="fit", status="done")
    assert ev["eps"] == pytest.approx(2 / 255) and ev["norm"] == "Linf" and ev["attack"] == "fgsm"
    assert fit["info"]["train_size"] == 6 and fit["normal_class"] == 1
    with open(out / "leaderboard.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["method"] == "deepsvdd"
    assert float(row["dagm:clean"]) == pytest.approx(100 * fit["metrics"]["clean_auroc"], abs=0.005)
