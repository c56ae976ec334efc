"""The main job's progress lines: stage k of n, elapsed, what is left from the stages' recorded
times, and the last line's whole-run time against the floor; on a toy DVC project, for real."""
import json
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from pipelines.cli import progress


def _metrics(root: Path, stage: str, **values) -> None:
    path = progress.metrics_file(stage, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values))


def test_each_stage_kind_records_its_time_in_its_metrics_file(tmp_path):
    assert progress.metrics_file("train@mnist_cnn", tmp_path) == tmp_path / "metrics/mnist_cnn/train.json"
    assert progress.metrics_file("replicate@tl_scratch-3", tmp_path) == tmp_path / "metrics/replicates/tl_scratch-3.json"
    assert progress.metrics_file("embed@tl_svm", tmp_path) == tmp_path / "metrics/tl_svm/embed.json"
    assert progress.metrics_file("preprocess@mnist", tmp_path) is None and progress.metrics_file("report", tmp_path) is None
    _metrics(tmp_path, "train@a", seconds=12.5)
    _metrics(tmp_path, "evaluate@a", seconds="soon")          # not a number: no record
    (tmp_path / "metrics/b").mkdir()
    (tmp_path / "metrics/b/train.json").write_text("{not json")  # a broken file: no record, no crash
    assert progress.recorded("train@a", tmp_path) == 12.5
    assert progress.recorded("evaluate@a", tmp_path) is None and progress.recorded("train@b", tmp_path) is None
    assert progress.recorded("embed@a", tmp_path) is None   # never ran


def test_the_estimate_scales_the_records_by_how_this_run_compares(tmp_path):
    _metrics(tmp_path, "train@a", seconds=10.0)
    _metrics(tmp_path, "train@b", seconds=20.0)
    _metrics(tmp_path, "evaluate@a", seconds=5.0)
    stages = ["preprocess@x", "train@a", "train@b", "evaluate@a", "report"]
    p = progress.Progress(stages, set(), tmp_path, start=100.0)
    assert p.started("preprocess@x", 100.0) == ("[run] stage 1 of 5: preprocess@x | elapsed 0:00:00 | about 0:00:35 "
                                                 "left (recorded times of 3 of the 5 stages to go)")
    assert p.started("train@a", 104.0).startswith("[run] stage 2 of 5: train@a | elapsed 0:00:04 | about 0:00:35 left")
    # train@a took 20 s against its recorded 10: what is left (20 + 5 recorded) doubles.
    _metrics(tmp_path, "train@a", seconds=19.0)   # the stage's new record does not change the estimate's basis
    line = p.started("train@b", 124.0)
    assert line == ("[run] stage 3 of 5: train@b | elapsed 0:00:24 | about 0:00:50 left "
                    "(recorded times of 2 of the 3 stages to go)"), line
    assert p.started("report", 170.0) == "[run] stage 5 of 5: report | elapsed 0:01:10"   # nothing recorded left
    p.finish(171.0)
    assert p.walls == {"preprocess@x": 4.0, "train@a": 20.0, "train@b": 46.0, "report": 1.0}


def test_floor_line_sums_the_floors_of_the_training_stages_that_ran(tmp_path):
    _metrics(tmp_path, "train@a", seconds=10.0, floor_seconds=40.0)
    _metrics(tmp_path, "replicate@a-1", seconds=10.0, floor_seconds=20.0)
    _metrics(tmp_path, "train@b", seconds=10.0, floor_seconds=1000.0)   # did not run this time: not counted
    p = progress.Progress(["train@a", "replicate@a-1", "evaluate@a"], set(), tmp_path)
    p.walls = {"train@a": 50.0, "replicate@a-1": 30.0, "evaluate@a": 5.0}
    assert progress.floor_line(p, 180.0) == ("whole run 0:03:00 against a floor of 0:01:00 (the arithmetic of the 2 "
                                             "training stages that ran, at the measured GEMM peak): 3.0x")
    p.walls = {"evaluate@a": 5.0}
    assert "no training stage ran" in progress.floor_line(p, 9.0)


