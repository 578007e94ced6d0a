"""Studies through the real CLI, real local Ray (in a child driver process) and a real MLflow
server: tracking, relaunch = resume, and the failures a study must survive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from study import cli
from transinv import metrics
from transinv.results import best_regimes, curves, load_runs

pytestmark = pytest.mark.slow(minutes=10)

SPACE = """\
# test study: {name}
study: {name}
objective: {{metric: finetune/acc_untrained, mode: max}}
search: {{sampler: {sampler}, seed: 0}}
samples: {samples}
max_concurrent: 2
resources: {{cpu: 1, gpu: 0}}
fixed:
  model.arch: tiny_cnn
  canvas.size: 32
  canvas.item_size: 8
  pretrain.steps: {pretrain_steps}
  finetune.steps: {finetune_steps}
  optim.batch_size: 16
  eval.every: 10
  eval.items: 16
  eval.pretrain_items: 32
  eval.grid_step: 0.25
  run.threads: 1
space:
{space}
"""


def write_space(tmp_path: Path, name: str, space: str, sampler: str = "tpe", samples: int = 2,
                pretrain_steps: int = 20, finetune_steps: int = 20) -> Path:  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        SPACE.format(
            name=name,
            sampler=sampler,
            samples=samples,
            pretrain_steps=pretrain_steps,
            finetune_steps=finetune_steps,
            space=textwrap.indent(space.strip(), "  "),
        )
    )
    return path


def driver(space: Path, uri: str, home: Path, *extra: str) -> subprocess.Popen:
    """`python -m study run` as a child in its own process group (so a test can kill it and
    everything it started, and nothing else)."""
    env = {**os.environ, "TRANSINV_HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "study", "run", str(space), "--tracking-uri", uri, *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def kill_group(proc: subprocess.Popen) -> None:
    """Everything the driver started (its local Ray included) dies with it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def trial_runs(uri: str, study: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], "tags.`transinv.role` = 'trial'")


def progress(run) -> tuple[str, int]:
    """(phase, step) of a trial run's latest evaluation, from its progress tag."""
    phase, _, step = run.data.tags.get("transinv.progress", " -1").partition(" ")
    return phase, int(step)


def assert_one_point_per_step(uri: str, study: str, pretrain_steps: int, finetune_steps: int,
                              every: int = 10) -> None:  # fmt: skip
    """MLflow's own history (not `results.curves`, which dedupes) holds exactly one point per
    (run, key, step) for every key of every trial run, and every evaluation step is there."""
    client = MlflowClient(uri)
    schedule = {metrics.PRETRAIN_ACC: pretrain_steps, metrics.ACC_UNTRAINED: finetune_steps}
    for run in trial_runs(uri, study):
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (run.info.run_name, key, sorted(steps))
            if key in schedule:
                assert set(steps) == set(range(0, schedule[key] + 1, every)), (key, steps)
        assert metrics.ACC_UNTRAINED in run.data.metrics, run.info.run_name


def wait_for(predicate, timeout: float = 120, every: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("condition not met in time")


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tracking_uri):
    """A two-trial study run to completion once; (space file, state dir)."""
    tmp = tmp_path_factory.mktemp("track")
    space = write_space(tmp, "track", "pretrain.dataset: {choice: [none, glyphs]}", samples=2)
    code, out = finish(driver(space, tracking_uri, tmp / "home"))
    assert code == 0, out
    assert "2 of 2 trials finished" in out
    return space, tmp / "home"


