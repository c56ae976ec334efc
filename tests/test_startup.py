"""What a stage process imports before its work: no library a stage does not use, and the
replacements of library calls that cost more to import than to compute give the library's numbers."""
import subprocess
import sys

import numpy as np
import pytest

from pipelines.evaluate.stage import confusion_counts, per_class_scores


def _imported_after(code: str) -> set[str]:
    """Top-level package names in sys.modules after `code` runs in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("stage", ["download", "preprocess", "report"])
def test_stages_without_a_network_import_neither_torch_nor_mlflow(stage):
    mods = _imported_after(f"import stages.{stage}")
    assert "torch" not in mods and "mlflow" not in mods, stage


def test_the_main_job_imports_neither_torch_nor_mlflow():
    mods = _imported_after("import pipelines.cli.repro")
    assert "torch" not in mods and "mlflow" not in mods


def test_evaluate_does_not_import_sklearn():
    assert "sklearn" not in _imported_after("import stages.evaluate")


def test_seeding_sets_deterministic_kernels_without_the_compiler_stack():
    mods = _imported_after(
        "import torch\nfrom pipelines import compute\ncompute.seed_everything(1)\n"
        "assert torch.are_deterministic_algorithms_enabled()\n"
        "assert torch.is_deterministic_algorithms_warn_only_enabled()")
    assert "torch._inductor" not in mods and "torch._dynamo" not in mods


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_and_per_class_scores_equal_sklearns(seed):
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    rng = np.random.default_rng(seed)
    k = 5
    y = rng.integers(0, k - 1, 300)            # class 4 never true: recall and F1 undefined -> 0
    pred = rng.integers(0, k, 300)
    pred[pred == 3] = 2                        # class 3 never predicted: precision undefined -> 0
    cm = confusion_counts(y, pred, k)
    assert np.array_equal(cm, confusion_matrix(y, pred, labels=list(range(k))))
    mine = per_class_scores(cm)
    theirs = precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
    for a, b in zip(mine, theirs):
        assert np.array_equal(a, b), (a, b)    # bit for bit: the macro F1 in evaluate.json must not move
    assert mine[0][3] == 0 and mine[1][4] == 0 and mine[2][4] == 0 and mine[3][4] == 0
