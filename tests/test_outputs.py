"""The output contract (pipelines/outputs.py): docs/outputs.md is generated from it, every file of
the golden tiny run validates against it, and building a model from a file and writing it back gives
the same bytes (the writers write `dump()` and `cells()`, so key order and values are unchanged)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from golden_files import WORKSPACE
from pipelines import io, outputs
from pipelines.cli import outputs_doc
from pipelines.outputs import (ConfusionMatrixRow, ConfusionRow, EmbedMetrics, EvaluateMetrics, HistoryRow, Meta,
                               ParamsRow, PerClassRow, PredictionRow, SizesRow, TrainMetrics, TsneRow)

REPO = Path(__file__).resolve().parents[1]

JSON_MODELS = {"meta.json": Meta, "train.json": TrainMetrics, "evaluate.json": EvaluateMetrics, "embed.json": EmbedMetrics}
CSV_MODELS = {"sizes.csv": SizesRow, "history.csv": HistoryRow, "params.csv": ParamsRow, "per_class.csv": PerClassRow,
              "confusion.csv": ConfusionRow, "tsne.csv": TsneRow, outputs.TEST_PREDICTIONS: PredictionRow}


def test_docs_outputs_md_is_generated_from_the_models():
    out = subprocess.run([sys.executable, "-m", "pipelines.cli.outputs_doc"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert out == outputs_doc.markdown()
    assert (REPO / "docs" / "outputs.md").read_text() == out, \
        "docs/outputs.md is stale: python -m pipelines.cli.outputs_doc > docs/outputs.md"
    # Every file model and every field is documented.
    for _, model in outputs.FILES:
        for name, field in model.model_fields.items():
            assert f"`{field.alias or name}`" in out and field.description, (model.__name__, name)


def _golden(name: str) -> list[Path]:
    files = sorted(WORKSPACE.rglob(name))
    assert files, f"no {name} in the golden workspace"
    return files


@pytest.mark.parametrize("name", sorted(JSON_MODELS))
def test_golden_json_files_validate_and_dump_to_the_same_bytes(name):
    for path in _golden(name):
        obj = json.loads(path.read_text())
        model = JSON_MODELS[name].model_validate(obj, strict=True)
        assert json.dumps(model.dump(), indent=2) + "\n" == path.read_text(), path


def test_replicate_files_are_train_metrics():
    for path in _golden("metrics/replicates/*.json"):
        m = TrainMetrics.model_validate(json.loads(path.read_text()), strict=True)
        assert f"{m.variant}-{m.seed}.json" == path.name


@pytest.mark.parametrize("name", sorted(CSV_MODELS))
def test_golden_csv_files_validate_and_write_back_the_same_bytes(name, tmp_path):
    model = CSV_MODELS[name]
    for path in _golden(name):
        rows = list(csv.DictReader(path.read_text().splitlines()))
        assert rows and list(rows[0]) == model.columns(), path
        again = tmp_path / name
        io.write_csv(again, model.columns(), [model.model_validate(r).cells() for r in rows])
        assert again.read_bytes() == path.read_bytes(), path


def test_confusion_matrix_rows_write_back_the_same_bytes(tmp_path):
    for path in _golden("confusion_matrix.csv"):
        header, *rows = list(csv.reader(path.read_text().splitlines()))
        again = tmp_path / "cm.csv"
        io.write_csv(again, ConfusionMatrixRow.header(header[1:]),
                     [ConfusionMatrixRow(true=r[0], counts=[int(c) for c in r[1:]]).cells() for r in rows])
        assert again.read_bytes() == path.read_bytes(), path
        assert len(rows) == len(header) - 1


def test_an_unset_optional_field_is_left_out_and_a_set_null_is_kept():
    m = EvaluateMetrics(n=2, accuracy=50.0, macro_f1=40.0, top_confusions=[{"true": "a", "pred": "b", "count": 1}])
    assert list(m.dump()) == ["n", "accuracy", "macro_f1", "top_confusions"]
    assert TrainMetrics(params_total=1, best_val_acc=1.0, best_epoch=1, start=None).dump()["start"] is None


def test_the_contract_refuses_unknown_keys_and_wrong_types():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="extra"):
        EmbedMetrics.model_validate({"points": 1, "layers": {}, "colour": "red"})
    with pytest.raises(ValidationError, match="valid integer"):
        TrainMetrics.model_validate({"params_total": 1.5, "best_val_acc": 1.0, "best_epoch": 1}, strict=True)
    # An empty number cell is NaN only where the column allows it.
    assert HistoryRow.model_validate({"epoch": "1", "train_loss": "", "train_acc": "1", "val_loss": "",
                                      "val_acc": "2"}).cells()[1] == ""
    with pytest.raises(ValidationError):
        ParamsRow.model_validate({"layer": "fc", "shape": "2", "params": ""})
