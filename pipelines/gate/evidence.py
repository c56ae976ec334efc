"""What the gate judges a gated metric on: per side, one or more training runs (seeds) of the variant,
each with its per-image correctness on the validation split and the digest of that split's images,
and on the held-out test split too where the dataset has one (a gated `test_accuracy`).

The main run is the DVC stage's own (evaluate's confusion.csv: one row per validation image, in
order; its test_predictions.csv: one row per test image). Extra seeds are trained and evaluated outside DVC with the stages' own commands
(`python -m stages.train --seed S`, `python -m stages.evaluate`), on the same prepared data, and kept
in a cache keyed by everything they are computed from (params as the stages read them, the seed, the
prepared data's digests, the stages' code as dvc.yaml declares it), so that checks against the same base, and heads that leave a
variant alone, reuse them.

A redrawn extra run (`redraw=True`, where base and head were judged on different images) first
prepares its own draw of the data from the side's raw files (`python -m stages.preprocess --seed S`,
into its work folder), so that the spread of a side's runs holds the draw's variance too; its cache
key holds the raw files' digests, the dataset's params and the preprocess stage's code instead of
the prepared data's digests, and says that it redrew, so redrawn and non-redrawn runs never stand in
for each other.
"""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from pipelines.gate.repo import Stage, env
from pipelines.outputs import TEST_PREDICTIONS



@dataclass
class Runs:
    """One side's runs of one gated metric: correctness vectors (one per seed) over the images whose
    digest is `images` (None: unknown, so never paired), or only accuracies (`acc`, `n`) where the
    per-image results are not at hand."""
    seeds: list[int] = field(default_factory=list)
    correct: list[np.ndarray] = field(default_factory=list)
    images: Optional[str] = None
    acc: Optional[float] = None
    n: Optional[int] = None
    seconds: float = 0.0
    test: Optional["Runs"] = None   # the same runs on the held-out test split, where there is one
    # The extra runs each drew their own data (training, validation and test subsets) with their
    # seed: every run is an independent draw, compared by its accuracy alone (noise.draws_compared).
    redrawn: bool = False
    # Every seed gives this side's variant the same model on this data (config.Variant.deterministic):
    # its one run stands for every seed, and its seed spread is zero, not unmeasured.
    deterministic: bool = False

    def vectors(self) -> list[np.ndarray]:
        """The correctness vectors; from the accuracy alone, one made-up vector with as many correct
        images (enough for the unpaired, binomial comparison)."""
        if self.correct:
            return self.correct
        k = int(round(self.acc / 100 * self.n))
        return [np.arange(self.n) < k]


# The per-image file of each split an evaluate stage writes (docs/outputs.md).
SPLIT_FILES = {"val": "confusion.csv", "test": TEST_PREDICTIONS}


def variant_of(stage: Stage) -> Optional[str]:
    """The variant of an evaluate stage (`evaluate@<variant>`), else None."""
    kind, _, variant = stage.name.partition("@")
    return variant if kind == "evaluate" and variant else None


def _prepared(stage: Stage) -> Optional[str]:
    return next((f for f in stage.files if f.startswith("data/prepared/")), None)


def dataset_of(stage: Stage) -> Optional[str]:
    """The dataset an evaluate stage reads (data/prepared/<dataset>), else None."""
    data = _prepared(stage)
    return data.split("/")[2] if data and data.count("/") >= 2 else None


def raw_of(dataset: str) -> str:
    """The raw folder of a dataset, as the DVC preprocess stage reads it."""
    return f"data/raw/{dataset}"


def can_redraw(cwd: Path, stage: Stage) -> bool:
    """Whether extra runs of `stage`'s variant can draw their own data in cwd: the raw files are there
    (their SOURCE.json) and the dataset is not an image folder, whose splits the download stage drew."""
    data, ds = _prepared(stage), dataset_of(stage)
    if data is None or ds is None or not (cwd / raw_of(ds) / "SOURCE.json").is_file():
        return False
    meta = cwd / data / "meta.json"
    return meta.is_file() and not json.loads(meta.read_text()).get("folder")


def raw_identity(cwd: Path, dataset: str) -> dict:
    """What a dataset's raw folder holds, from its SOURCE.json: the dataset, source and protocol, each
    file's sha256 and an image folder's digest (not where the files were copied from)."""
    record = json.loads((cwd / raw_of(dataset) / "SOURCE.json").read_text())
    return {"dataset": record.get("dataset"), "source": record.get("source"), "protocol": record.get("protocol"),
            "files": {k: v.get("sha256") for k, v in sorted(record.get("files", {}).items())},
            "folder": (record.get("folder") or {}).get("digest")}


