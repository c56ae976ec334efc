"""No leftovers: a stage killed with SIGKILL in the middle of writing leaves its old output intact, and the
next run of that stage removes the temporary names the kill left (pipelines.io.remove_stale_temps), so
none survives under data/, models/, results/ or metrics/. Every stage of dvc.yaml clears its own, and only
its own, as it starts."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipelines import profiles
from pipelines.cli.variant_stage import variant_stage
from pipelines.io import ANY_TEMP, file_digest
import isolation

REPO = Path(__file__).resolve().parents[1]
OUTPUT_ROOTS = ("data", "models", "results", "metrics")

# Runs a stage module as `python -m` would, pausing (for the kill) when it opens for writing a path the
# pattern matches: an audit hook observes the real code path, it changes nothing in it.
PAUSER = r"""
import os, re, runpy, sys, time
pattern, marker, module, *args = sys.argv[1:]
pattern = re.compile(pattern)

def hook(event, a):
    if event == "open" and isinstance(a[1], str) and any(c in a[1] for c in "wax+"):
        path = os.fsdecode(a[0]) if isinstance(a[0], (str, bytes, os.PathLike)) else ""
        if pattern.search(path):
            os.close(os.open(marker, os.O_CREAT | os.O_WRONLY))
            time.sleep(600)

sys.addaudithook(hook)
sys.argv = [module, *args]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _project(tmp_path: Path) -> Path:
    """A working folder with the tiny offline params (Debian's Fashion-MNIST and the EfficientNet wheel)."""
    root = tmp_path / "lab"
    root.mkdir()
    p = profiles.tiny(isolation.committed_params())
    p["protocol"] = "offline"
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    (root / "reference.yaml").write_text(isolation.committed_text("reference.yaml"))
    return root


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": isolation.pythonpath(REPO), "DVC_NO_ANALYTICS": "1"}


