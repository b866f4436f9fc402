"""The pretrained-weights contract (robustad.methods.weights) and the pretrained-backbone
methods end to end: files found and loaded, wrong hashes and missing files refused with
exit 2 before training, random weights recorded and flagged. Nothing is downloaded: the
"ImageNet" files here are randomly initialised torchvision state dicts."""

from __future__ import annotations

import sqlite3

import pytest
import torch
import torchvision

from robustad.benchmark import runner
from robustad.benchmark.store import Store
from robustad.cli import main
from robustad.config import resolve as resolve_config
from robustad.errors import UserError
from robustad.methods import weights as wts


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    home = tmp_path / "torch_home"
    (home / "hub" / "checkpoints").mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv("ROBUSTAD_WEIGHTS", raising=False)
    return home / "hub" / "checkpoints"


def _write_resnet18(folder, seed=1):
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(weights=None).state_dict()
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    sha = wts.file_sha256(tmp)
    path = folder / f"resnet18-{sha[:8]}.pth"
    tmp.rename(path)
    return path, state


@pytest.fixture
def fake_imagenet(torch_home, monkeypatch):
    """A random resnet18 state dict under a torchvision-style name whose hash matches,
    registered as resnet18's canonical file."""
    path, state = _write_resnet18(torch_home)
    monkeypatch.setattr(wts, "imagenet_url", lambda arch: f"https://example.invalid/{path.name}")
    return path, state


def test_imagenet_weights_are_found_in_torch_home_and_loaded(fake_imagenet):
    path, state = fake_imagenet
    resolved = wts.resolve("resnet18", "imagenet")
    assert resolved.path == path and resolved.source == "TORCH_HOME" and resolved.pretrained
    assert resolved.sha256 == wts.file_sha256(path)
    model = wts.build_backbone("resnet18", resolved)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_robustad_weights_folder_comes_first(fake_imagenet, tmp_path, monkeypatch):
    path, _ = fake_imagenet
    own = tmp_path / "own"
    own.mkdir()
    (own / path.name).write_bytes(path.read_bytes())
    monkeypatch.setenv("ROBUSTAD_WEIGHTS", str(own))
    resolved = wts.resolve("resnet18", "imagenet")
    assert resolved.path == own / path.name and resolved.source == "ROBUSTAD_WEIGHTS"


def test_a_wrong_hash_prefix_is_refused(torch_home):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), torch_home / "resnet18-f37072fd.pth")
    with pytest.raises(UserError, match="corrupt or not the published one"):
        wts.resolve("resnet18", "imagenet")


def test_missing_imagenet_weights_name_the_file_and_the_folders(torch_home):
    with pytest.raises(UserError) as err:
        wts.resolve("resnet18", "imagenet")
    msg = str(err.value)
    assert "resnet18-f37072fd.pth" in msg and str(torch_home) in msg and "weights: null" in msg


def test_explicit_file_with_a_prefixed_state_dict(tmp_path, torch_home):
    torch.manual_seed(2)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18_linf_eps8.0.pt"
    torch.save({"state_dict": {f"module.model.{k}": v for k, v in state.items()}}, path)
    resolved = wts.resolve("resnet18", str(path))
    assert resolved.source == "explicit"
    model = wts.build_backbone("resnet18", resolved)
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    with pytest.raises(UserError, match="does not exist"):
        wts.resolve("resnet18", str(tmp_path / "nope.pt"))


def _cfg(method, weights, extra=None):
    params = {"backbone": "resnet18", "weights": weights, "input_size": 16, "max_train": 16, **(extra or {})}
    return resolve_config("quick", overrides={"methods": [method], "classes": [0], "attacks": ["fgsm"],
                                              "method_params": {method: params}})  # fmt: skip


def test_the_weights_hash_is_part_of_the_fit_identity(fake_imagenet, tmp_path):
    path, _ = fake_imagenet
    first = runner.expand_grid(_cfg("zarnd", "imagenet")).fits[0]
    assert first.spec["weights_sha256"] == wts.file_sha256(path)
    other, _ = _write_resnet18(tmp_path, seed=3)
    second = runner.expand_grid(_cfg("zarnd", str(other))).fits[0]
    assert second.job_id != first.job_id
    random = runner.expand_grid(_cfg("zarnd", None)).fits[0]
    assert "weights_sha256" not in random.spec


@pytest.mark.parametrize("method", ["patchcore", "zarnd", "msad"])
def test_missing_weights_stop_the_run_before_training(torch_home, tmp_path, method, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"method_params:\n  {method}: {{backbone: resnet18, weights: imagenet, input_size: 16}}\n")
    out = tmp_path / "out"
    code = main(["run", "--methods", method, "--classes", "0", "--attacks", "fgsm", "--config", str(cfg),
                 "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 2
    assert "resnet18-f37072fd.pth" in capsys.readouterr().err
    con = sqlite3.connect(out / "bench.sqlite") if (out / "bench.sqlite").exists() else None
    if con is not None:
        assert con.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
        con.close()


def test_random_weights_are_recorded_and_flagged_in_every_cell(tmp_path, torch_home):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "method_params:\n  zarnd: {backbone: resnet18, weights: null, input_size: 16, max_train: 32}\n"
        "  deepsvdd: {epochs: 1, width: 4}\n"
    )
    out = tmp_path / "out"
    assert main(["run", "--methods", "zarnd,deepsvdd", "--classes", "0", "--attacks", "fgsm", "--config",
                 str(cfg), "--out", str(out), "--quiet"]) == 0  # fmt: skip
    with Store(out / "bench.sqlite") as store:
        fits = {r["method"]: r for r in store.jobs(kind="fit", status="done")}
    assert fits["zarnd"]["info"]["pretrained"] is False
    assert fits["zarnd"]["info"]["weights_source"] == "none"
    md = (out / "leaderboard.md").read_text()
    zarnd_line = next(line for line in md.splitlines() if line.startswith("| zarnd"))
    svdd_line = next(line for line in md.splitlines() if line.startswith("| deepsvdd"))
    assert zarnd_line.count("[random weights]") == 2  # clean and fgsm
    assert "random weights" not in svdd_line
    # its own legend; the reliability flags' legend only where a reliability flag was raised
    assert "[random weights]: a method published with a pretrained backbone" in md
    assert "[flags] raised" not in md  # no reliability flag was raised on these runs
