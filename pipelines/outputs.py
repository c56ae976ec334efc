"""The on-disk contract between the stages and the report: one pydantic model per file a stage
writes (one per row for a CSV file). A field's description is its documentation: docs/outputs.md
is generated from these models (`python -m pipelines.cli.outputs_doc > docs/outputs.md`, checked by
tests/test_outputs.py).

Writers build the model and write its `dump()`: keys in the order the fields are declared, fields
the writer did not set left out, values unchanged. The report validates every file it reads with
the same model (`parse_json`, `parse_csv`): JSON strictly (an integer field takes no 2.0, a string
field no number), CSV cells converted from their text. Fields with a default are optional for the
reader (files written before they existed lack them); the writers set every one that applies.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer


def _blank_to_nan(value: object) -> object:
    return math.nan if value == "" else value


def _nan_to_blank(value: float) -> object:
    return "" if value != value else value


# A CSV number that may be empty (no value, e.g. the SVM's loss); NaN in memory.
Blank = Annotated[float, BeforeValidator(_blank_to_nan), PlainSerializer(_nan_to_blank, when_used="json")]
# A CSV number written with four decimals.
Fixed4 = Annotated[float, PlainSerializer(lambda x: f"{x:.4f}", when_used="json")]


class Output(BaseModel):
    """One file (or one CSV row) of the contract; keys beyond the fields are refused."""
    model_config = ConfigDict(extra="forbid")

    def dump(self) -> dict:
        """What the writer writes: the fields it set, in declaration order, values unchanged."""
        return self.model_dump(exclude_unset=True)


class Row(Output):
    """One CSV row; the header is the field names in order."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)   # a column may be a keyword (`class`)

    @classmethod
    def columns(cls) -> list[str]:
        return [f.alias or k for k, f in cls.model_fields.items()]

    @classmethod
    def required_columns(cls) -> list[str]:
        return [f.alias or k for k, f in cls.model_fields.items() if f.is_required()]

    def cells(self) -> list[object]:
        """The row's cells as written (numbers formatted where the field says so)."""
        return list(self.model_dump(mode="json", by_alias=True).values())


TEST_PREDICTIONS = "test_predictions.csv"   # PredictionRow: written by the train and evaluate stages


# ------------------------------------------------------------------------ preprocess@<dataset>
class Backbone(Output):
    name: str = Field(description="`resnet18` or `efficientnet_lite0`")
    file: str = Field(description="`backbone.pt`, beside meta.json")
    sha256: str = Field(description="sha256 of backbone.pt")
    weights: Optional[str] = Field(None, description="the ImageNet weights file it was built from, under data/raw/<dataset>/")
    weights_sha256: Optional[str] = Field(None, description="sha256 of that weights file")
    origin: Optional[str] = Field(None, description="where the weights file came from")


class Meta(Output):
    """data/prepared/<dataset>/meta.json: what the prepared arrays hold."""
    dataset: Optional[str] = Field(None, description="the params `datasets` key")
    source: str = Field(description="the source that was read (`mnist`, `fashion_mnist`, `image_folder`, ...)")
    source_title: str = Field(description="the source as the report names it")
    protocol: str = Field(description="`lab` or `offline`")
    classes: list[str] = Field(description="class names; a label is an index into this list")
    height: Optional[int] = Field(None, description="image height (pixels)")
    width: Optional[int] = Field(None, description="image width (pixels)")
    channels: Optional[int] = Field(None, description="1 or 3")
    mean: Optional[list[float]] = Field(None, description="per channel, 0..1 scale, of the train split")
    std: Optional[list[float]] = Field(None, description="per channel, 0..1 scale, of the train split")
    splits: Optional[dict[str, int]] = Field(None, description="images per split (`train`, `val`, `test` when the dataset has a `test_limit`)")
    files: Optional[dict[str, str]] = Field(None, description="sha256 of each file: `train.npz`, `val.npz`, `test.npz`, `backbone.pt`")
    backbone: Optional[Backbone] = Field(None, description="the pretrained backbone (transfer only), else null")
    folder: Optional[dict[str, Any]] = Field(
        None, description="your own folder: `path`, `files` (count), `digest`, `layout`, `ignored`, `skipped` [{`path`, `reason`}], "
                           "`empty_folders` and `skipped_classes` (left out by `skip_empty_classes`)")


