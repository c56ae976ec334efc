"""params.yaml -> frozen, typed config objects: the knobs of every stage.

Validation is pydantic's (strict types, unknown keys forbidden, bounds on numbers); this module
only turns its report into one line that names the key, the bad value and what is allowed, so
a typo stops a stage before it writes anything. `load` also reads the reference data beside it
(reference.yaml, pipelines/reference.py), checked against these params and reachable as
`params.lab`, `params.recipes` and `params.check`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from pipelines import reference, yamlfile
from pipelines.errors import ParamsError  # also re-exported: config.ParamsError
from pipelines.networks import network_names
from pipelines.reference import Check, LabNumbers, RecipeGoal, Reference
from pipelines.yamlfile import Strict

PARAMS_FILE = Path("params.yaml")

Protocol = Literal["lab", "offline"]   # lab: the lab's published data; offline: packaged data
SourceName = Literal["mnist", "fashion_mnist", "cifar10", "hymenoptera"]
BackboneName = Literal["resnet18", "efficientnet_lite0"]
# Marker values: `folder` and `start` are paths because dvc.yaml lists them as deps, so "no folder of
# its own" and "from scratch" are written as a file those stages depend on anyway.
BUILTIN_SOURCES = "pipelines/data/sources.py"   # datasets.<d>.folder: the built-in sources, no folder of its own
SCRATCH = "pipelines/models.py"   # variants.<v>.start: from scratch (the model code's seeded initialisation)


class Tracking(Strict):
    experiment: str = Field(min_length=1)
    system_metrics_interval_s: float = Field(gt=0, le=3600)
    connect_timeout_s: float = Field(gt=0, le=600)


class Sources(Strict):
    mirrors: list[str] = []
    retries: int = Field(ge=1, le=20)
    timeout_s: float = Field(gt=0, le=3600)
    mnist_urls: list[str]
    cifar10_urls: list[str]
    hymenoptera_urls: list[str]
    hymenoptera_sha256: Optional[str] = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    torchvision_weights_urls: list[str]
    fashion_mnist_dir: str

    @field_validator("mnist_urls", "cifar10_urls", "hymenoptera_urls", "torchvision_weights_urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for u in v:
            if not u.startswith(("http://", "https://")) or not u.endswith("/"):
                raise ValueError(f"{u!r} is not an http(s) base URL ending in '/'")
        return v


class Dataset(Strict):
    lab: SourceName       # the source under protocol `lab` (the lab's published data)
    offline: SourceName   # the source under protocol `offline` (packaged data)
    image_size: int = Field(ge=8, le=512)
    channels: Literal[1, 3]
    train_limit: int = Field(ge=0)
    val_limit: int = Field(ge=0)
    # A held-out test split that model selection never sees, drawn from the validation pool (per
    # class where limits are per class): null = none, as in the lab; 0 = every image val_limit leaves.
    test_limit: Optional[int] = Field(default=None, ge=0)
    # Two distinct Fashion-MNIST class indices (the offline source of the two-class set).
    offline_classes: Optional[list[Annotated[int, Field(ge=0, le=9)]]] = Field(default=None, min_length=2, max_length=2)
    backbone_lab: Optional[BackboneName] = None
    backbone_offline: Optional[BackboneName] = None
    # Your own images instead of the sources above, under either protocol: a folder of <class>/<image>
    # or {train,val[,test]}/<class>/<image> (pipelines/data/folder.py). BUILTIN_SOURCES (the default)
    # means none; the value is always a path so that dvc.yaml can list it as a dependency.
    folder: str = Field(default=BUILTIN_SOURCES, min_length=1)
    skip_bad_images: bool = False   # true: unreadable or corrupt images are skipped and listed, not an error
    skip_empty_classes: bool = False   # true: a class folder without images is left out and listed, not an error

    @field_validator("offline_classes")
    @classmethod
    def _distinct(cls, v: Optional[list[int]]) -> Optional[list[int]]:
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"{v} names the same class twice; give two different class indices 0..9")
        return v

    @property
    def own_folder(self) -> Optional[str]:
        return None if self.folder == BUILTIN_SOURCES else self.folder

    def source(self, protocol: str) -> str:
        if self.own_folder:
            return "image_folder"
        return self.lab if protocol == "lab" else self.offline

    def backbone(self, protocol: str) -> Optional[str]:
        return self.backbone_lab if protocol == "lab" else self.backbone_offline


class Layers(Strict):
    intermediate: str = Field(min_length=1)
    final: str = Field(min_length=1)


class Variant(Strict):
    dataset: str
    model: str
    layers: Layers
    epochs: int = Field(ge=1, le=1000)
    batch_size: int = Field(ge=1, le=65536)
    eval_batch_size: int = Field(ge=1, le=65536)
    optimizer: Literal["adam", "adamw", "sgd"]
    lr: float = Field(gt=0, le=10)
    momentum: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0, le=1)
    schedule: Literal["constant", "cosine", "onecycle"]
    label_smoothing: float = Field(ge=0, lt=1)
    augment: Literal["none", "flip", "crop_flip", "crop", "resized_crop_flip"]
    pretrained: bool
    freeze_backbone: bool
    classifier: Literal["softmax", "svm"]
    svm_c: float = Field(gt=0, le=1e6)
    tsne_points: int = Field(ge=10)
    tsne_perplexity: float = Field(gt=0, le=500)
    hidden: int = Field(default=128, ge=0, le=65536)   # simple_cnn: 0 drops the fc1 layer
    # What training starts from, as the path train's DVC stage depends on: SCRATCH (the model code's
    # seeded initialisation) or models/<variant>/state.pt, the last-epoch training state of a variant
    # with the same recipe and fewer epochs (weights, optimiser, RNG, history): its epochs are reused.
    start: str = Field(default=SCRATCH, min_length=1)
    save_state: bool = False   # write models/<variant>/state.pt for a variant that starts from it

    @field_validator("lr", "momentum", "weight_decay", "label_smoothing", "svm_c", "tsne_perplexity", mode="before")
    @classmethod
    def _finite(cls, v: object) -> object:
        # Before the bounds check, so NaN is reported as NaN and not as "should be <= 10".
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{v} is not a finite number")
        return v

    @field_validator("model")
    @classmethod
    def _network(cls, v: str) -> str:
        if v not in network_names():
            raise ValueError(f"{v!r} is not a network; allowed: {', '.join(network_names())}")
        return v

    @property
    def deterministic(self) -> bool:
        """Whether every seed gives the same model: a linear SVM on frozen pretrained features. The
        features are the weights'; the SVM's objective is strictly convex, so its optimum is unique and a
        seed only orders the solver's steps (the weights agree within its tolerance, the predictions
        exactly). Such an option is fitted once: replicates would repeat it."""
        return self.classifier == "svm"

    @model_validator(mode="after")
    def _coherent(self) -> "Variant":
        if self.classifier == "svm" and not (self.pretrained and self.freeze_backbone):
            raise ValueError("classifier 'svm' needs pretrained: true and freeze_backbone: true")
        if self.model != "backbone" and (self.pretrained or self.freeze_backbone):
            raise ValueError(f"model {self.model!r} has no pretrained weights; pretrained/freeze_backbone apply to 'backbone'")
        return self


# A continuation repeats its source's every epoch only if nothing but the epoch count differs
# (a constant schedule: cosine and one-cycle steps depend on the total number of epochs).
CONTINUE_SAME = ("dataset", "model", "hidden", "batch_size", "optimizer", "lr", "momentum", "weight_decay",
                 "schedule", "label_smoothing", "augment", "pretrained", "freeze_backbone", "classifier")


def start_variant(start: str) -> Optional[str]:
    """The variant whose state `start` names (models/<variant>/state.pt), None for SCRATCH."""
    if start == SCRATCH:
        return None
    parts = start.split("/")
    if len(parts) != 3 or parts[0] != "models" or parts[2] != "state.pt" or not parts[1]:
        raise ValueError(f"start {start!r}: allowed are {SCRATCH!r} or 'models/<variant>/state.pt'")
    return parts[1]


class Replicates(Strict):
    """Part 1.3 noise: variants retrained with other seeds, each (variant, seed) its own DVC stage."""

    dataset: str
    variants: list[str] = Field(min_length=1)
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field(min_length=1)

    @field_validator("variants", "seeds")
    @classmethod
    def _unique(cls, v: list) -> list:
        dup = sorted({x for x in v if v.count(x) > 1}, key=str)
        if dup:
            raise ValueError(f"{dup} listed more than once; each entry must be unique")
        return v


class Params(Strict):
    seed: int = Field(ge=0, le=2**32 - 1)
    protocol: Protocol
    device: Literal["auto", "cpu", "cuda"]
    precision: Literal["auto", "fp32", "bf16"]
    threads: int = Field(ge=0, le=1024)
    tracking: Tracking
    sources: Sources
    datasets: dict[str, Dataset]
    variants: dict[str, Variant]
    replicates: Optional[Replicates] = None
    # reference.yaml's data, set by parse: not a field, so that params.yaml cannot hold it; read as
    # params.lab, params.recipes and params.check.
    _reference: Reference = PrivateAttr(default_factory=Reference)

    @model_validator(mode="after")
    def _references(self) -> "Params":
        for name, v in self.variants.items():
            if v.dataset not in self.datasets:
                raise ValueError(
                    f"variants.{name}.dataset: {v.dataset!r} is not a dataset; allowed: {sorted(self.datasets)}")
            if v.model == "backbone" and self.datasets[v.dataset].backbone(self.protocol) is None:
                raise ValueError(f"variants.{name}: model 'backbone' needs datasets.{v.dataset}.backbone_{self.protocol}")
            self._check_start(name, v)
        r = self.replicates
        if r is not None:
            if r.dataset not in self.datasets:
                raise ValueError(f"replicates.dataset: {r.dataset!r} is not a dataset; allowed: {sorted(self.datasets)}")
            for name in r.variants:
                if name not in self.variants:
                    raise ValueError(f"replicates.variants: {name!r} is not a variant; allowed: {sorted(self.variants)}")
                if self.variants[name].dataset != r.dataset:
                    raise ValueError(f"replicates.variants: {name!r} trains on {self.variants[name].dataset!r}, "
                                     f"not replicates.dataset {r.dataset!r}")
            for name in r.variants:
                if self.variants[name].deterministic:
                    raise ValueError(f"replicates.variants: {name!r} gives the same model for every seed (a linear SVM "
                                     "on frozen pretrained features) and is fitted once; leave it out")
            if self.seed in r.seeds:
                raise ValueError(f"replicates.seeds: {self.seed} is the global seed, already run by the variants")
            for name in r.variants:
                if self.variants[name].start != SCRATCH:
                    raise ValueError(f"replicates.variants: {name!r} starts from {self.variants[name].start} "
                                     f"(the global seed's run); replicates train from scratch")
        return self

    def _check_start(self, name: str, v: Variant) -> None:
        try:
            src = start_variant(v.start)
        except ValueError as e:
            raise ValueError(f"variants.{name}.{e}") from None
        if src is None:
            return
        if src not in self.variants or src == name:
            raise ValueError(f"variants.{name}.start: {src!r} is not another variant; allowed: "
                             f"{sorted(set(self.variants) - {name})}")
        s = self.variants[src]
        for field in CONTINUE_SAME:
            if getattr(v, field) != getattr(s, field):
                raise ValueError(f"variants.{name}.start: {field} {getattr(v, field)!r} differs from {src!r}'s "
                                 f"{getattr(s, field)!r}; a continuation changes only the epochs")
        if v.schedule != "constant":
            raise ValueError(f"variants.{name}.start: schedule {v.schedule!r} depends on the total epochs; "
                             f"only 'constant' continues exactly")
        if v.epochs <= s.epochs:
            raise ValueError(f"variants.{name}.start: epochs {v.epochs} must exceed {src!r}'s {s.epochs}")
        if not s.save_state:
            raise ValueError(f"variants.{name}.start: {src!r} does not write its state; set "
                             f"variants.{src}.save_state: true")

    @property
    def reference(self) -> Reference:
        return self._reference

    @property
    def lab(self) -> dict[str, LabNumbers]:
        return self._reference.lab

    @property
    def recipes(self) -> dict[str, RecipeGoal]:
        return self._reference.recipes

    @property
    def check(self) -> Optional[Check]:
        return self._reference.check

    def variant(self, name: str) -> Variant:
        if name not in self.variants:
            raise ParamsError(f"unknown variant {name!r}; allowed: {', '.join(sorted(self.variants))}")
        return self.variants[name]

    def dataset(self, name: str) -> Dataset:
        if name not in self.datasets:
            raise ParamsError(f"unknown dataset {name!r}; allowed: {', '.join(sorted(self.datasets))}")
        return self.datasets[name]


def _one_line(err: ValidationError, defaults: dict, own: dict) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    # A variant's key it does not set itself came from `defaults`: point there, not at a line that
    # does not exist.
    path = e["loc"]
    if len(path) >= 3 and path[0] == "variants" and path[2] in defaults and path[2] not in own.get(path[1], ()):
        msg = _one_line_at(e, ".".join(["defaults", *map(str, path[2:])]))
        return f"{msg} (set in defaults, used by variants.{path[1]})"
    return _one_line_at(e, loc)


def _one_line_at(e: dict, loc: str) -> str:
    return yamlfile.one_line(PARAMS_FILE.name, e, loc)


# Sections of reference.yaml: a params.yaml that still holds one is told where it belongs.
REFERENCE_KEYS = tuple(Reference.model_fields)


def _refuse_old_names(raw: dict) -> None:
    """Protocol `seed` and its dataset keys are now `lab`: the old names get one line saying what to write."""
    if raw.get("protocol") == "seed":
        raise ParamsError("params.yaml: protocol 'seed' is now called 'lab' (the lab's published data); write `protocol: lab`")
    for name, ds in (raw.get("datasets") or {}).items() if isinstance(raw.get("datasets"), dict) else ():
        for old in [k for k in ("seed", "backbone_seed") if isinstance(ds, dict) and k in ds]:
            raise ParamsError(f"params.yaml: datasets.{name}.{old} is now datasets.{name}.{old.replace('seed', 'lab')} "
                              "(protocol 'seed' is now 'lab'); rename the key")


def parse(raw: object, reference_raw: object = None) -> Params:
    """Validate a params mapping (as read from YAML) into a Params object, with the reference
    mapping (reference.yaml's; None: no reference data) checked against it."""
    if not isinstance(raw, dict):
        raise ParamsError(f"params.yaml: the top level must be a mapping, got {type(raw).__name__}")
    for key in REFERENCE_KEYS:
        if key in raw:
            raise ParamsError(f"params.yaml: {key!r} is reference data, not a setting; it belongs in {reference.NAME}")
    _refuse_old_names(raw)
    raw = dict(raw)
    defaults = raw.pop("defaults", {}) or {}
    if not isinstance(defaults, dict):
        raise ParamsError("params.yaml: 'defaults' must be a mapping")
    variants = raw.get("variants")
    own: dict = {}
    if isinstance(variants, dict):
        merged = {}
        for name, v in variants.items():
            if not isinstance(v, dict):
                raise ParamsError(f"params.yaml: variants.{name} must be a mapping, got {v!r}")
            merged[name] = {**defaults, **v}
            own[name] = set(v)
        raw["variants"] = merged
    try:
        params = Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_one_line(err, defaults, own)) from None
    ref = Reference() if reference_raw is None else reference.parse(reference_raw)
    ref.check_against(params.variants)
    params._reference = ref
    return params


def load(path: Path | str = PARAMS_FILE) -> Params:
    """params.yaml, with the reference.yaml beside it when there is one."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file {str(path)!r} not found (run from the repository root)")
    ref_path = path.parent / reference.NAME
    return parse(yamlfile.read(path), yamlfile.read(ref_path) if ref_path.is_file() else None)
