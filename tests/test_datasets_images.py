"""MVTec AD, VisA, folder and imagefolder loaders on tiny trees written by the tests.

Fixture defects are a white square at rows 16..31, columns 32..47 of a 64×64
image with the same square in the mask, so after a ×½ resize the mask must be
exactly rows 8..15, columns 16..23, and the image must be white there.
"""

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustad.benchmark.metrics import pixel_auroc
from robustad.benchmark.store import Store
from robustad.cli import main
from robustad.datasets import fixtures as fx
from robustad.datasets import images, load_dataset
from robustad.errors import UserError

BOX_HALF = (slice(8, 16), slice(16, 24))  # fx.DEFECT_BOX after resizing 64 → 32


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test gets its own on-disk cache and an empty in-memory cache."""
    monkeypatch.setenv("ROBUSTAD_CACHE_DIR", str(tmp_path / "cache"))
    images.clear_memory_cache()
    yield tmp_path / "cache" / "images"
    images.clear_memory_cache()


def expected_mask(n_defect_first: int, n_good: int, n_defect_last: int) -> torch.Tensor:
    m = torch.zeros(n_defect_first + n_good + n_defect_last, 32, 32)
    for i in [*range(n_defect_first), *range(n_defect_first + n_good, len(m))]:
        m[i][BOX_HALF] = 1
    return m


def check_defects_align(data) -> None:
    """The white defect square sits exactly under the mask (and nowhere else is white)."""
    x = data.test_x.amin(1)  # (M,H,W): white in every channel
    core = torch.zeros_like(data.test_masks)
    core[:, 9:15, 17:23] = data.test_masks[:, 9:15, 17:23]  # the mask shrunk by one pixel
    assert core.sum() > 0 and float(x[core == 1].min()) == 1.0
    # At the edge, bilinear (antialiased, support 2 px) blends white with texture.
    assert float(x[data.test_masks == 1].min()) > 0.75
    far = data.test_masks.clone()
    far[:, 6:18, 14:26] = 1  # the mask grown by two pixels: bilinear blends at the edge
    assert float(data.test_x.amax(1)[far == 0].max()) <= 141 / 255 + 1e-6


# -- MVTec AD ---------------------------------------------------------------------------------
def test_mvtec_counts_labels_masks_and_values(tmp_path):
    fx.write_mvtec(tmp_path / "mv", "bottle", n_train=6, n_good=3, defects={"crack": 2, "scratch": 2})
    data = load_dataset("mvtec", 0, str(tmp_path / "mv"), image_size=32)
    assert data.train_x.shape == (6, 3, 32, 32) and data.train_x.dtype == torch.float32
    assert data.test_x.shape == (7, 3, 32, 32)
    # Sorted test folders crack, good, scratch: label 1, 0, 1.
    assert data.test_y.tolist() == [1, 1, 0, 0, 0, 1, 1] and data.test_y.dtype == torch.int64
    assert data.info["test_defects"] == ["crack"] * 2 + ["good"] * 3 + ["scratch"] * 2
    assert data.test_masks.shape == (7, 32, 32) and data.test_masks.dtype == torch.float32
    assert torch.equal(data.test_masks, expected_mask(2, 3, 2))  # nearest neighbour keeps 0/1
    check_defects_align(data)
    # Normal images are texture in 60..140 only; bilinear averaging stays inside that range.
    assert 60 / 255 - 1e-6 <= float(data.train_x.min()) and float(data.train_x.max()) <= 140 / 255 + 1e-6
    assert data.class_name == "bottle" and data.normal_class == 0


def test_mvtec_category_by_name_grey_stays_one_channel_and_native_size(tmp_path):
    fx.write_mvtec(tmp_path, "grid", n_train=3, n_good=1, defects={"bent": 1}, grey=True)
    data = load_dataset("mvtec", "grid", str(tmp_path), image_size=None)
    assert data.normal_class == 4
    assert data.train_x.shape == (3, 1, 64, 64) and data.test_x.shape == (2, 1, 64, 64)
    mask = torch.zeros(64, 64)
    r0, r1, c0, c1 = fx.DEFECT_BOX
    mask[r0:r1, c0:c1] = 1
    assert torch.equal(data.test_masks[0], mask) and data.test_masks[1].sum() == 0
    assert float(data.test_x[0, 0][mask == 1].min()) == 1.0


def test_mvtec_second_load_comes_from_cache_and_changes_invalidate_it(tmp_path, private_cache):
    cat = fx.write_mvtec(tmp_path / "mv", "bottle", n_train=4, n_good=2, defects={"crack": 1})
    first = load_dataset("mvtec", 0, str(tmp_path / "mv"), image_size=32)
    assert first.info["cache"] == "decoded" and len(list(private_cache.glob("*.npz"))) == 1
    second = load_dataset("mvtec", 0, str(tmp_path / "mv"), image_size=32)
    assert second.info["cache"] == "memory"
    images.clear_memory_cache()  # as a new process would see it
    third = load_dataset("mvtec", 0, str(tmp_path / "mv"), image_size=32)
    assert third.info["cache"] == "disk"
    for d in (second, third):
        assert torch.equal(d.train_x, first.train_x) and torch.equal(d.test_x, first.test_x)
        assert torch.equal(d.test_masks, first.test_masks)
    assert load_dataset("mvtec", 0, str(tmp_path / "mv"), image_size=16).info["cache"] == "decoded"
    # Replacing a file (new content and time) must not serve the old pixels.
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(cat / "train" / "good" / "000.png")
    os.utime(cat / "train" / "good" / "000.png", ns=(10**18, 10**18))
    fresh = load_dataset("mvtec", 0, str(tmp_path / "mv"), image_size=32)
    assert fresh.info["cache"] == "decoded"
    assert torch.allclose(fresh.train_x[0], torch.full((3, 32, 32), 200 / 255))


def run_cli(*argv) -> int:
    return main(["run", "--methods", "deepsvdd", "--attacks", "pgd", "--quiet", *map(str, argv)])


def test_mvtec_missing_category_exits_2_naming_folder_and_layout(tmp_path, capsys):
    fx.write_mvtec(tmp_path / "mv", "bottle", n_train=2, n_good=1, defects={"crack": 1})
    assert run_cli("--datasets", "mvtec", "--classes", "cable", "--data-root", tmp_path / "mv",
                   "--out", tmp_path / "out") == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "'cable' not found" in err and str(tmp_path / "mv") in err
    assert "<category>/train/good/*.png" in err and "--data-root" in err


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: _rmtree(c / "train"), "train/good is missing"),
        (lambda c: _rmtree(c / "ground_truth"), "ground_truth is missing"),
        (lambda c: (c / "ground_truth" / "crack" / "000_mask.png").unlink(), "000_mask.png is missing"),
        (lambda c: _empty(c / "test" / "scratch"), "test/scratch holds no images"),
        (lambda c: _truncate(c / "test" / "crack" / "001.png"), "crack/001.png is corrupt or truncated"),
        (lambda c: _garbage(c / "test" / "good" / "000.png"), "cannot read image .*good/000.png"),
        (lambda c: _rgba(c / "train" / "good" / "002.png"), "has mode 'RGBA'"),
        (lambda c: _grey(c / "test" / "good" / "001.png"), "001.png is grey but .* is RGB"),
        (lambda c: _resize(c / "ground_truth" / "crack" / "000_mask.png"), "must match their images"),
    ],
)
def test_mvtec_broken_tree_is_reported_and_nothing_is_cached(
    tmp_path, capsys, private_cache, damage, message
):
    cat = fx.write_mvtec(tmp_path / "mv", "bottle", n_train=3, n_good=2, defects={"crack": 2, "scratch": 1})
    damage(cat)
    with pytest.raises(UserError, match=message):
        load_dataset("mvtec", "bottle", str(tmp_path / "mv"), image_size=32)
    assert not private_cache.exists() or not list(private_cache.iterdir())
    assert not images._MEMORY  # nothing half-loaded is kept
    assert run_cli("--datasets", "mvtec", "--classes", "0", "--data-root", tmp_path / "mv",
                   "--out", tmp_path / "out") == 2  # fmt: skip
    assert "bench: error:" in capsys.readouterr().err


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p)


def _empty(p: Path) -> None:
    for f in p.iterdir():
        f.unlink()


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[:-2000])


def _garbage(p: Path) -> None:
    p.write_bytes(b"this is not a png")


def _rgba(p: Path) -> None:
    Image.open(p).convert("RGBA").save(p)


def _grey(p: Path) -> None:
    Image.open(p).convert("L").save(p)


def _resize(p: Path) -> None:
    Image.open(p).resize((32, 32)).save(p)


def test_mode_parameter_converts_on_purpose(tmp_path):
    cat = fx.write_mvtec(tmp_path, "bottle", n_train=3, n_good=1, defects={"crack": 1})
    _rgba(cat / "train" / "good" / "001.png")
    data = load_dataset("mvtec", 0, str(tmp_path), image_size=32, mode="L")
    assert data.train_x.shape == (3, 1, 32, 32) and data.test_x.shape == (2, 1, 32, 32)


def test_bad_image_size_is_a_user_error(tmp_path, capsys):
    with pytest.raises(UserError, match="image_size must be an integer"):
        load_dataset("mvtec", 0, str(tmp_path), image_size=4)
    with pytest.raises(UserError, match="no parameter"):
        load_dataset("mvtec", 0, str(tmp_path), size=32)


# -- folder --------------------------------------------------------------------------------------
def test_folder_reads_any_mvtec_like_tree_masks_optional(tmp_path):
    cat = fx.write_mvtec(tmp_path, "my_part", n_train=4, n_good=2, defects={"dent": 3})
    data = load_dataset("folder", 0, str(cat), image_size=32)
    assert data.train_x.shape == (4, 3, 32, 32) and data.test_y.tolist() == [1, 1, 1, 0, 0]
    assert torch.equal(data.test_masks, expected_mask(3, 2, 0)) and data.class_name == "my_part"
    _rmtree(cat / "ground_truth")
    assert load_dataset("folder", 0, str(cat), image_size=32).test_masks is None


def test_folder_without_defects_is_an_error(tmp_path, capsys):
    cat = fx.write_mvtec(tmp_path, "part", n_train=2, n_good=2, defects={"dent": 1})
    _rmtree(cat / "test" / "dent")
    _rmtree(cat / "ground_truth")
    with pytest.raises(UserError, match="no defect folders"):
        load_dataset("folder", 0, str(cat), image_size=32)
    assert run_cli("--datasets", "folder", "--data-root", tmp_path / "absent", "--out", tmp_path / "o") == 2
    assert str(tmp_path / "absent") in capsys.readouterr().err


# -- VisA ------------------------------------------------------------------------------------------
def test_visa_split_csv_labels_and_masks(tmp_path):
    fx.write_visa(tmp_path / "VisA", "candle", n_train=5, n_normal=3, n_anomaly=2)
    data = load_dataset("visa", "candle", str(tmp_path), image_size=32)
    assert data.normal_class == 0 and data.info["source"] == str(tmp_path / "VisA")
    assert data.train_x.shape == (5, 3, 32, 32) and data.test_x.shape == (5, 3, 32, 32)
    assert data.test_y.tolist() == [0, 0, 0, 1, 1]  # the CSV's order
    assert torch.equal(data.test_masks, expected_mask(0, 3, 2))
    # JPEG blurs the square's edge a little; its inside is still white and the rest texture.
    inside = data.test_x[3:].amin(1)[data.test_masks[3:] == 1]
    assert float(inside.mean()) > 0.97


def test_visa_missing_split_file_and_missing_image(tmp_path, capsys):
    root = fx.write_visa(tmp_path, "candle", n_train=2, n_normal=1, n_anomaly=1)
    (root / "split_csv" / "1cls.csv").unlink()
    assert run_cli("--datasets", "visa", "--data-root", tmp_path, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "split_csv/1cls.csv" in err and str(tmp_path) in err
    root = fx.write_visa(tmp_path, "candle", n_train=2, n_normal=1, n_anomaly=1)
    (root / "candle" / "Data" / "Images" / "Anomaly" / "000.JPG").unlink()
    with pytest.raises(UserError, match=r"Anomaly/000.JPG \(named in .*1cls.csv line 5\) is missing"):
        load_dataset("visa", 0, str(tmp_path), image_size=32)
    with pytest.raises(UserError, match="lists no training images for 'capsules'"):
        load_dataset("visa", "capsules", str(tmp_path), image_size=32)


def test_visa_bad_csv_columns(tmp_path):
    root = fx.write_visa(tmp_path, "candle", n_train=1, n_normal=1, n_anomaly=1)
    with open(root / "split_csv" / "1cls.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["object", "image"], ["candle", "x.JPG"]])
    with pytest.raises(UserError, match="does not have the columns object, split, label, image, mask"):
        load_dataset("visa", 0, str(tmp_path), image_size=32)


# -- imagefolder --------------------------------------------------------------------------------------
def test_imagefolder_without_split_seeded_per_class_split(tmp_path):
    fx.write_imagefolder(tmp_path / "data", {"ants": 5, "bees": 5, "cats": 10})
    data = load_dataset("imagefolder", 1, str(tmp_path / "data"), image_size=16, test_fraction=0.2)
    # 20% of each class to test: 1 ant, 1 bee (normal), 2 cats.
    assert data.class_name == "bees" and data.info["classes"] == ["ants", "bees", "cats"]
    assert data.train_x.shape == (4, 3, 16, 16) and data.test_x.shape == (4, 3, 16, 16)
    assert torch.equal(data.train_x, torch.full_like(data.train_x, fx.pixel_value(1) / 255))
    k = (np.rint(data.test_x[:, 0, 0, 0].numpy() * 255).astype(int) - 5) // 10
    assert k.tolist() == [0, 1, 2, 2] and data.test_y.tolist() == [1, 0, 1, 1]
    again = load_dataset("imagefolder", "bees", str(tmp_path / "data"), image_size=16, test_fraction=0.2)
    assert torch.equal(again.test_x, data.test_x)  # the split does not depend on the run


def test_imagefolder_with_train_test_split(tmp_path):
    fx.write_imagefolder(tmp_path / "data", {"benign": 3, "malignant": 2}, split=True)
    data = load_dataset("imagefolder", "benign", str(tmp_path / "data"), image_size=16)
    assert data.train_x.shape == (3, 3, 16, 16) and data.test_y.tolist() == [0, 0, 0, 1, 1]
    assert float(data.test_x[3:].mean()) == pytest.approx(fx.pixel_value(1) / 255)


def test_imagefolder_errors(tmp_path):
    fx.write_imagefolder(tmp_path / "a", {"ants": 3, "bees": 3})
    _empty(tmp_path / "a" / "bees")
    with pytest.raises(UserError, match="bees holds no images"):
        load_dataset("imagefolder", 0, str(tmp_path / "a"), image_size=16)
    with pytest.raises(UserError, match="no class 'wasps'"):
        load_dataset("imagefolder", "wasps", str(tmp_path / "a"), image_size=16)
    with pytest.raises(UserError, match="is not a folder"):
        load_dataset("imagefolder", 0, str(tmp_path / "none"), image_size=16)
    # train and test are decoded apart (one_class_tree's split_cache): a grey training set
    # against RGB test images is named, and mode: RGB loads both alike
    fx.write_imagefolder(tmp_path / "s", {"benign": 3, "malignant": 2}, split=True)
    for f in (tmp_path / "s" / "train" / "benign").iterdir():
        _grey(f)
    with pytest.raises(UserError, match="differ in colour"):
        load_dataset("imagefolder", "benign", str(tmp_path / "s"), image_size=16)
    data = load_dataset("imagefolder", "benign", str(tmp_path / "s"), image_size=16, mode="RGB")
    assert data.train_x.shape == (3, 3, 16, 16) and data.test_x.shape == (5, 3, 16, 16)


def test_imagefolder_needs_explicit_classes_in_a_run(tmp_path, capsys):
    fx.write_imagefolder(tmp_path / "a", {"ants": 3, "bees": 3})
    argv = ["run", "--methods", "deepsvdd", "--datasets", "imagefolder", "--data-root", str(tmp_path / "a"),
            "--classes", "all", "--out", str(tmp_path / "o"), "--quiet"]  # fmt: skip
    assert main(argv) == 2
    assert "give --classes as indices" in capsys.readouterr().err


# -- metrics and listing ---------------------------------------------------------------------------
def test_pixel_auroc_by_hand():
    maps = torch.tensor([[[0.1, 0.4], [0.35, 0.8]]])
    masks = torch.tensor([[[0, 0], [1, 1]]])
    # Positives 0.35, 0.8 against negatives 0.1, 0.4: 3 of 4 pairs ordered correctly.
    assert pixel_auroc(maps, masks) == pytest.approx(0.75)
    assert pixel_auroc(maps, masks * 255) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="differ in shape"):
        pixel_auroc(maps, masks[:, :1])


def test_list_datasets_shows_classes_and_where_files_are(tmp_path, capsys):
    fx.write_mvtec(tmp_path, "bottle", n_train=1, n_good=1, defects={"crack": 1})
    assert main(["list", "datasets", "mvtec", "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0 bottle, 1 cable" in out and "14 zipper" in out and "native_size: 224" in out
    assert f"files: NOT FOUND: {tmp_path}: 1/15 categories" in out
    assert main(["list", "datasets", "fmnist"]) == 0
    out = capsys.readouterr().out
    assert "files: found" in out or "files: NOT FOUND: looked in" in out


# -- end to end ----------------------------------------------------------------------------------------
def test_bench_run_on_written_mvtec_tree(tmp_path, capsys):
    fx.write_mvtec(tmp_path / "mv", "bottle", n_train=8, n_good=3, defects={"crack": 3})
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "dataset_params:\n  mvtec: {image_size: 32}\n"
        "method_params:\n  deepsvdd: {epochs: 2, width: 4, rep_dim: 8, batch_size: 4}\n"
        "attack_params:\n  pgd: {steps: 3}\n"
    )
    out = tmp_path / "res"
    code = run_cli("--datasets", "mvtec", "--classes", "bottle", "--data-root", tmp_path / "mv",
                   "--config", cfg, "--device", "cpu", "--out", out)  # fmt: skip
    assert code == 0, capsys.readouterr().err
    with Store(out / "bench.sqlite") as store:
        (ev,) = store.jobs(kind="eval", status="done")
        (fit,) = store.jobs(kind="fit", status="done")
    assert ev["eps"] == pytest.approx(2 / 255) and ev["norm"] == "Linf"  # auto ε above 64 px
    assert fit["info"]["train_size"] == 8 and fit["normal_class"] == 0
    assert fit["config"]["data_params"] == {"image_size": 32}
    with open(out / "leaderboard.csv") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["method"] == "deepsvdd"
    pgd_col = next(k for k in row if k.startswith("mvtec:pgd"))
    assert float(row[pgd_col]) == pytest.approx(100 * ev["metrics"]["adv_auroc"], abs=0.005)
    assert float(row["mvtec:clean"]) == pytest.approx(100 * fit["metrics"]["clean_auroc"], abs=0.005)
