"""``bench run --executor ray`` on a real local Ray (2 CPUs): same stores as ``local``,
failures stored, a killed driver resumes, user errors exit 2.

Skipped when Ray is not installed (``pip install -e '.[ray]'``; ``.ci/run`` installs it).
"""

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
import torch

ray = pytest.importorskip("ray")

from robustad.benchmark import driver  # noqa: E402
from robustad.benchmark.store import Store  # noqa: E402
from robustad.cli import main  # noqa: E402

TINY = """
method_params:
  deepsvdd: {epochs: 3, width: 8}
attack_params:
  pgd: {steps: 2}
"""
N_JOBS = 2 * (1 + 3)  # 2 classes × (fit + noise, fgsm, pgd)
# what differs between two runs of the same jobs: when, and the code's location in a traceback
VOLATILE = {"started", "finished", "duration", "git_rev", "error"}


def _args(tmp_path, out, text=TINY, *extra):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(text)
    return ["run", "--methods", "deepsvdd", "--classes", "0,1", "--config", str(cfg),
            "--out", str(out), "--quiet", *extra]  # fmt: skip


def assert_same_store(a, b):
    """Same job ids, rows (but timings), metrics and bitwise per-sample scores and maps."""
    with Store(a / "bench.sqlite") as sa, Store(b / "bench.sqlite") as sb:
        ra = {r["job_id"]: r for r in sa.jobs()}
        rb = {r["job_id"]: r for r in sb.jobs()}
        assert ra.keys() == rb.keys()
        for job_id, row in ra.items():
            assert {k: v for k, v in row.items() if k not in VOLATILE} == {
                k: v for k, v in rb[job_id].items() if k not in VOLATILE
            }, job_id
            for one, other in ((sa.samples(job_id), sb.samples(job_id)), (sa.maps(job_id), sb.maps(job_id))):
                assert (one is None) == (other is None)
                for key in one or {}:
                    if one[key] is None:
                        assert other[key] is None
                    else:
                        assert one[key].dtype == other[key].dtype
                        assert one[key].tobytes() == other[key].tobytes(), (job_id, key)


@pytest.fixture
def one_thread():
    """Local runs on one torch thread, as each Ray task (--ray-cpus-per-task 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# First, before the fixture below starts a Ray: 'auto' finds any Ray running on this machine.
def test_address_auto_without_a_cluster_is_exit_2(tmp_path, capsys):
    from ray._private.services import find_gcs_addresses

    if ray.is_initialized() or find_gcs_addresses():
        pytest.skip("a Ray is running on this machine")
    code = main(_args(tmp_path, tmp_path / "res", TINY, "--executor", "ray", "--ray-address", "auto"))
    err = capsys.readouterr().err
    assert code == 2
    assert "--ray-address auto: no Ray cluster is running on this machine" in err
    assert "ray start --head" in err and "Traceback" not in err
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--ray-cpus-per-task", "0"], "ray_cpus_per_task must be a positive number"),
        (["--ray-gpus-per-task", "1", "--device", "cpu"], "asks for GPUs but the run's device is cpu"),
        (["--ray-gpus-per-task=-1"], "ray_gpus_per_task must be a number >= 0"),
    ],
)
def test_bad_task_resources_are_exit_2_before_anything_runs(tmp_path, capsys, extra, message):
    out = tmp_path / "res"
    assert main(_args(tmp_path, out, TINY, "--executor", "ray", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (out / "bench.sqlite").exists() or not Store(out / "bench.sqlite").count()


@pytest.fixture(scope="session")
def local_ray():
    """A local Ray with 2 CPUs for the whole session; runs reuse it (no --ray-address)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def test_ray_and_local_give_identical_stores(tmp_path, local_ray, one_thread, capsys):
    assert main(_args(tmp_path, tmp_path / "local")) == 0
    assert main(_args(tmp_path, tmp_path / "ray", TINY, "--executor", "ray")) == 0
    assert f"jobs: {N_JOBS} run, 0 already in the store, 0 failed" in capsys.readouterr().out
    assert_same_store(tmp_path / "local", tmp_path / "ray")
    # the same command resumes nothing, whichever executor finished the jobs
    assert main(_args(tmp_path, tmp_path / "local", TINY, "--executor", "ray")) == 0
    assert f"jobs: 0 run, {N_JOBS} already in the store, 0 failed" in capsys.readouterr().out


