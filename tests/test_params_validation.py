"""params.yaml and reference.yaml mutations: each must stop a stage with one line naming the file and
the key, before any output.

The table starts from the repository's real params.yaml and reference.yaml, so a new setting or a
loosened bound shows up here rather than as a half-written results folder.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import yaml

from pipelines import config, errors
from pipelines.cli import edge
from pipelines.cli.variant_stage import variant_stage
import isolation

REPO = Path(__file__).resolve().parents[1]


def setin(path: str, value) -> Callable[[dict], dict]:
    def edit(raw: dict) -> dict:
        *parents, last = path.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[last] = value
        return raw
    return edit


def delin(path: str) -> Callable[[dict], dict]:
    def edit(raw: dict) -> dict:
        *parents, last = path.split(".")
        node = raw
        for p in parents:
            node = node[p]
        del node[last]
        return raw
    return edit


def several(*edits: Callable[[dict], dict]) -> Callable[[dict], dict]:
    def edit(raw: dict) -> dict:
        for e in edits:
            raw = e(raw)
        return raw
    return edit


PARAMS, REF = "params.yaml", "reference.yaml"


@dataclass
class Case:
    id: str
    names: str                    # what the one-line message must mention (key, or the file)
    edit: Optional[Callable] = None   # mutates a copy of the parsed params.yaml
    text: Optional[str] = None        # or: the whole file, for YAML-level breakage
    value: Optional[str] = None       # the bad value, where the message should quote it
    file: str = PARAMS                # the file the message must start with
    ref_edit: Optional[Callable] = None   # mutates a copy of the parsed reference.yaml
    ref_text: Optional[str] = None        # or: the whole reference.yaml


V = "variants.mnist_cnn"
CASES = [
    Case("epochs-string", "epochs", setin(f"{V}.epochs", "abc"), value="abc"),
    Case("epochs-float", "epochs", setin(f"{V}.epochs", 1.5), value="1.5"),
    Case("epochs-bool", "epochs", setin(f"{V}.epochs", True)),
    Case("epochs-zero", "epochs", setin(f"{V}.epochs", 0)),
    Case("epochs-negative", "epochs", setin(f"{V}.epochs", -3)),
    # The key lives in `defaults`: the message must send the reader there, not to the variant.
    Case("defaults-epochs-zero", "defaults.epochs", setin("defaults.epochs", 0)),
    Case("batch-size-zero", "batch_size", setin(f"{V}.batch_size", 0)),
    Case("lr-negative", "lr", setin(f"{V}.lr", -0.1)),
    Case("lr-zero", "lr", setin(f"{V}.lr", 0.0)),
    Case("lr-nan", "lr", setin(f"{V}.lr", float("nan"))),
    Case("lr-inf", "lr", setin(f"{V}.lr", float("inf"))),
    Case("lr-string", "lr", setin(f"{V}.lr", "0.001"), value="0.001"),
    # PyYAML (YAML 1.1) reads 1e-3 without a dot as a string; rejecting it beats a silent cast.
    Case("lr-yaml11-exponent", "lr", setin(f"{V}.lr", "1e-3"), value="1e-3"),
    Case("weight-decay-negative", "weight_decay", setin(f"{V}.weight_decay", -0.01)),
    Case("unknown-variant-key", "epochz", setin(f"{V}.epochz", 3)),
    Case("unknown-defaults-key", "defaults.epochz", setin("defaults.epochz", 3)),
    Case("unknown-model", "model", setin(f"{V}.model", "resnet50"), value="resnet50"),
    Case("unknown-dataset-in-variant", "dataset", setin(f"{V}.dataset", "imagenet"), value="imagenet"),
    Case("unknown-optimizer", "optimizer", setin(f"{V}.optimizer", "rmsprop"), value="rmsprop"),
    Case("unknown-schedule", "schedule", setin(f"{V}.schedule", "step"), value="step"),
    Case("unknown-augment", "augment", setin(f"{V}.augment", "mixup"), value="mixup"),
    Case("missing-layers", "layers", delin(f"{V}.layers")),
    Case("missing-sources", "sources", delin("sources")),
    Case("missing-datasets", "datasets", delin("datasets")),
    Case("missing-variants", "variants", delin("variants")),
    Case("missing-tracking", "tracking", delin("tracking")),
    Case("missing-tracking-timeout", "connect_timeout_s", delin("tracking.connect_timeout_s")),
    Case("extra-top-level-key", "extra_section", setin("extra_section", {"a": 1})),
    Case("extra-dataset-key", "datasets.mnist.colour", setin("datasets.mnist.colour", True)),
    Case("dataset-unknown-source", "datasets.mnist.lab", setin("datasets.mnist.lab", "emnist"), value="emnist"),
    Case("channels-2", "channels", setin("datasets.mnist.channels", 2), value="2"),
    Case("image-size-0", "image_size", setin("datasets.mnist.image_size", 0)),
    Case("train-limit-negative", "train_limit", setin("datasets.mnist.train_limit", -1)),
    Case("protocol-online", "protocol", setin("protocol", "online"), value="online"),
    # The protocol's former name, and its dataset keys: the message says what to write instead.
    Case("protocol-seed-renamed", "protocol: lab", setin("protocol", "seed"), value="seed"),
    Case("dataset-seed-key-renamed", "datasets.mnist.seed is now datasets.mnist.lab", setin("datasets.mnist.seed", "mnist")),
    Case("dataset-backbone-seed-key-renamed", "datasets.transfer.backbone_lab",
         setin("datasets.transfer.backbone_seed", "resnet18")),
    Case("device-tpu", "device", setin("device", "tpu"), value="tpu"),
    Case("precision-fp16", "precision", setin("precision", "fp16"), value="fp16"),
    Case("seed-negative", "seed", setin("seed", -1)),
    Case("seed-too-big", "seed", setin("seed", 2**32)),
    Case("threads-negative", "threads", setin("threads", -1)),
    Case("tracking-timeout-zero", "connect_timeout_s", setin("tracking.connect_timeout_s", 0)),
    Case("tracking-experiment-empty", "experiment", setin("tracking.experiment", "")),
    Case("retries-zero", "retries", setin("sources.retries", 0)),
    Case("variant-not-mapping", V, setin(V, "simple_cnn")),
    Case("variant-null", V, setin(V, None)),
    Case("defaults-not-mapping", "defaults", setin("defaults", [1, 2])),
    Case("datasets-null", "datasets", setin("datasets", None)),
    Case("label-smoothing-1", "label_smoothing", setin(f"{V}.label_smoothing", 1.0)),
    Case("momentum-1.5", "momentum", setin(f"{V}.momentum", 1.5)),
    Case("pretrained-string", "pretrained", setin("variants.tl_finetune.pretrained", "yes"), value="yes"),
    Case("svm-without-pretrained", "classifier",
         several(setin("variants.tl_svm.pretrained", False), setin("variants.tl_svm.freeze_backbone", False))),
    Case("pretrained-simple-cnn", "pretrained", setin(f"{V}.pretrained", True)),
    # A replicate with the global seed would retrain its variant's own run: rejected, not run twice.
    Case("replicate-seed-is-global", "replicates.seeds",
         lambda raw: setin("replicates.seeds", [1, raw["seed"]])(raw)),
    # The SVM option is the same model for every seed: a replicate of it would repeat the fit.
    Case("replicate-of-a-deterministic-option", "replicates.variants",
         lambda raw: setin("replicates.variants", [*raw["replicates"]["variants"], "tl_svm"])(raw), value="tl_svm"),
    Case("continuation-other-recipe", "variants.mnist_cnn_20ep.start", setin("variants.mnist_cnn_20ep.lr", 0.01)),
    Case("continuation-source-keeps-no-state", "save_state", setin(f"{V}.save_state", False)),
    Case("backbone-without-backbone-dataset", "backbone", setin(f"{V}.model", "backbone")),
    Case("url-no-trailing-slash", "mnist_urls",
         setin("sources.mnist_urls", ["https://ossci-datasets.s3.amazonaws.com/mnist"])),
    Case("url-ftp", "cifar10_urls", setin("sources.cifar10_urls", ["ftp://example.org/"])),
    Case("urls-not-list", "hymenoptera_urls", setin("sources.hymenoptera_urls", "https://x.org/")),
    Case("sha256-not-hex", "hymenoptera_sha256", setin("sources.hymenoptera_sha256", "z" * 64)),
    Case("sha256-short", "hymenoptera_sha256", setin("sources.hymenoptera_sha256", "ab" * 8)),
    Case("lab-unknown-variant", "lab.mnist_cnnn", ref_edit=setin("lab.mnist_cnnn", {"val_acc": 1.0}), file=REF),
    Case("lab-unknown-key", "lab.mnist_cnn.acc", ref_edit=setin("lab.mnist_cnn", {"acc": 1.0}), file=REF),
    Case("lab-value-string", "lab.tl_svm.val_acc", ref_edit=setin("lab.tl_svm.val_acc", "90.5"), value="90.5", file=REF),
    Case("recipe-unknown-variant", "recipes.mnist_cnn_pls",
         ref_edit=setin("recipes.mnist_cnn_pls", {"baseline": "mnist_cnn"}), file=REF),
    Case("recipe-unknown-baseline", "recipes.mnist_cnn_plus.baseline",
         ref_edit=setin("recipes.mnist_cnn_plus.baseline", "mnist_cn"), value="mnist_cn", file=REF),
    # A params.yaml edit that breaks a recipe's promise (same budget as its baseline) is named by the
    # reference.yaml entry that makes the promise.
    Case("recipe-other-budget", "recipes.mnist_cnn_plus", setin("variants.mnist_cnn_plus.epochs", 20), value="20",
         file=REF),
    Case("recipe-other-model", "recipes.cifar_alexnet_plus",
         ref_edit=setin("recipes.cifar_alexnet_plus.baseline", "mnist_cnn"), file=REF),
    Case("recipe-target-protocol", "recipes.mnist_cnn_plus.target.online",
         ref_edit=setin("recipes.mnist_cnn_plus.target", {"online": 93.5}), value="online", file=REF),
    Case("recipe-target-seed-renamed", "recipes.mnist_cnn_plus.target.seed",
         ref_edit=setin("recipes.mnist_cnn_plus.target", {"seed": 99.3}), value="lab", file=REF),
    Case("recipe-target-over-100", "target", ref_edit=setin("recipes.mnist_cnn_plus.target.offline", 101.0), file=REF),
    Case("parts-unknown-variant", "parts.simple_cnn", ref_edit=setin("parts.simple_cnn", "mnist_cnnn"),
         value="mnist_cnnn", file=REF),
    Case("parts-unknown-option", "parts.transfer.tl_svn", ref_edit=setin("parts.transfer.tl_svn", "an SVM"), file=REF),
    Case("parts-unknown-role", "parts.simple", ref_edit=setin("parts.simple", "mnist_cnn"), file=REF),
    Case("check-tolerance-negative", "check.tolerance_pp", ref_edit=setin("check.tolerance_pp", -1.0), file=REF),
    Case("check-metric-not-file-key", "check.metrics.0", ref_edit=setin("check.metrics", ["accuracy"]),
         value="accuracy", file=REF),
    Case("reference-unknown-section", "labs", ref_edit=setin("labs", {}), file=REF),
    Case("reference-yaml-syntax-error", REF, ref_text="lab: {mnist_cnn: [\n", file=REF),
    Case("reference-duplicate-key", "'tl_svm'", ref_text="lab:\n  tl_svm: {val_acc: 1.0}\n  tl_svm: {val_acc: 2.0}\n",
         file=REF),
    Case("reference-top-level-list", REF, ref_text="- lab: {}\n", file=REF),
    # Reference data left among the knobs is sent to its file.
    Case("lab-in-params", "'lab' is reference data", setin("lab", {"tl_svm": {"val_acc": 90.5}}), value=REF),
    Case("yaml-syntax-error", "params.yaml", text="seed: 42\nvariants: {mnist_cnn: [\n  epochs: 3\n"),
    Case("yaml-tab-indent", "params.yaml", text="seed: 42\ntracking:\n\texperiment: x\n"),
    Case("empty-file", "params.yaml", text=""),
    # PyYAML keeps the last of two equal keys; a variant pasted twice would silently win.
    Case("duplicate-key", "'epochs'", text="variants:\n  mnist_cnn:\n    epochs: 5\n    epochs: 50\n"),
    Case("duplicate-variant", "'mnist_cnn'", text="variants:\n  mnist_cnn: {}\n  mnist_cnn: {epochs: 3}\n"),
    Case("top-level-list", "params.yaml", text="- seed: 42\n- protocol: offline\n"),
    Case("top-level-scalar", "params.yaml", text="just a string\n"),
]


@pytest.mark.parametrize("classes", [[0, 42], [3, 3], [1], [-1, 2]])
def test_offline_classes_are_two_distinct_fashion_mnist_classes(make_params, classes):
    with pytest.raises(errors.ParamsError, match="offline_classes"):
        make_params({"datasets": {"transfer": {"offline_classes": classes}}})


def mutated_text(case: Case, params_raw: dict) -> str:
    if case.text is not None:
        return case.text
    return yaml.safe_dump((case.edit or (lambda r: r))(copy.deepcopy(params_raw)), sort_keys=False)


def write_mutated(case: Case, params_raw: dict, reference_raw: dict, folder: Path) -> None:
    """params.yaml and reference.yaml into folder, one of them (or both) mutated by case."""
    (folder / PARAMS).write_text(mutated_text(case, params_raw))
    ref = case.ref_text
    if ref is None:
        ref = yaml.safe_dump((case.ref_edit or (lambda r: r))(copy.deepcopy(reference_raw)), sort_keys=False)
    (folder / REF).write_text(ref)


def assert_one_line_naming(msg: str, case: Case) -> None:
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg.startswith(case.file), msg
    assert case.names in msg, f"{case.names!r} not named in: {msg}"
    if case.value is not None:
        assert case.value in msg, f"value {case.value!r} not quoted in: {msg}"


def test_the_real_params_file_is_valid(tmp_path):
    # Guards the table: every rejection below is then due to its mutation alone.
    for name in (PARAMS, REF):
        (tmp_path / name).write_text(isolation.committed_text(name))
    p = config.load(tmp_path / "params.yaml")
    assert "mnist_cnn" in p.variants
    # The reference data is reachable from the params, as read from reference.yaml beside them.
    ref = yaml.safe_load(isolation.committed_text(REF))
    assert p.lab["tl_svm"].val_acc == ref["lab"]["tl_svm"]["val_acc"]
    assert p.recipes["mnist_cnn_plus"].baseline == ref["recipes"]["mnist_cnn_plus"]["baseline"]
    assert p.check.metrics == ref["check"]["metrics"]


def test_without_reference_file_there_is_no_reference_data(tmp_path):
    (tmp_path / PARAMS).write_text(isolation.committed_params_text())
    p = config.load(tmp_path / PARAMS)
    assert (p.lab, p.recipes, p.check) == ({}, {}, None)
    assert "mnist_cnn" in p.variants


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_mutation_is_rejected_in_one_line(case, params_raw, reference_raw, tmp_path, monkeypatch):
    write_mutated(case, params_raw, reference_raw, tmp_path)
    # Stages read ./params.yaml, so load it the same way: the message names it as they would.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.ParamsError) as info:
        config.load()
    assert_one_line_naming(str(info.value), case)


def test_missing_file_names_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(errors.ParamsError, match="params.yaml") as info:
        config.load()
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ through the stage command
STAGE_SAMPLE = ["epochs-string", "lr-nan", "unknown-variant-key", "missing-sources",
                "variant-not-mapping", "svm-without-pretrained", "yaml-syntax-error", "empty-file",
                "lab-unknown-variant"]


def _stage_layout(tmp_path: Path) -> tuple[list[str], dict[Path, bytes]]:
    """Argv of train@mnist_cnn, with every output path already holding a file of its own."""
    data, model, out, metrics = (tmp_path / "data/prepared/mnist", tmp_path / "models/mnist_cnn",
                                 tmp_path / "results/mnist_cnn/train", tmp_path / "metrics/mnist_cnn/train.json")
    before = {
        model / "model.pt": b"old weights \x00\x01",
        model / "run.json": b'{"run_id": "old"}',
        out / "history.csv": b"epoch,loss\n1,0.5\n",
        metrics: b'{"val_acc": 0.5}',
    }
    data.mkdir(parents=True)
    for path, content in before.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    argv = ["--variant", "mnist_cnn", "--data", str(data), "--model", str(model),
            "--out", str(out), "--metrics", str(metrics)]
    return argv, before


def _assert_untouched(tmp_path: Path, before: dict[Path, bytes]) -> None:
    for path, content in before.items():
        assert path.read_bytes() == content, f"{path} was changed"
    produced = {p for p in tmp_path.rglob("*") if p.is_file()} - set(before) - {tmp_path / PARAMS, tmp_path / REF}
    assert not produced, f"files written despite invalid params: {sorted(map(str, produced))}"


def _stage_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, f"stderr should be one line, got: {stderr!r}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("case_id", STAGE_SAMPLE)
def test_train_stage_refuses_before_writing(case_id, params_raw, reference_raw, tmp_path, monkeypatch, capsys):
    from pipelines.train.stage import train

    case = next(c for c in CASES if c.id == case_id)
    write_mutated(case, params_raw, reference_raw, tmp_path)
    argv, before = _stage_layout(tmp_path)
    monkeypatch.chdir(tmp_path)
    # Should validation ever let one through, the run must not land in the repository's store.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'stray.db'}")
    calls = []
    rc = variant_stage("train", lambda *a, **kw: calls.append(a) or train(*a, **kw), argv)
    captured = capsys.readouterr()
    assert rc == 2
    line = _stage_error_line(captured.err)
    assert case.names in line
    assert not calls, "the stage body ran with invalid params"
    _assert_untouched(tmp_path, before)


def test_train_stage_subprocess_exit_2(params_raw, tmp_path):
    # One real `python -m stages.train`: the interpreter, the argv parsing and the exit status.
    case = next(c for c in CASES if c.id == "epochs-string")
    (tmp_path / "params.yaml").write_text(mutated_text(case, params_raw))
    argv, before = _stage_layout(tmp_path)
    env = {**os.environ, "PYTHONPATH": isolation.pythonpath(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'stray.db'}"}
    proc = subprocess.run([sys.executable, "-m", "stages.train", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = _stage_error_line(proc.stderr)
    assert "epochs" in line and "abc" in line
    assert proc.stdout == ""
    _assert_untouched(tmp_path, before)


def test_unknown_variant_name_on_command_line(params_raw, tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_raw))
    argv, before = _stage_layout(tmp_path)
    argv[1] = "mnist_cnm"
    monkeypatch.chdir(tmp_path)
    rc = variant_stage("train", lambda *a: pytest.fail("stage body ran"), argv)
    assert rc == 2
    line = _stage_error_line(capsys.readouterr().err)
    assert "mnist_cnm" in line and "mnist_cnn" in line  # the typo, and what is allowed
    _assert_untouched(tmp_path, before)


# ------------------------------------------------------------------ the edge's exit codes
@pytest.mark.parametrize("error, code", [(errors.ParamsError("variants.x.lr = -1: must be > 0"), 2),
                                         (errors.IntegrityError("f.gz: md5 1, expected 2; remove it"), 2),
                                         (errors.ReportError("eval.json: missing key 'acc'"), 2),
                                         (errors.TrackingError("MLflow store x: unreachable\ndetail"), 1),
                                         (errors.StageError("out.npz: cannot be written"), 1)])
def test_edge_turns_a_lab_error_into_one_line_and_its_exit_code(error, code, capsys):
    def body():
        raise error
    assert edge.guarded("train x", body) == code == error.exit_code
    assert capsys.readouterr().err == f"error: train x: {str(error).splitlines()[0]}\n"


@pytest.mark.parametrize("bug", [ValueError("bad shape"), RuntimeError("CUDA error"), OSError(5, "I/O error")])
def test_edge_lets_an_unexpected_exception_through_with_its_traceback(bug, capsys):
    def body():
        raise bug
    with pytest.raises(type(bug)) as info:
        edge.guarded("train x", body)
    assert info.value is bug and info.traceback[-1].name == "body"
    assert capsys.readouterr().err == ""


def test_unexpected_exception_in_a_stage_exits_1_with_traceback(params_raw, tmp_path):
    # A real `python -m stages.download` whose --out lies under a plain file: an OSError the code does
    # not anticipate is reported with its traceback and exit status 1, not turned into a one-liner.
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_raw))
    (tmp_path / "plain").write_text("not a folder")
    env = {**os.environ, "PYTHONPATH": isolation.pythonpath(REPO)}
    proc = subprocess.run([sys.executable, "-m", "stages.download", "--dataset", "mnist", "--out", "plain/raw"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr and "NotADirectoryError" in proc.stderr
    assert not any(line.startswith("error:") for line in proc.stderr.splitlines())