class SizesRow(Row):
    """data/prepared/<dataset>/sizes.csv: the lab's dataset-size table, one row per split."""
    split: str = Field(description="`train`, `val` or `test`")
    height: int = Field(description="pixels")
    width: int = Field(description="pixels")
    channels: int = Field(description="1 or 3")
    samples: int = Field(description="images in the split")


# ------------------------------------------------------------------------ train@<variant>
class HistoryRow(Row):
    """results/<v>/train/history.csv: one row per epoch (`tl_svm`: one row); empty cells are NaN."""
    epoch: int = Field(description="1-based; a continued variant's first rows are the epochs it reused")
    train_loss: Blank = Field(description="mean training loss (empty for the SVM: no cross-entropy)")
    train_acc: Blank = Field(description="training accuracy (%)")
    val_loss: Blank = Field(description="validation loss (empty for the SVM)")
    val_acc: Blank = Field(description="validation accuracy (%)")
    lr: Blank = Field(math.nan, description="learning rate at the epoch's end (empty for the SVM)")
    seconds: Optional[float] = Field(None, description="the epoch's wall-clock time")


class ParamsRow(Row):
    """results/<v>/train/params.csv: one row per trainable tensor; the sum of `params` is `params_total`."""
    layer: str = Field(description="the tensor's name in the model's state dict")
    shape: str = Field(description="e.g. `32x1x3x3`")
    params: int = Field(description="its element count")


class PredictionRow(Row):
    """test_predictions.csv (results/<v>/train/, results/<v>/evaluate/, results/replicates/<v>-<seed>/):
    one row per held-out test image in test.npz order; the report's paired comparisons read them."""
    index: int = Field(description="0, 1, 2, ... in order")
    label: int = Field(description="true class index")
    pred: int = Field(description="predicted class index")


class Diagnosis(Output):
    """The learning-curve verdict (pipelines/train/diagnosis.py); a single-fit SVM has only `verdict` and `rule`."""
    min_val_loss_epoch: Optional[int] = Field(None, description="epoch of the minimum validation loss")
    best_acc_epoch: Optional[int] = Field(None, description="epoch of the best validation accuracy")
    final_loss_gap: Optional[float] = Field(None, description="last epoch's validation minus training loss")
    final_acc_gap: Optional[float] = Field(None, description="last epoch's training minus validation accuracy (pp)")
    val_loss_rise_pct: Optional[float] = Field(None, description="final validation loss above its minimum (%)")
    acc_gain_last_epochs: Optional[float] = Field(None, description="validation accuracy gain over the last `patience` epochs (pp)")
    acc_drop_from_best: Optional[float] = Field(None, description="best minus final validation accuracy (pp)")
    patience: Optional[int] = Field(None, description="max(2, epochs // 5)")
    acc_noise_pp: Optional[float] = Field(None, description="binomial standard error of the validation accuracy (pp)")
    acc_drop_noise_pp: Optional[float] = Field(None, description="the drop from the best beyond which it is more than noise (pp)")
    worse_from_epoch: Optional[int] = Field(None, description="the first epoch of overfitting or getting worse; null otherwise")
    verdict: str = Field(description="`overfitting from epoch N: ...`, `getting worse from epoch N: ...`, `still improving: ...`, "
                                     "`plateau: ...` or `single fit: ...`")
    rule: Optional[str] = Field(None, description="the rule behind the verdict, in words")


class StageClock(Output):
    """When a stage process started, its body began and it wrote its metrics (Unix epoch seconds)."""
    process_start_epoch_seconds: float = Field(description="the process's creation, as the kernel recorded it")
    body_start_epoch_seconds: float = Field(description="the stage body's start, after the interpreter and imports")
    end_epoch_seconds: float = Field(description="just before this metrics file was written")