PLUGIN = """
import torch
import robustad as ra
from robustad.errors import UserError

@ra.register_method("{name}")
class Brittle(ra.Detector):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()), requires_grad=False)

    def fit(self, data, ctx=None):
        if data.normal_class == 1:
            raise {error}("cannot fit class one")
        self.build(tuple(data.train_x.shape[1:]))
        return self

    def score(self, x):
        return self.w * x.flatten(1).mean(1)
"""


def _plugin(tmp_path, name, error):
    path = tmp_path / f"{name}_plugin.py"
    path.write_text(textwrap.dedent(PLUGIN.format(name=name, error=error)))
    return str(path)


def test_a_failing_job_is_stored_with_its_traceback_and_the_rest_finish(tmp_path, local_ray):
    plugin = _plugin(tmp_path, "brittle_on_ray", "RuntimeError")
    out = tmp_path / "res"
    code = main(["run", "--executor", "ray", "--plugin", plugin, "--methods", "brittle_on_ray",
                 "--classes", "0,1,2", "--attacks", "fgsm", "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 1
    with Store(out / "bench.sqlite") as store:
        (failed,) = store.jobs(status="failed")
        assert failed["normal_class"] == 1 and failed["kind"] == "fit"
        assert "cannot fit class one" in failed["error"] and "Traceback" in failed["error"]
        assert store.count(status="done") == 4  # classes 0 and 2: fit + fgsm each
        assert not list((out / "checkpoints").glob("*.tmp"))


def test_a_user_error_in_a_task_stops_the_run_with_exit_2(tmp_path, local_ray, capsys):
    plugin = _plugin(tmp_path, "misconfigured_on_ray", "UserError")
    out = str(tmp_path / "res")
    code = main(["run", "--executor", "ray", "--plugin", plugin, "--methods", "misconfigured_on_ray",
                 "--classes", "1", "--attacks", "fgsm", "--out", out, "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "bench: error: cannot fit class one" in err and "Traceback" not in err


def test_ctrl_c_stops_every_task_and_exits_2(tmp_path, local_ray, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(driver.Writer, "fit_done", interrupt)
    assert main(_args(tmp_path, tmp_path / "res", TINY, "--executor", "ray")) == 2
    assert "run the same command again" in capsys.readouterr().err
    assert ray.is_initialized()  # the session's Ray is kept; its tasks were cancelled


def _rows(out):
    con = sqlite3.connect(out / "bench.sqlite")
    try:
        return con.execute("SELECT job_id, kind, status, finished FROM jobs").fetchall()
    finally:
        con.close()


def test_a_killed_driver_resumes_to_the_rows_of_an_uninterrupted_run(tmp_path, local_ray, one_thread):
    slow = TINY.replace("epochs: 3", "epochs: 15")
    out = tmp_path / "res"
    # a driver in another process, on this session's Ray by its address
    cmd = [sys.executable, "-m", "robustad",
           *_args(tmp_path, out, slow, "--executor", "ray", "--ray-address", local_ray)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600  # generous: on a loaded machine the first fit can take minutes
    try:
        while time.time() < deadline and proc.poll() is None:
            try:
                if (out / "bench.sqlite").exists() and any(r[1] == "eval" for r in _rows(out)):
                    break  # a fit and one of its evals are stored
            except sqlite3.OperationalError:  # the file exists, not yet the schema
                pass
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no eval row was stored within the deadline; nothing to resume"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    before = {r[0]: r for r in _rows(out)}
    assert 2 <= len(before) < N_JOBS

    assert main(_args(tmp_path, out, slow, "--executor", "ray")) == 0
    after = _rows(out)
    assert len(after) == N_JOBS == len({r[0] for r in after})
    assert all(before[r[0]] == r for r in after if r[0] in before)  # finished jobs kept as they were
    assert not list((out / "checkpoints").glob("*.tmp"))
    assert main(_args(tmp_path, tmp_path / "uninterrupted", slow)) == 0
    assert_same_store(out, tmp_path / "uninterrupted")