def test_outside_line_splits_the_run_into_bodies_start_up_and_the_rest(tmp_path):
    def clock(start, body, end):
        return {"process_start_epoch_seconds": start, "body_start_epoch_seconds": body, "end_epoch_seconds": end}
    _metrics(tmp_path, "train@a", seconds=40.0, clock=clock(1000.0, 1003.0, 1043.0))   # body 40, start-up 3
    _metrics(tmp_path, "evaluate@a", seconds=5.0, clock=clock(1050.0, 1052.0, 1057.0))  # body 5, start-up 2
    _metrics(tmp_path, "embed@a", seconds=9.0)   # older metrics without a clock: not counted
    p = progress.Progress(["train@a", "evaluate@a", "embed@a"], set(), tmp_path)
    p.walls = {"train@a": 48.0, "evaluate@a": 9.0, "embed@a": 12.0}
    line = progress.outside_line(p, 100.0)
    assert line.startswith("of which the bodies of the 2 clocked stages 0:00:45, their process start-up 0:00:05, "
                           "and the rest 0:00:50 ("), line
    p.walls = {"preprocess@x": 3.0}
    assert progress.outside_line(p, 3.0) is None


TOY_STAGE = ("import json, os, sys, time; key = sys.argv[1]; os.makedirs(f'metrics/{key}', exist_ok=True); "
             "time.sleep(0.3); json.dump({'seconds': 0.3, 'floor_seconds': 0.1}, open(f'metrics/{key}/train.json', 'w')); "
             "print(f'[001] epoch line of {key}', flush=True)")


@pytest.fixture
def toy(tmp_path):
    """A git + DVC project of three stages: train@a, train@b (each writes its metrics) and report."""
    root = tmp_path / "toy"
    root.mkdir()
    (root / "stage.py").write_text(TOY_STAGE)
    (root / "params.yaml").write_text("n: 1\n")
    (root / "dvc.yaml").write_text(textwrap.dedent("""\
        stages:
          train:
            foreach: [a, b]
            do:
              cmd: python3 stage.py ${item}
              deps: [stage.py]
              params: [n]
              metrics:
                - metrics/${item}/train.json:
                    cache: false
          report:
            cmd: python3 -c "print('report done')"
            deps: [metrics]
        """))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, env={**_env(), "DVC_NO_ANALYTICS": "1"})
    return root


def _env() -> dict:
    import os
    return {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@localhost"}


@pytest.mark.slow
def test_a_real_repro_prints_a_line_per_stage_and_keeps_the_stages_lines(toy, capsys):
    lines: list[str] = []
    t0 = time.monotonic()
    rc, ran = progress.repro([], toy, out=lines.append)
    assert rc == 0
    assert lines[0] == "[run] 3 stage(s) to run"
    assert [l.split(":")[0] for l in lines[1:]] == ["[run] stage 1 of 3", "[run] stage 2 of 3", "[run] stage 3 of 3"]
    assert " left " not in "".join(lines)   # a first run: no stage has a record yet
    assert set(ran.walls) == {"train@a", "train@b", "report"}
    passed = capsys.readouterr().out
    assert "[001] epoch line of a" in passed and "[001] epoch line of b" in passed and "report done" in passed
    assert "Running stage 'train@a'" in passed
    assert progress.floor_line(ran, time.monotonic() - t0).endswith("x")

    # Again, forced: now each train stage has a record, and nothing needs doing for the DAG's plan but them.
    lines.clear()
    rc, ran = progress.repro(["--force"], toy, out=lines.append)
    assert rc == 0 and "left (recorded times of 2 of the 3 stages to go)" in lines[1], lines
    # Up to date: nothing to run, no stage line.
    lines.clear()
    rc, ran = progress.repro([], toy, out=lines.append)
    assert rc == 0 and lines == ["[run] 0 stage(s) to run"] and not ran.walls


@pytest.mark.slow
def test_a_fresh_project_plans_every_stage_in_dvcs_order(tmp_path):
    # `dvc repro --dry` stops at `use`, whose input `made` does not exist yet: the plan is then DVC's
    # own order of every stage, so a first run still says "stage k of n".
    (tmp_path / "dvc.yaml").write_text(textwrap.dedent("""\
        stages:
          use:
            cmd: cat made > used
            deps: [made]
            outs: [used]
          make:
            cmd: echo hi > made
            outs: [made]
        """))
    env = {"DVC_NO_ANALYTICS": "1", "PATH": __import__("os").environ["PATH"]}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True, env=env)
    dry = subprocess.run(["dvc", "repro", "--dry"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert dry.returncode != 0
    assert progress.plan([], tmp_path, env) == (["make", "use"], set())
    assert progress.plan(["use"], tmp_path, env) == ([], set())   # named targets: no guess