class TrainMetrics(Output):
    """metrics/<v>/train.json, and metrics/replicates/<v>-<seed>.json (the variant retrained with `seed`)."""
    variant: Optional[str] = Field(None, description="the params `variants` key")
    dataset: Optional[str] = Field(None, description="the params `datasets` key it trained on")
    model: Optional[str] = Field(None, description="the network (`simple_cnn`, `alexnet_cifar`, `backbone`, ...)")
    protocol: Optional[str] = Field(None, description="`lab` or `offline`")
    seed: Optional[int] = Field(None, description="the seed it trained with")
    params_total: int = Field(description="trainable parameters")
    flops_per_image: Optional[int] = Field(None, description="forward-pass FLOPs of one image (torch's counter)")
    best_val_acc: float = Field(description="validation accuracy of the best epoch (%), the epoch model.pt holds")
    best_epoch: int = Field(description="that epoch")
    final_val_acc: Optional[float] = Field(None, description="validation accuracy of the last epoch (%)")
    min_val_loss_epoch: Optional[int] = Field(None, description="epoch of the minimum validation loss")
    epochs: Optional[int] = Field(None, description="epochs in the history, reused ones included")
    val_n: Optional[int] = Field(None, description="validation images")
    test_acc: Optional[float] = Field(None, description="the best epoch's model on the held-out test split (%), with a test split")
    test_n: Optional[int] = Field(None, description="held-out test images, with a test split")
    start: Optional[str] = Field(None, description="params `start`: the seeded initialisation, or the state.pt it continued")
    epochs_reused: Optional[int] = Field(None, description="epochs continued from `start` rather than trained")
    train_seconds_here: Optional[float] = Field(None, description="training time of the epochs trained by this stage")
    train_seconds: Optional[float] = Field(None, description="training time of every epoch, reused ones included")
    train_img_per_s: Optional[float] = Field(None, description="training throughput")
    peak_gflop_per_s: Optional[float] = Field(
        None, description="the device's measured peak in `precision`: a 2048^3 matrix product (8192^3 on a GPU), "
        "timed on every thread just before training")
    train_gflop_per_s: Optional[float] = Field(
        None, description="training arithmetic achieved: `flops_per_image` x img/s, x3 for a gradient step")
    train_pct_of_peak: Optional[float] = Field(None, description="`train_gflop_per_s` as % of `peak_gflop_per_s`")
    floor_seconds: Optional[float] = Field(
        None, description="this stage's arithmetic (training, each epoch's validation, the test split) at the "
        "measured peak: the time it could not go below")
    device: Optional[str] = Field(None, description="`cpu`, `cuda`, ...")
    precision: Optional[str] = Field(None, description="`fp32`, `bf16`, ...")
    diagnosis: Optional[Diagnosis] = Field(None, description="the learning-curve verdict")
    mlflow_run_id: Optional[str] = Field(None, description="the variant's MLflow run; its model is `runs:/<mlflow_run_id>/model`")
    model_log_seconds: Optional[float] = Field(None, description="time logging that MLflow model took (part of `seconds`)")
    seconds: Optional[float] = Field(None, description="the whole stage body, data loading to the logged model")
    clock: Optional[StageClock] = Field(None, description="the stage process's start, body and end times")


class RunRecord(Output):
    """models/<v>/run.json: the variant's MLflow run; evaluate and embed add their child runs under `run_id`."""
    run_id: str = Field(description="the variant's MLflow run")
    experiment_id: str = Field(description="its MLflow experiment")
    tracking_uri: str = Field(description="the store it was logged to")
    train_run_id: Optional[str] = Field(None, description="the train stage's child run")


# ------------------------------------------------------------------------ evaluate@<variant>
class Confusion(Output):
    true: str = Field(description="true class name")
    pred: str = Field(description="predicted class name")
    count: int = Field(description="validation images so confused")


class EvaluateMetrics(Output):
    """metrics/<v>/evaluate.json: the best-epoch model on the validation split."""
    split: Optional[str] = Field(None, description="`val`")
    n: int = Field(description="validation images")
    accuracy: float = Field(description="validation accuracy (%)")
    loss: Optional[float] = Field(None, description="validation loss")
    macro_f1: float = Field(description="macro-averaged F1 (%)")
    top_confusions: list[Confusion] = Field(description="the most frequent confusions, most frequent first, up to 5")
    precision: Optional[str] = Field(None, description="the arithmetic precision inference ran in (`fp32`, `bf16`, ...)")
    inference_seconds: Optional[float] = Field(None, description="time of the validation pass")
    img_per_s: Optional[float] = Field(None, description="inference throughput")
    test_accuracy: Optional[float] = Field(None, description="accuracy on the held-out test split (%), with a test split")
    test_n: Optional[int] = Field(None, description="held-out test images, with a test split")
    seconds: Optional[float] = Field(None, description="the stage body up to this file")
    clock: Optional[StageClock] = Field(None, description="the stage process's start, body and end times")


