"""Config mistakes are exit 2 with one sentence before any training, and a finished
result is never lost: a done row is never overwritten by a failure, an unreadable
checkpoint of a finished fit stops the run and keeps its results."""

import sqlite3

import numpy as np
import pytest
import yaml

import robustad as ra
from robustad.benchmark import runner
from robustad.benchmark import store as store_mod
from robustad.benchmark.store import Store
from robustad.cli import main

TINY = """
method_params:
  deepsvdd: {epochs: 2, width: 8}
attack_params:
  pgd: {steps: 2}
"""
RUN = ["run", "--methods", "deepsvdd", "--classes", "0", "--quiet"]


@pytest.fixture
def fits(monkeypatch):
    """Counts trainings: every test of a config mistake asserts that nothing was trained."""
    calls = []
    real = runner.fit_detector

    def counting(*args, **kwargs):
        calls.append(args[0].job_id)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "fit_detector", counting)
    return calls


def _config(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return ["--config", str(path)]


def _one_sentence_exit_2(capsys, code):
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _no_results(out):
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").iterdir())
    if (out / "bench.sqlite").exists():
        with Store(out / "bench.sqlite") as s:
            assert s.count() == 0


@pytest.mark.parametrize(
    "key, name, params, message",
    [
        # misspelt names of a method or an attack are not "a plug-in that is not loaded"
        ("attack_params", "pdg", {"steps": 2}, "Did you mean 'pgd'"),
        ("method_params", "deepsvd", {"epochs": 2}, "Did you mean 'deepsvdd'"),
        # misspelt parameter names of a registered method or attack
        ("attack_params", "pgd", {"stepz": 2}, "no parameter(s) stepz"),
        ("method_params", "deepsvdd", {"epoch": 2}, "no parameter(s) epoch"),
        # impossible values: the constructor's own check, before training
        ("attack_params", "pgd", {"steps": 0}, "'pgd'"),
        ("attack_params", "pgd", {"restarts": 0}, "restarts"),
        ("attack_params", "pgd", {"steps": "ten"}, "'pgd'"),
        # the attack seed is kept, so it must be an integer
        ("attack_params", "pgd", {"seed": "one"}, "seed"),
    ],
)
def test_config_mistakes_are_exit_2_before_training(tmp_path, capsys, fits, key, name, params, message):
    cfg = yaml.safe_load(TINY)
    cfg[key][name] = {**cfg[key].get(name, {}), **params}
    out = tmp_path / "res"
    code = main([*RUN, "--attacks", "pgd", *_config(tmp_path, yaml.safe_dump(cfg)), "--out", str(out)])
    err = _one_sentence_exit_2(capsys, code)
    assert message in err
    assert fits == []
    _no_results(out)


def test_misspelt_torchattacks_parameter_is_exit_2(tmp_path, capsys, fits):
    pytest.importorskip("torchattacks")
    text = "attack_params:\n  ta:PGD: {stepz: 2}\n"
    out = tmp_path / "res"
    code = main([*RUN, "--attacks", "ta:PGD", *_config(tmp_path, text), "--out", str(out)])
    err = _one_sentence_exit_2(capsys, code)
    assert "no parameter(s) stepz" in err and "steps" in err
    assert fits == []
    _no_results(out)


@pytest.mark.parametrize("attack, params", [("apgd", "{steps: 0}"), ("square", "{queries: 0}")])
def test_impossible_attack_values_name_the_attack(tmp_path, capsys, fits, attack, params):
    text = f"attack_params:\n  {attack}: {params}\n"
    out = tmp_path / "res"
    code = main([*RUN, "--attacks", attack, *_config(tmp_path, text), "--out", str(out)])
    err = _one_sentence_exit_2(capsys, code)
    assert repr(attack) in err and ">= 1" in err
    assert fits == []
    _no_results(out)


@pytest.mark.parametrize("device", ["gpu0", "cuda0", "tpu", ""])
def test_unknown_device_is_exit_2(tmp_path, capsys, fits, device):
    out = tmp_path / "res"
    code = main([*RUN, "--attacks", "fgsm", "--device", device, "--out", str(out)])
    err = _one_sentence_exit_2(capsys, code)
    assert "device" in err
    assert fits == []
    _no_results(out)


def test_known_devices_pass_validation():
    import torch

    from robustad.config import resolve

    for device in ("cpu", "auto"):
        assert resolve("quick", overrides={"device": device})["device"] == device
    if not torch.cuda.is_available():
        for device in ("cuda", "cuda:0"):
            with pytest.raises(Exception, match="CUDA is not available"):
                resolve("quick", overrides={"device": device})


def test_out_naming_a_file_is_exit_2(tmp_path, capsys, fits):
    out = tmp_path / "results.txt"
    out.write_text("not a folder")
    code = main([*RUN, "--attacks", "fgsm", "--out", str(out)])
    err = _one_sentence_exit_2(capsys, code)
    assert str(out) in err
    assert fits == [] and out.read_text() == "not a folder"


def test_locked_store_is_exit_2_before_training(tmp_path, capsys, fits, monkeypatch):
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_S", 0.2)
    out = tmp_path / "res"
    Store(out / "bench.sqlite").close()
    holder = sqlite3.connect(out / "bench.sqlite")
    holder.execute("BEGIN EXCLUSIVE")  # another process writing: the lock is held
    try:
        code = main([*RUN, "--attacks", "fgsm", "--out", str(out)])
    finally:
        holder.rollback()
        holder.close()
    err = _one_sentence_exit_2(capsys, code)
    assert "locked" in err and str(out / "bench.sqlite") in err
    assert fits == []


def _row(job_id, status, **extra):
    return {"job_id": job_id, "kind": "fit", "method": "m", "dataset": "d", "normal_class": 0,
            "seed": 0, "config": {}, "status": status, **extra}  # fmt: skip


def test_a_locked_store_write_is_a_user_error_not_a_lost_result(tmp_path, monkeypatch):
    from robustad.errors import UserError

    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_S", 0.2)
    path = tmp_path / "bench.sqlite"
    with Store(path) as s:
        holder = sqlite3.connect(path)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(UserError, match="locked"):
                s.put(_row("fit-1", "done"), labels=np.zeros(2), clean=np.ones(2))
        finally:
            holder.rollback()
            holder.close()
        s.put(_row("fit-1", "done"), labels=np.zeros(2), clean=np.ones(2))  # free again: stored
        assert s.is_done("fit-1")


def test_store_never_overwrites_a_done_row_with_a_failed_one(tmp_path):
    with Store(tmp_path / "bench.sqlite") as s:
        s.put(_row("fit-1", "done", metrics={"clean_auroc": 0.9}), labels=np.array([0, 1]),
              clean=np.array([0.1, 0.9]))  # fmt: skip
        s.put(_row("fit-1", "failed", error="Traceback: later failure"))
        (row,) = s.jobs(job_id="fit-1")
        assert row["status"] == "done" and row["metrics"] == {"clean_auroc": 0.9} and not row["error"]
        np.testing.assert_array_equal(s.samples("fit-1")["clean"], [0.1, 0.9])
        # a done row may replace a done or a failed one (recomputed flags, a retried job)
        s.put(_row("fit-2", "failed", error="boom"))
        s.put(_row("fit-2", "done"), labels=np.array([0]), clean=np.array([0.5]))
        assert s.is_done("fit-2")


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_unreadable_checkpoint_of_a_done_fit_keeps_its_results(tmp_path, capsys, fits, damage):
    out = tmp_path / "res"
    cfg = _config(tmp_path, TINY)
    assert main([*RUN, "--attacks", "noise", *cfg, "--out", str(out)]) == 0
    capsys.readouterr()
    with Store(out / "bench.sqlite") as s:
        (fit,) = s.jobs(kind="fit")
        before = s.jobs()
        clean = s.samples(fit["job_id"])["clean"]
    ckpt = out / "checkpoints" / f"{fit['job_id']}.pt"
    if damage == "corrupt":
        ckpt.write_bytes(b"not a checkpoint")
    else:
        ckpt.unlink()
    fits.clear()

    # a new attack needs the model: the run stops, names the file, keeps the results
    code = main([*RUN, "--attacks", "noise,fgsm", *cfg, "--out", str(out)])
    err = _one_sentence_exit_2(capsys, code)
    assert str(ckpt) in err and "kept" in err
    assert fits == []  # no refit next to the stored eval rows
    with Store(out / "bench.sqlite") as s:
        assert s.jobs() == before
        np.testing.assert_array_equal(s.samples(fit["job_id"])["clean"], clean)


def test_a_users_attack_seed_is_kept_and_part_of_the_identity(tmp_path, monkeypatch):
    from robustad.config import resolve

    base = {"methods": ["deepsvdd"], "classes": [0], "attacks": ["pgd", "noise"]}

    def eval_ids(attack_params=None):
        cfg = resolve("quick", overrides={**base, "attack_params": attack_params or {}})
        grid = runner.expand_grid(cfg)
        return {e.attack: e for e in grid.evals[grid.fits[0]]}

    default, seven, eight = eval_ids(), eval_ids({"pgd": {"seed": 7}}), eval_ids({"pgd": {"seed": 8}})
    assert "seed" not in default["pgd"].params  # by default the attack seed is the run seed
    assert seven["pgd"].params["seed"] == 7
    assert len({default["pgd"].job_id, seven["pgd"].job_id, eight["pgd"].job_id}) == 3
    assert default["noise"].job_id == seven["noise"].job_id  # other attacks keep their ids

    # and the attack runs with it
    seeds = []
    real = runner.attack_test_set

    def spy(detector, name, params, threat, data, seed, *args):
        seeds.append((name, seed))
        return real(detector, name, params, threat, data, seed, *args)

    monkeypatch.setattr(runner, "attack_test_set", spy)
    text = TINY + "  noise: {seed: 7}\n"
    assert main([*RUN, "--attacks", "noise,fgsm", *_config(tmp_path, text),
                 "--out", str(tmp_path / "res")]) == 0  # fmt: skip
    assert sorted(seeds) == [("fgsm", 0), ("noise", 7)]


def test_library_versions_name_the_optional_packages(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version

    def version(name):
        if name == "torchattacks":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    runner.library_versions.cache_clear()
    monkeypatch.setattr(importlib.metadata, "version", version)
    try:
        versions = runner.library_versions()
    finally:
        runner.library_versions.cache_clear()
    for name in ("pyautoattack", "torchvision", "scipy", "Pillow"):
        assert versions[name] and versions[name] != "not installed"
    assert versions["torchattacks"] == "not installed"
    assert versions["torch"] and versions["numpy"]


def test_ta_attack_under_a_norm_it_does_not_support_is_exit_2_before_training(tmp_path):
    pytest.importorskip("torchattacks")
    from robustad.config import resolve

    # resolve() validates: the norm mismatch is a UserError before any job exists
    with pytest.raises(ra.UserError, match="use ta:PGDL2 for --norm L2"):
        resolve("quick", overrides={"methods": ["deepsvdd"], "attacks": ["ta:PGD"], "norm": "L2"})