def _stage(root: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", module, *args], cwd=root, env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"{module} {args} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


def _kill_while_writing(root: Path, pattern: str, module: str, *args: str) -> None:
    """Start the stage, wait until it opens a file the pattern matches for writing, SIGKILL it."""
    marker = root.parent / "paused"
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", PAUSER, pattern, str(marker), module, *args], cwd=root,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"{module} ended (exit {proc.returncode}) before writing {pattern}:\n{proc.stdout.read()[-2000:]}")
        assert time.monotonic() < deadline, f"{module} never opened {pattern} for writing"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _temp_names(root: Path) -> list[str]:
    """What `find data models results metrics -name '*.tmp*'` would list."""
    return [str(p.relative_to(root)) for top in OUTPUT_ROOTS if (root / top).exists()
            for p in (root / top).rglob("*") if ".tmp" in p.name]


@pytest.mark.slow
def test_a_killed_preprocess_leaves_the_old_output_and_the_rerun_leaves_no_temporary_name(tmp_path):
    root = _project(tmp_path)
    out = root / "data" / "prepared" / "mnist"
    _stage(root, "stages.download", "--dataset", "mnist", "--out", "data/raw/mnist")
    _stage(root, "stages.preprocess", "--dataset", "mnist", "--raw", "data/raw/mnist", "--out", str(out))
    before = _snapshot(out)
    # Killed once train.npz is written and val.npz is being written, inside the temporary folder.
    _kill_while_writing(root, r"/\.mnist\.[a-z0-9_]{8}\.tmp/\.val\.npz\.[a-z0-9_]{8}\.tmp$",
                        "stages.preprocess", "--dataset", "mnist", "--raw", "data/raw/mnist", "--out", str(out))
    left = _temp_names(root)
    assert any(re.fullmatch(r"data/prepared/\.mnist\.[a-z0-9_]{8}\.tmp", n) for n in left), left   # the kill's mess
    assert _snapshot(out) == before   # the old output, untouched
    r = _stage(root, "stages.preprocess", "--dataset", "mnist", "--raw", "data/raw/mnist", "--out", str(out))
    assert "left by an interrupted run" in r.stdout
    assert _temp_names(root) == []
    assert _snapshot(out) == before   # same data, same bytes


@pytest.mark.slow
def test_a_killed_weights_copy_is_cleared_by_the_next_download(tmp_path):
    root = _project(tmp_path)
    weights = root / "data" / "raw" / "transfer" / "weights"
    _kill_while_writing(root, r"/weights/\..+\.pth\.[a-z0-9_]{8}\.tmp$",
                        "stages.download", "--dataset", "transfer", "--out", "data/raw/transfer")
    assert [p.name for p in weights.iterdir() if ANY_TEMP.fullmatch(p.name)], "the kill left no temporary file"
    assert not (root / "data" / "raw" / "transfer" / "SOURCE.json").exists()
    _stage(root, "stages.download", "--dataset", "transfer", "--out", "data/raw/transfer")
    assert _temp_names(root) == []
    assert (root / "data" / "raw" / "transfer" / "SOURCE.json").is_file()
    assert [p.name for p in weights.iterdir()] == ["efficientnet-lite0-57934424.pth"]


def _stage_calls() -> list[tuple[str, str, list[str], list[str]]]:
    """(stage, module, argv, outputs) of every stage in dvc.yaml, with sample values for its templates."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    values = {"key": "v1", "item.dataset": "ds1", "item.variant": "v1", "item.seed": "3",
              "replicates.dataset": "ds1"}
    calls = []
    for name, spec in stages.items():
        spec = spec.get("do", spec)
        fill = lambda s: re.sub(r"\$\{([^}]+)\}", lambda m: values[m.group(1)], s)   # noqa: E731
        cmd = fill(" ".join(spec["cmd"].split())).split()
        assert cmd[:2] == ["python", "-m"], cmd
        outs = [fill(o) for o in spec.get("outs", [])]
        outs += [fill(next(iter(m)) if isinstance(m, dict) else m) for m in spec.get("metrics", [])]
        calls.append((name, cmd[2], cmd[3:], outs))
    return calls


@pytest.mark.parametrize("stage, module, argv, outputs", _stage_calls(), ids=[c[0] for c in _stage_calls()])
def test_every_stage_clears_its_own_leftovers_as_it_starts(tmp_path, monkeypatch, capsys, stage, module, argv, outputs):
    monkeypatch.chdir(tmp_path)   # no params.yaml here: each stage stops at once, after its clearing
    planted, kept = [], []
    for out in map(Path, outputs):
        out.parent.mkdir(parents=True, exist_ok=True)
        beside = out.parent / f".{out.name}.k1ll3d_x.tmp"
        (beside / "inner").mkdir(parents=True)
        (beside / "inner" / "half.npz").write_bytes(b"half")
        legacy = out.parent / f".{out.name}.old.abcd1234"
        legacy.mkdir()
        planted += [beside, legacy]
        kept += [out.parent / f".{out.name}x.abcd1234.tmp", out.parent / f"{out.name}.abcd1234.tmp"]
        if not out.suffix:   # a folder output: a leftover deep inside it, and a file of the user's
            (out / "sub").mkdir(parents=True)
            planted.append(out / "sub" / ".model.pt.zz9zz9zz.tmp")
            kept += [out / "sub" / "notes.tmp", out / ".hidden.tmp"]
    for p in planted:
        if not p.exists():
            p.write_bytes(b"half")
    for p in kept:
        p.write_bytes(b"mine")
    if module in ("stages.train", "stages.evaluate", "stages.embed"):
        options = __import__("stages.train", fromlist=["train_options"]).train_options if module == "stages.train" else None
        code = variant_stage(module.split(".")[1], lambda *a, **k: None, argv, options=options)
    else:
        code = __import__(module, fromlist=["main"]).main(argv)
    assert code == 2   # params.yaml missing: a bad-input stop, after the clearing
    assert [p for p in planted if p.exists()] == [], f"{stage} left them"
    assert [p for p in kept if not p.exists()] == [], f"{stage} removed what is not its own temporary output"
    assert "left by an interrupted run" in capsys.readouterr().out