def test_study_tracks_every_trial_in_mlflow(finished, tracking_uri):
    runs = load_runs("track", tracking_uri)
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"}
    assert runs["canvas.size"].dtype == "int64" and runs["optim.lr"].dtype == "float64"
    assert str(runs["model.arch"].dtype) == "str"
    assert metrics.ACC_UNTRAINED in runs and runs[metrics.ACC_UNTRAINED].notna().all()
    long = curves(runs, [metrics.ACC_UNTRAINED, "invariance/G/fc1"])
    assert set(long["step"]) == {0, 10, 20}
    assert not long.duplicated(["run_id", "key", "step"]).any()
    assert_one_point_per_step(tracking_uri, "track", 20, 20)

    client = MlflowClient(tracking_uri)
    run = client.get_run(runs["run_id"][0])
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["transinv.role"] == "study" and parent.info.status == "FINISHED"
    assert parent.data.tags["version.ray"] == "2.60.0"
    assert any(a.path == "track.yaml" for a in client.list_artifacts(parent.info.run_id))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"forgetting.png", "invariance_by_layer.png", "final_grid.json"} <= artifacts
    assert "heatmaps" in artifacts  # each evaluation's rendered maps (runlog.heatmap_path)

    table = best_regimes(runs, metrics.ACC_UNTRAINED, by=["pretrain.dataset"])
    assert set(table["pretrain.dataset"]) == {"none", "glyphs"} and set(table["n"]) == {1}


def test_relaunching_a_finished_study_redoes_nothing(finished, tracking_uri):
    space, home = finished

    def snapshot():  # repr: NaN metrics compare equal
        return {r.info.run_id: repr(sorted(r.data.metrics.items()))
                for r in trial_runs(tracking_uri, "track")}  # fmt: skip

    before = snapshot()
    code, out = finish(driver(space, tracking_uri, home))
    assert code == 0, out
    assert snapshot() == before


def test_query_commands_answer_from_mlflow(finished, tracking_uri, tmp_path, capsys, monkeypatch):
    _, home = finished
    monkeypatch.setenv("TRANSINV_HOME", str(home))
    metric = metrics.ACC_UNTRAINED
    assert cli.main(["best", "track", "--metric", metric, "--tracking-uri", tracking_uri]) == 0
    best = capsys.readouterr().out
    assert "pretrain.dataset" in best and "glyphs" in best and "mean" in best
    assert cli.main(["status", "track", "--tracking-uri", tracking_uri]) == 0
    assert '"FINISHED": 2' in capsys.readouterr().out
    assert cli.main(["list", "--tracking-uri", tracking_uri]) == 0
    assert "track" in capsys.readouterr().out
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert cli.main(["export-optuna", "track", "--storage-url", url]) == 0
    exported = optuna.load_study(study_name="track", storage=url)
    assert len(exported.trials) == 2
    assert {t.params["pretrain.dataset"] for t in exported.trials} == {"none", "glyphs"}
    assert cli.main(["best", "nosuch", "--metric", metric, "--tracking-uri", tracking_uri]) == 2