def correct_of(text: str, split: str) -> np.ndarray:
    """Per-image correctness from an evaluate stage's per-image file of `split`: confusion.csv
    (actual, predicted) for "val", test_predictions.csv (index, label, pred) for "test"."""
    rows = list(csv.DictReader(text.splitlines()))
    if split == "test":
        return np.array([r["label"] == r["pred"] for r in rows], dtype=bool)
    return np.array([r["actual"] == r["predicted"] for r in rows], dtype=bool)


def read_run(cwd: Path, stage: Stage, split: str = "val") -> Optional[tuple[np.ndarray, str]]:
    """(correct per image of `split`, digest of that split's images) of an evaluate stage's outputs in
    cwd; None when they are not there (for "test": a dataset without a test split)."""
    data = _prepared(stage)
    name = SPLIT_FILES[split]
    folder = next((cwd / o for o in stage.outs if (cwd / o / name).is_file()), None)
    if data is None or folder is None or not (cwd / data / "meta.json").is_file():
        return None
    meta = json.loads((cwd / data / "meta.json").read_text())
    digest = meta["files"].get(f"{split}.npz")
    if digest is None:
        return None
    return correct_of((folder / name).read_text(), split), digest


def deterministic(cwd: Path, variant: str) -> bool:
    """Whether every seed gives `variant` the same model on the same data, by the params in cwd
    (config.Variant.deterministic: a linear SVM on frozen pretrained features)."""
    from pipelines import config

    return _fitted_once(config.load(cwd / "params.yaml"), variant)


def _fitted_once(params, variant: Optional[str]) -> bool:
    return variant in params.variants and params.variants[variant].deterministic


def deterministic_at(root: Path, rev: str, variant: Optional[str]) -> bool:
    """deterministic() by the params committed at rev; False where they cannot be read or validated
    (the row then says its seed spread went unmeasured)."""
    from pipelines import config, reference
    from pipelines.errors import CheckError, LabError
    from pipelines.gate.repo import git

    try:
        raw = yaml.safe_load(git(["show", f"{rev}:params.yaml"], root))
        try:
            ref = yaml.safe_load(git(["show", f"{rev}:{reference.NAME}"], root))
        except CheckError:
            ref = None
        params = config.parse(raw, ref)
    except (LabError, yaml.YAMLError, ValueError):   # ParamsError, CheckError; pydantic's errors are ValueErrors
        return False
    return _fitted_once(params, variant)


def extra_seeds(seed: int, count: int) -> list[int]:
    """The seeds of the extra runs: derived from the global seed, so that a change of `seed` alone
    changes every run, as it changes the main one."""
    return [1000 * seed + i for i in range(1, count)]


def code_of(dag: dict[str, Stage], stage: Stage, redraw: bool = False) -> list[str]:
    """The code an extra run of an evaluate stage's variant executes: the Python files its train and
    evaluate stages declare as deps in dvc.yaml (tests/test_stage_deps.py keeps those complete), and
    with `redraw` its dataset's preprocess stage's."""
    v = variant_of(stage)
    stages = [dag.get(f"train@{v}"), stage] + ([dag.get(f"preprocess@{dataset_of(stage)}")] if redraw else [])
    return sorted({f for s in stages if s for f in s.files if f.endswith(".py")})


def run_key(cwd: Path, variant: str, seed: int, data: str, code: list[str], redraw: Optional[str] = None) -> str:
    """The cache key of one extra run: the params the train and evaluate stages read, the seed, the
    prepared data's digests and the stages' code. A run that redraws the dataset `redraw` is keyed by
    what its draw is made from instead of the prepared data: the dataset's params and its raw files."""
    p = yaml.safe_load((cwd / "params.yaml").read_text())
    read = {k: p.get(k) for k in ("protocol", "device", "precision", "defaults", "threads")}
    read["variant"] = p["variants"][variant]
    what = [read, variant, seed]
    if redraw:
        what += ["redrawn", redraw, p["datasets"][redraw], raw_identity(cwd, redraw)]
    h = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode())
    if not redraw:
        h.update((cwd / data / "meta.json").read_bytes())
    for f in code:
        h.update(f.encode() + b"\0" + (cwd / f).read_bytes())
    return h.hexdigest()[:32]


