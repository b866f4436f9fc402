"""End to end through the ``bench`` command: outputs, resuming, failures, user errors."""

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from robustad.benchmark import runner
from robustad.benchmark.store import Store
from robustad.cli import main

TINY = """
method_params:
  deepsvdd: {epochs: 3, width: 8}
attack_params:
  pgd: {steps: 2}
"""
N_JOBS = 2 * (1 + 3)  # 2 classes × (fit + noise, fgsm, pgd)


@pytest.fixture
def tiny(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    return ["run", "--methods", "deepsvdd", "--classes", "0,1", "--config", str(cfg), "--quiet"]


def _rows(out):
    con = sqlite3.connect(out / "bench.sqlite")
    try:
        return con.execute("SELECT job_id, kind, status, finished FROM jobs").fetchall()
    finally:
        con.close()


def test_run_writes_store_leaderboards_and_plots_then_skips(tmp_path, tiny, capsys):
    out = tmp_path / "res"
    assert main([*tiny, "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert f"jobs: {N_JOBS} run, 0 already in the store, 0 failed" in first
    for name in ("bench.sqlite", "leaderboard.csv", "leaderboard.md", "leaderboard.tex"):
        assert (out / name).is_file(), name
    assert list((out / "plots").glob("*.png"))
    rows = _rows(out)
    assert len(rows) == N_JOBS and {r[2] for r in rows} == {"done"}

    # The leaderboard's pgd cell is the mean over the two classes of the stored AUROCs.
    with Store(out / "bench.sqlite") as store:
        pgd = [r["metrics"]["adv_auroc"] for r in store.jobs(kind="eval", attack="pgd")]
        s = store.samples(store.jobs(kind="eval", attack="pgd")[0]["job_id"])
        assert s["adv"].shape == s["clean"].shape == s["labels"].shape == (899,)
    with open(out / "leaderboard.csv") as fh:
        table = list(csv.DictReader(fh))
    assert float(table[0]["digits:pgd"]) == pytest.approx(100 * np.mean(pgd), abs=0.005)
    assert float(table[0]["digits:pgd"]) <= float(table[0]["digits:clean"])

    # Same command again: no new work, no new rows, nothing rewritten.
    assert main([*tiny, "--out", str(out)]) == 0
    assert f"jobs: 0 run, {N_JOBS} already in the store, 0 failed" in capsys.readouterr().out
    assert _rows(out) == rows


def test_same_command_gives_same_metrics(tmp_path, tiny):
    for name in ("a", "b"):
        assert main([*tiny, "--out", str(tmp_path / name)]) == 0
    a = (tmp_path / "a" / "leaderboard.csv").read_text()
    b = (tmp_path / "b" / "leaderboard.csv").read_text()
    assert a == b


def test_interrupted_run_resumes_without_duplicates(tmp_path, tiny, monkeypatch, capsys):
    out = tmp_path / "res"
    real = runner.attack_test_set
    calls = {"n": 0}

    def interrupt_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "attack_test_set", interrupt_third)
    assert main([*tiny, "--out", str(out)]) == 2
    assert "run the same command again" in capsys.readouterr().err
    before = {r[0]: r for r in _rows(out)}
    assert len(before) == 3  # fit of class 0 and two finished attacks

    monkeypatch.setattr(runner, "attack_test_set", real)
    assert main([*tiny, "--out", str(out)]) == 0
    after = _rows(out)
    assert len(after) == N_JOBS == len({r[0] for r in after})
    for r in after:  # finished jobs were not redone
        if r[0] in before:
            assert r == before[r[0]]


def test_killed_process_resumes(tmp_path):
    cfg = tmp_path / "slow.yaml"
    cfg.write_text(TINY.replace("epochs: 3", "epochs: 40"))
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "robustad", "run", "--methods", "deepsvdd", "--classes", "0,1",
           "--config", str(cfg), "--out", str(out), "--quiet"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            try:
                if (out / "bench.sqlite").exists() and len(_rows(out)) >= 2:
                    break
            except sqlite3.OperationalError:  # the child has created the file, not yet the schema
                pass
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    before = {r[0]: r for r in _rows(out)}
    assert 2 <= len(before) < N_JOBS
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    after = _rows(out)
    assert len(after) == N_JOBS == len({r[0] for r in after})
    assert all(before[r[0]] == r for r in after if r[0] in before)
    assert not list((out / "checkpoints").glob("*.tmp"))


FAILING_PLUGIN = """
import torch
import robustad as ra

@ra.register_method("brittle")
class Brittle(ra.Detector):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()), requires_grad=False)

    def fit(self, data, ctx=None):
        if data.normal_class == 1:
            raise RuntimeError("cannot fit class one")
        self.build(tuple(data.train_x.shape[1:]))
        return self

    def score(self, x):
        return self.w * x.flatten(1).mean(1)
"""


def test_failed_job_is_stored_with_traceback_and_run_continues(tmp_path, monkeypatch, capsys):
    (tmp_path / "brittle_plugin.py").write_text(textwrap.dedent(FAILING_PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "res"
    code = main(["run", "--plugin", "brittle_plugin", "--methods", "brittle", "--classes", "0,1,2",
                 "--attacks", "fgsm", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 1
    with Store(out / "bench.sqlite") as store:
        failed = store.jobs(status="failed")
        assert len(failed) == 1 and failed[0]["normal_class"] == 1
        assert "cannot fit class one" in failed[0]["error"] and "Traceback" in failed[0]["error"]
        assert store.count(status="done") == 4  # classes 0 and 2: fit + fgsm each


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "deepsvd"], "unknown method 'deepsvd'. Did you mean 'deepsvdd'"),
        (["--attacks", "pgd,pgdd"], "unknown attack 'pgdd'. Did you mean"),
        (["--datasets", "cifar-10"], "unknown dataset"),
        (["--eps", "0"], "impossible"),
        (["--eps", "1"], "impossible"),
        (["--eps=-8/255"], "impossible"),
        (["--eps", "eight"], "cannot read ε"),
        (["--classes", "12"], "out of range"),
        (["--norm", "L3"], "unknown norm"),
        (["--preset", "huge"], "unknown preset"),
        (["--device", "cuda:7"], None),
    ],
)
def test_user_errors_exit_2_with_one_message(tmp_path, capsys, args, message):
    if args[0] == "--device":
        import torch

        if torch.cuda.is_available():
            pytest.skip("CUDA is available here")
        message = "CUDA is not available"
    code = main(["run", *args, "--out", str(tmp_path / "res"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unknown_config_key_and_bad_value(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\n")
    assert main(["run", "--config", str(bad), "--out", str(tmp_path)]) == 2
    assert "unknown config key(s) epochs" in capsys.readouterr().err
    bad.write_text("method_params:\n  deepsvdd: {depthh: 2}\n")
    assert main(["run", "--config", str(bad), "--out", str(tmp_path)]) == 2
    assert "no parameter(s) depthh" in capsys.readouterr().err
    assert main(["run", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_missing_and_corrupt_fmnist_files(tmp_path, monkeypatch, capsys):
    from robustad.datasets import fmnist

    monkeypatch.setattr(fmnist, "DEBIAN_DIR", tmp_path / "nowhere")
    root = tmp_path / "data"
    args = ["run", "--datasets", "fmnist", "--data-root", str(root), "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Fashion-MNIST not found" in err and "train-images-idx3-ubyte.gz" in err
    assert "--download" in err

    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in fmnist.FILES:
        (raw / name).write_bytes(b"\x1f\x8b\x08\x00garbage")  # a gzip header, then nothing
    fmnist._read_all.cache_clear()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "corrupt or truncated" in err and "train-images-idx3-ubyte.gz" in err
    assert not (tmp_path / "r" / "bench.sqlite").exists() or not _rows(tmp_path / "r")


def test_leaderboard_formats_and_list(tmp_path, tiny, capsys):
    out = tmp_path / "res"
    assert main(["leaderboard", "--out", str(out)]) == 2  # no store yet
    assert "no results store" in capsys.readouterr().err
    assert main([*tiny, "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["leaderboard", "--format", "latex", "--out", str(out)]) == 0
    tex = capsys.readouterr().out
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\textbf{" in tex
    assert tex == (out / "leaderboard.tex").read_text()
    assert main(["leaderboard", "--format", "md", "--attack-mode", "normal", "--out", str(out)]) == 0
    assert "attack mode 'normal'" in capsys.readouterr().out
    assert main(["plot", "--out", str(out)]) == 0
    assert ".png" in capsys.readouterr().out
    assert main(["list", "attacks", "p*"]) == 0
    assert "pgd" in capsys.readouterr().out
    assert main(["list", "methods"]) == 0
    assert "Ruff et al." in capsys.readouterr().out


def test_python_dash_m_entry_point():
    res = subprocess.run([sys.executable, "-m", "robustad", "list", "datasets"],
                         capture_output=True, text=True, timeout=120, env={**os.environ})  # fmt: skip
    assert res.returncode == 0 and "digits" in res.stdout


def test_data_root_is_part_of_the_fit_identity(tmp_path):
    from robustad.benchmark.runner import expand_grid
    from robustad.config import resolve

    base = {"methods": ["deepsvdd"], "classes": [0], "attacks": ["pgd"]}
    a = expand_grid(resolve("quick", overrides={**base, "data_root": str(tmp_path / "a")}))
    b = expand_grid(resolve("quick", overrides={**base, "data_root": str(tmp_path / "b")}))
    none = expand_grid(resolve("quick", overrides=base))
    ids = {g.fits[0].job_id for g in (a, b, none)}
    assert len(ids) == 3  # a folder dataset at another root is other data: never reuse its results


def test_a_methods_fit_version_is_part_of_its_fit_identity_only():
    from dataclasses import replace

    from robustad.benchmark.runner import expand_grid
    from robustad.config import resolve

    overrides = {"methods": ["ocsdf", "deepsvdd", "cobra"], "classes": [0]}
    grid = expand_grid(resolve("quick", overrides=overrides))
    by_method = {f.method: f for f in grid.fits}
    assert by_method["ocsdf"].method_version == 1 and "method_version" not in by_method["ocsdf"].spec
    # Deep SVDD's 2: the centre from the eval-mode network
    assert by_method["deepsvdd"].spec["method_version"] == 2
    cobra = by_method["cobra"]
    from robustad.registry import METHODS

    assert cobra.method_version == METHODS.get("cobra").factory.fit_version > 1
    # the version changes the id (a cached COBRA checkpoint from before the loss change
    # is not reused); version 1 leaves the spec as it was, so other ids are stable
    assert cobra.job_id != replace(cobra, method_version=1).job_id
    assert "method_version" not in replace(cobra, method_version=1).spec


@pytest.mark.parametrize("preset", ["quick", "standard", "paper", "fmnist"])
def test_every_preset_resolves_with_valid_parameters(preset):
    from robustad.config import resolve

    cfg = resolve(preset)
    assert cfg["preset"] == preset and cfg["methods"]


def test_test_subset_is_a_dataset_parameter_of_every_dataset(tmp_path, capsys):
    from robustad.config import resolve

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("dataset_params:\n  digits: {test_subset: 40}\n  fmnist: {test_subset: 2000}\n")
    assert resolve("quick", str(cfg_file))["dataset_params"]["digits"] == {"test_subset": 40}
    out = tmp_path / "run"
    args = ["run", "--methods", "deepsvdd", "--classes", "0", "--attacks", "fgsm", "--out", str(out)]
    assert main([*args, "--config", str(cfg_file)]) == 0
    with Store(out / "bench.sqlite") as store:
        (evaluation,) = store.jobs(kind="eval")
        assert len(store.samples(evaluation["job_id"])["labels"]) == 40
    cfg_file.write_text("dataset_params:\n  digits: {test_subset: 1}\n")
    assert main([*args, "--config", str(cfg_file)]) == 2
    assert "test_subset must be an integer of at least 2" in capsys.readouterr().err


def test_merge_of_runs_split_by_class_equals_one_run(tmp_path, tiny, capsys):
    for name, cls in (("a", "0"), ("b", "1")):  # the last --classes wins
        assert main([*tiny, "--classes", cls, "--out", str(tmp_path / name)]) == 0
    assert main([*tiny, "--out", str(tmp_path / "whole")]) == 0
    capsys.readouterr()

    merged = tmp_path / "merged"
    sources = [str(tmp_path / "a"), str(tmp_path / "b" / "bench.sqlite")]  # a folder or its store
    assert main(["merge", *sources, "--out", str(merged)]) == 0
    assert f"{N_JOBS} jobs copied, 0 already there" in capsys.readouterr().out
    for fit in (tmp_path / "a" / "checkpoints").glob("*.pt"):
        assert (merged / "checkpoints" / fit.name).read_bytes() == fit.read_bytes()
    # the merged folder is the whole run: nothing left to do, the same leaderboard
    assert main([*tiny, "--out", str(merged)]) == 0
    assert f"jobs: 0 run, {N_JOBS} already in the store" in capsys.readouterr().out
    assert (merged / "leaderboard.csv").read_text() == (tmp_path / "whole" / "leaderboard.csv").read_text()
    # merging again copies nothing and keeps every row as it was
    rows = _rows(merged)
    assert main(["merge", str(tmp_path / "a"), "--out", str(merged)]) == 0
    assert "0 jobs copied, 4 already there (kept), 0 conflicting" in capsys.readouterr().out
    assert _rows(merged) == rows


def test_merge_never_pairs_a_model_with_attacks_on_another_training(tmp_path, tiny, capsys):
    a = tmp_path / "a"
    assert main([*tiny, "--classes", "0", "--out", str(a)]) == 0
    # the same fit id trained again to other clean scores (as another thread count can)
    other = tmp_path / "other"
    other.mkdir()
    with Store(a / "bench.sqlite") as src, Store(other / "bench.sqlite") as dst:
        (fit,) = src.jobs(kind="fit")
        s = src.samples(fit["job_id"])
        dst.put(fit, labels=s["labels"], clean=s["clean"] + 1.0)
    target = tmp_path / "t"
    assert main(["merge", str(other), "--out", str(target)]) == 0
    capsys.readouterr()
    assert main(["merge", str(a), "--out", str(target)]) == 0
    assert "0 jobs copied, 0 already there (kept), 4 conflicting" in capsys.readouterr().out
    with Store(target / "bench.sqlite") as store:
        assert store.count(kind="eval") == 0
        assert np.array_equal(store.samples(fit["job_id"])["clean"], s["clean"] + 1.0)


def test_merge_of_a_missing_folder_is_one_sentence(tmp_path, capsys):
    assert main(["merge", str(tmp_path / "nowhere"), "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: no results store at") and err.count("\n") == 1
    Store(tmp_path / "t" / "bench.sqlite").close()
    assert main(["merge", str(tmp_path / "t"), "--out", str(tmp_path / "t")]) == 2
    assert "is the target of the merge" in capsys.readouterr().err