def test_dry_run_lists_grid_trials_without_ray(tmp_path, capsys):
    space = write_space(
        tmp_path, "dry", "optim.lr: {grid: [0.001, 0.01]}\nseed: {grid: [0, 1, 2]}",
        sampler="grid", samples=2,
    )  # fmt: skip
    assert cli.main(["run", str(space), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "12 trials" in out and out.count("optim.lr=") == 12  # the grid, twice


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_study_exits_nonzero_and_resumes(tmp_path, tracking_uri, home, signum, capsys):
    """Ctrl-C (SIGINT) and SIGTERM both stop the study resumably: in-flight trials continue
    from their checkpoints on relaunch."""
    name = f"sig{int(signum)}"
    space = write_space(
        tmp_path, name, "optim.lr: {loguniform: [0.001, 0.01]}",
        samples=2, pretrain_steps=200, finetune_steps=100,
    )  # fmt: skip
    proc = driver(space, tracking_uri, home)

    def past_step_40(run) -> bool:
        phase, step = progress(run)
        return phase == "finetune" or (phase == "pretrain" and step >= 40)

    wait_for(lambda: any(past_step_40(r) for r in trial_runs(tracking_uri, name)))
    time.sleep(2)  # let the driver register the checkpoint it has been sent
    os.kill(proc.pid, signum)
    code, out = finish(proc)
    assert code == 130 and "to resume" in out, out
    interrupted = trial_runs(tracking_uri, name)
    # Cut off mid-training: KILLED, not FINISHED, and `study status` says so.
    assert interrupted and {r.info.status for r in interrupted} == {"KILLED"}
    assert all(progress(r)[0] != "done" for r in interrupted)
    kill_group(proc)  # what the interrupted driver left of its local Ray
    assert cli.main(["status", name, "--tracking-uri", tracking_uri]) == 0
    assert f'"KILLED": {len(interrupted)}' in capsys.readouterr().out

    code, out = finish(driver(space, tracking_uri, home))
    assert code == 0, out
    runs = trial_runs(tracking_uri, name)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.info.run_id for r in interrupted} <= {r.info.run_id for r in runs}  # same runs
    assert_one_point_per_step(tracking_uri, name, 200, 100)
    # Resumed, not restarted: step 0 of pretraining was logged once per run.
    long = curves(load_runs(name, tracking_uri), [metrics.PRETRAIN_ACC])
    assert not long.duplicated(["run_id", "key", "step"]).any()
    for run in interrupted:
        history = MlflowClient(tracking_uri).get_metric_history(
            run.info.run_id, metrics.PRETRAIN_ACC
        )
        assert [m.step for m in history].count(0) == 1


def test_killed_trial_worker_is_retried_into_the_same_run(tmp_path, tracking_uri, home):
    space = write_space(
        tmp_path, "worker", "optim.lr: {loguniform: [0.001, 0.01]}",
        samples=1, pretrain_steps=200, finetune_steps=60,
    )  # fmt: skip
    proc = driver(space, tracking_uri, home)

    def worker_pid():
        for run in trial_runs(tracking_uri, "worker"):
            if metrics.PRETRAIN_ACC in run.data.metrics and "transinv.pid" in run.data.tags:
                return int(run.data.tags["transinv.pid"])
        return None

    pid = wait_for(worker_pid)
    os.kill(pid, signal.SIGKILL)
    code, out = finish(proc)
    assert code == 0, out
    runs = trial_runs(tracking_uri, "worker")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert int(runs[0].data.tags["transinv.pid"]) != pid  # the retry ran in a new worker
    long = curves(load_runs("worker", tracking_uri), [metrics.PRETRAIN_LOSS])
    assert not long.duplicated(["run_id", "key", "step"]).any()
    assert long["step"].max() == 200


def test_killed_driver_resumes_without_duplicate_runs(tmp_path, tracking_uri, home):
    space = write_space(
        tmp_path, "killed", "optim.lr: {loguniform: [0.001, 0.01]}",
        samples=3, pretrain_steps=60, finetune_steps=60,
    )  # fmt: skip
    proc = driver(space, tracking_uri, home)

    def some_progress():
        runs = trial_runs(tracking_uri, "killed")
        return any(r.data.metrics.get(metrics.PRETRAIN_ACC) is not None for r in runs)

    wait_for(some_progress)
    kill_group(proc)
    assert any(r.info.status == "RUNNING" for r in trial_runs(tracking_uri, "killed"))
    # As if killed while Tune rewrote its state (seen under load: Tune's restore then failed
    # and started the study over): the state file is left empty.
    states = list((home / "ray_results" / "killed").glob("experiment_state-*.json"))
    assert len(states) == 1
    states[0].write_bytes(b"")

    code, out = finish(driver(space, tracking_uri, home))
    assert code == 0, out
    assert "resuming from its last complete copy" in out, out
    runs = trial_runs(tracking_uri, "killed")
    assert len(runs) == 3
    assert {r.info.status for r in runs} == {"FINISHED"}
    frame = load_runs("killed", tracking_uri)
    long = curves(frame, [metrics.PRETRAIN_LOSS, metrics.ACC_UNTRAINED])
    assert not long.duplicated(["run_id", "key", "step"]).any()
    assert set(long[long["key"] == metrics.ACC_UNTRAINED]["step"]) == {0, 10, 20, 30, 40, 50, 60}
    assert_one_point_per_step(tracking_uri, "killed", 60, 60)


def test_nan_loss_fails_that_trial_only_and_names_phase_and_step(tmp_path, tracking_uri, home):
    space = write_space(tmp_path, "nan", "optim.lr: {grid: [0.001, 1.0e+30]}", sampler="grid")
    code, out = finish(driver(space, tracking_uri, home))
    assert code != 0
    runs = {r.data.params["optim.lr"]: r for r in trial_runs(tracking_uri, "nan")}
    assert len(runs) == 2
    assert runs["0.001"].info.status == "FINISHED"
    failed = runs["1e+30"]
    assert failed.info.status == "FAILED"
    assert "loss is nan at pretrain step" in failed.data.tags["transinv.error"]


def test_unreachable_tracking_server_fails_fast_with_a_clear_error(tmp_path, home):
    space = write_space(tmp_path, "nowhere", "optim.lr: {loguniform: [0.001, 0.01]}")
    started = time.monotonic()
    code, out = finish(driver(space, "http://127.0.0.1:9", home), timeout=60)
    assert code != 0
    assert "http://127.0.0.1:9" in out and "unreachable" in out
    assert time.monotonic() - started < 30  # 10 s budget plus interpreter start
    code, out = finish(driver(space, "file:///tmp/mlruns", home), timeout=60)
    assert code != 0 and "not an http(s):// server" in out


def test_changed_space_is_refused_on_resume(tmp_path, tracking_uri, home):
    space = write_space(tmp_path, "changed", "optim.lr: {loguniform: [0.001, 0.01]}", samples=1)
    code, out = finish(driver(space, tracking_uri, home))
    assert code == 0, out
    space.write_text(space.read_text().replace("0.01]", "0.02]"))
    code, out = finish(driver(space, tracking_uri, home), timeout=60)
    assert code == 2 and "different space" in out


def test_ui_stops_its_server_on_sigterm_and_refuses_a_taken_port(tmp_path, monkeypatch, capsys):
    from study.server import free_port
    from transinv.tracking import TrackingError, check_reachable

    port = free_port()
    env = {**os.environ, "TRANSINV_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "study", "ui", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is None and "MLflow UI:" in log.read_text(), timeout=90)
        # A second UI on the same port says so instead of "serving" the other one.
        monkeypatch.setenv("TRANSINV_HOME", str(tmp_path / "other"))
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert cli.main(["ui", "--port", str(port)]) == 1
        assert f"port {port} on 127.0.0.1 is in use" in capsys.readouterr().err
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        with pytest.raises(TrackingError):
            check_reachable(uri, timeout_s=2.0)
    finally:
        kill_group(proc)


@pytest.fixture(scope="module")
def conditions(tmp_path_factory, tracking_uri):
    """A grid study of two conditions x two seeds, where pretrain.translation is active only
    with a pretraining set and a constraint is in the file."""
    tmp = tmp_path_factory.mktemp("conds")
    space = write_space(
        tmp, "conds",
        "pretrain.dataset: {grid: [none, glyphs]}\n"
        "pretrain.translation: {grid: [0.5], when: {pretrain.dataset: glyphs}}\n"
        "seed: {grid: [0, 1]}",
        sampler="grid", samples=1, pretrain_steps=10, finetune_steps=10,
    )  # fmt: skip
    space.write_text(space.read_text() + 'constraints: ["finetune/acc_trained >= 0"]\n')
    code, out = finish(driver(space, tracking_uri, tmp / "home"))
    assert code == 0, out
    return "conds"


def test_best_ranks_the_studys_conditions_under_its_constraints(conditions, tracking_uri, capsys):
    """Through the real CLI: a condition is every key the study varies (seeds apart), the
    study's constraint applies without --where, --where adds to it, and a key the study's
    `when` left inactive is blank, not its default."""
    args = ["best", conditions, "--metric", metrics.ACC_UNTRAINED, "--tracking-uri", tracking_uri]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "constraints (on each condition's mean): finetune/acc_trained >= 0"
    header, rows = lines[1].split(), [line.split() for line in lines[2:]]
    assert header[:2] == ["pretrain.dataset", "pretrain.translation"]
    assert "finetune/acc_trained" in header and "seeds" in header
    assert sorted(row[0] for row in rows) == ["glyphs", "none"]  # two conditions, not pooled
    for row in rows:
        assert row[-3:-1] == ["2", "0,1"], row  # n and seeds: one trial per seed
    # the vanilla condition has a blank translation cell: one field fewer than the glyph one
    none, glyphs = (next(r for r in rows if r[0] == d) for d in ("none", "glyphs"))
    assert glyphs[1] == "0.5" and len(none) == len(glyphs) - 1
    assert cli.main([*args, "--where", "finetune/acc_trained > 2"]) == 0
    out = capsys.readouterr().out
    assert "finetune/acc_trained >= 0; finetune/acc_trained > 2" in out
    assert "no condition of conds" in out


def test_runs_are_named_by_condition_with_readable_heatmaps_and_few_summary_charts(
    conditions, tracking_uri, tmp_path
):
    client = MlflowClient(tracking_uri)
    runs = trial_runs(tracking_uri, conditions)
    names = sorted(r.info.run_name for r in runs)
    assert names == ["glyphs r=0.5 s0", "glyphs r=0.5 s1", "no-pretrain s0", "no-pretrain s1"]
    assert all(r.data.tags["ray.trial_id"] for r in runs)  # the trial id stays a tag
    run = runs[0]
    # One-point numbers: forgetting drops are metrics, peak steps and times summary tags,
    # which load_runs still reads as columns.
    assert not [k for k in run.data.metrics if k.startswith("time/") or "peak_step" in k]
    assert metrics.drop_key(metrics.ACC_UNTRAINED) in run.data.metrics
    frame = load_runs(conditions, tracking_uri)
    assert frame[metrics.time_key("finetune")].notna().all()
    assert frame[metrics.peak_step_key(metrics.ACC_UNTRAINED)].notna().all()
    # The accuracy heatmap of each evaluation is a rendered map in step order, not a 3x3 block.
    folder = "heatmaps/finetune_acc_grid"
    acc = [a.path for a in client.list_artifacts(run.info.run_id, folder)]
    assert acc == [f"{folder}/finetune_step_{s:06d}.png" for s in (0, 10)], acc
    from PIL import Image

    path = client.download_artifacts(run.info.run_id, acc[-1], str(tmp_path))
    assert min(Image.open(path).size) >= 400


def test_profile_says_where_the_study_time_went(finished, tracking_uri, capsys):
    from transinv.study_cost import study_cost

    table = study_cost("track", tracking_uri)
    seconds = dict(zip(table["part"], table["seconds"], strict=True))
    assert table.attrs["trials"] == 2 and table.attrs["slots"] in (1, 2)
    for part in ("setup", "pretrain", "finetune", "eval", "report", "tracking", "tracking_wait"):
        assert seconds[part] > 0, part  # the glyphs trial pretrains; every trial is tracked
    # The trainer's parts fit inside the trial runs, and the runs inside the study's slot time.
    assert seconds["trial_other"] >= 0
    assert seconds["ray_overhead"] > 0  # Ray start-up and worker processes at the least
    assert seconds["cache_saved"] == 0 and table.attrs["cache_hits"] == 0
    # Instrument check: the booked parts and the two remainders add up to the slot time.
    assert table["share"].sum() == pytest.approx(1.0)
    assert cli.main(["profile", "track", "--tracking-uri", tracking_uri]) == 0
    out = capsys.readouterr().out
    assert "study track: 2 finished trials" in out and "ray_overhead" in out