class PerClassRow(Row):
    """results/<v>/evaluate/per_class.csv: one row per class, in class order."""
    class_: str = Field(alias="class", description="class name")
    precision: Fixed4 = Field(description="0..1, four decimals")
    recall: Fixed4 = Field(description="0..1, four decimals")
    f1: Fixed4 = Field(description="0..1, four decimals")
    support: int = Field(description="validation images of the class")


class ConfusionRow(Row):
    """results/<v>/evaluate/confusion.csv: one row per validation image (DVC's confusion plot template)."""
    actual: str = Field(description="true class name")
    predicted: str = Field(description="predicted class name")


class ConfusionMatrixRow(Row):
    """results/<v>/evaluate/confusion_matrix.csv: header `true\\pred,<class>...`; one row per true class,
    its first cell the class name, then the count predicted as each class."""
    true: str = Field(description="true class name (column `true\\pred`)")
    counts: list[int] = Field(description="images of that class predicted as each class, in class order")

    @staticmethod
    def header(classes: list[str]) -> list[str]:
        return ["true\\pred", *classes]

    def cells(self) -> list[object]:
        return [self.true, *self.counts]


# ------------------------------------------------------------------------ embed@<variant>
class LayerMap(Output):
    """One layer's t-SNE map and its measured quality, on a seeded subsample of at most 2,000 points."""
    module: str = Field(description="the layer's module path in the model")
    dim: int = Field(description="feature dimension")
    subsample: Optional[int] = Field(None, description="points the quality measures used")
    silhouette_features: Optional[float] = Field(None, description="class silhouette of the features (-1..1)")
    silhouette_tsne: Optional[float] = Field(None, description="class silhouette of the 2-D map (-1..1)")
    knn_acc_features: Optional[float] = Field(None, description="5-NN accuracy on the features, cross-validated (%)")
    knn_acc_tsne: Optional[float] = Field(None, description="5-NN accuracy on the map, cross-validated (%)")
    linear_probe_acc: Optional[float] = Field(None, description="logistic-regression accuracy on the features, cross-validated (%)")
    trustworthiness: Optional[float] = Field(None, description="how well the map keeps feature-space neighbours (0..1)")
    seconds: Optional[float] = Field(None, description="time of the quality measures")
    tsne_seconds: Optional[float] = Field(None, description="time of the t-SNE map")
    tsne_iterations: Optional[int] = Field(None, description="t-SNE iterations run (openTSNE only)")
    tsne_kl_divergence: Optional[float] = Field(None, description="final KL divergence (openTSNE only)")
    tsne_pca_components: Optional[int] = Field(
        None, description="a wide layer's features were first reduced to this many PCA components (absent: none)")


class EmbedMetrics(Output):
    """metrics/<v>/embed.json."""
    points: int = Field(description="validation images mapped")
    layers: dict[str, LayerMap] = Field(description="`intermediate` and `final` (params `layers`)")
    tsne_backend: Optional[str] = Field(None, description="`openTSNE` or `scikit-learn`")
    seconds: Optional[float] = Field(None, description="feature extraction, maps and measures")
    clock: Optional[StageClock] = Field(None, description="the stage process's start, body and end times")


class TsneRow(Row):
    """results/<v>/embed/tsne.csv: one row per point and layer."""
    layer: Literal["intermediate", "final"] = Field(description="which map")
    x: Fixed4 = Field(description="map coordinate, four decimals")
    y: Fixed4 = Field(description="map coordinate, four decimals")
    label: int = Field(description="true class index")


# ------------------------------------------------------------------------ every file the report reads
# (path pattern, model): docs/outputs.md documents them in this order.
FILES: list[tuple[str, type[BaseModel]]] = [
    ("data/prepared/<dataset>/meta.json", Meta),
    ("data/prepared/<dataset>/sizes.csv", SizesRow),
    ("metrics/<v>/train.json, metrics/replicates/<v>-<seed>.json", TrainMetrics),
    ("results/<v>/train/history.csv", HistoryRow),
    ("results/<v>/train/params.csv", ParamsRow),
    ("models/<v>/run.json", RunRecord),
    ("test_predictions.csv", PredictionRow),
    ("metrics/<v>/evaluate.json", EvaluateMetrics),
    ("results/<v>/evaluate/per_class.csv", PerClassRow),
    ("results/<v>/evaluate/confusion.csv", ConfusionRow),
    ("results/<v>/evaluate/confusion_matrix.csv", ConfusionMatrixRow),
    ("metrics/<v>/embed.json", EmbedMetrics),
    ("results/<v>/embed/tsne.csv", TsneRow),
]