def _python(cwd: Path, cmd: list[str], seed: int) -> None:
    print(f"$ python -m {' '.join(cmd)}   (in {cwd})", file=sys.stderr, flush=True)
    r = subprocess.run([sys.executable, "-m", *cmd], cwd=cwd, env=env(), stdout=sys.stderr, stderr=sys.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"`python -m {' '.join(cmd[:3])} --seed {seed}` failed (exit {r.returncode})")


def _train_and_evaluate(cwd: Path, variant: str, seed: int, data: str, out: Path) -> None:
    m = out / "model"
    cmds = [["stages.train", "--variant", variant, "--seed", str(seed), "--data", data, "--model", str(m),
             "--out", str(out / "train"), "--metrics", str(out / "train.json")],
            ["stages.evaluate", "--variant", variant, "--data", data, "--model", str(m),
             "--out", str(out / "evaluate"), "--metrics", str(out / "evaluate.json")]]
    for c in cmds:
        _python(cwd, c, seed)


def _redraw(cwd: Path, dataset: str, seed: int, out: Path) -> Path:
    """The dataset prepared afresh from the side's raw folder with `seed` (as the DVC preprocess stage
    does, with --seed) into out; the folder."""
    data = out / "data"
    _python(cwd, ["stages.preprocess", "--dataset", dataset, "--raw", raw_of(dataset), "--out", str(data),
                  "--seed", str(seed)], seed)
    return data


def extra_run(cwd: Path, stage: Stage, seed: int, cache: Path, work: Path, code: list[str],
              redraw: bool = False) -> tuple[np.ndarray, Optional[np.ndarray], bool]:
    """(correct per validation image, per test image or None without a test split, whether it came from
    the cache) of `stage`'s variant trained with `seed` on the prepared data in cwd, or with `redraw`
    on its own draw of the data (prepared from the raw files with `seed`; `code` then includes the
    preprocess stage's, see code_of). Raises RuntimeError when a command fails."""
    from pipelines import io

    variant, data, ds = variant_of(stage), _prepared(stage), dataset_of(stage)
    if redraw and not (cwd / raw_of(ds) / "SOURCE.json").is_file():
        raise RuntimeError(f"{variant} seed {seed}: cannot redraw the data: {raw_of(ds)}/SOURCE.json is missing in {cwd}")
    path = cache / "runs" / f"{run_key(cwd, variant, seed, data, code, ds if redraw else None)}.npz"
    if path.is_file():
        with np.load(path) as z:
            return z["val"], (z["test"] if "test" in z else None), True
    out = work / (f"{variant}-{seed}-redrawn" if redraw else f"{variant}-{seed}")
    drawn = _redraw(cwd, ds, seed, out) if redraw else None
    _train_and_evaluate(cwd, variant, seed, str(drawn) if drawn else data, out)
    if drawn:
        shutil.rmtree(drawn, ignore_errors=True)   # a draw is used once: keep the work folder small
    got = {split: correct_of((out / "evaluate" / name).read_text(), split)
           for split, name in SPLIT_FILES.items() if (out / "evaluate" / name).is_file()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **got)
    return got["val"], got.get("test"), False


def committed_run(root: Path, rev: str, stage: Stage) -> Optional[Runs]:
    """The per-image results of `stage` at revision rev (validation, and test where there is a test
    split), where DVC's cache (or remote) still holds them; None otherwise."""
    import dvc.api

    data = _prepared(stage)
    if data is None:
        return None
    for o in stage.outs:
        try:
            text = dvc.api.read(f"{o}/confusion.csv", repo=str(root), rev=rev)
            meta = json.loads(dvc.api.read(f"{data}/meta.json", repo=str(root), rev=rev))
        except Exception:   # noqa: BLE001 - DVC raises many kinds for "not there"; any means no pairing
            continue
        fixed = deterministic_at(root, rev, variant_of(stage))
        runs = Runs(seeds=[0], correct=[correct_of(text, "val")], images=meta["files"]["val.npz"], deterministic=fixed)
        if "test.npz" in meta["files"]:
            try:
                test = dvc.api.read(f"{o}/{TEST_PREDICTIONS}", repo=str(root), rev=rev)
                runs.test = Runs(seeds=[0], correct=[correct_of(test, "test")], images=meta["files"]["test.npz"],
                                 deterministic=fixed)
            except Exception:   # noqa: BLE001 - as above: the test split is then judged unpaired
                pass
        return runs
    return None
