"""reference.yaml -> frozen, typed reference data: what this project's results are judged against.

None of it changes what a stage computes: the lab's own numbers (`lab`), which variant plays which
role in the lab's parts (`parts`), the stronger recipes and their goals (`recipes`), and the CI gate
on params changes (`check`). DVC reads the file as a second
params file and only the stages that print these values declare them, so editing one reruns only
those. A bad value stops the run with one line naming reference.yaml, the key and the value, as
params.yaml's do. A workspace without the file has no reference data: no lab column, no recipe
goals, no gated metric.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Mapping, Optional

from pydantic import Field, ValidationError

from pipelines import yamlfile
from pipelines.errors import ParamsError
from pipelines.yamlfile import Strict

REFERENCE_FILE = Path("reference.yaml")
NAME = REFERENCE_FILE.name


class Check(Strict):
    """The gate of `python -m pipelines.cli.check`: a params change fails when one of these
    metrics ("file:key", as `dvc metrics` names them) drops by more than tolerance_pp points."""

    tolerance_pp: float = Field(ge=0, le=100)
    metrics: list[Annotated[str, Field(pattern=r"^[\w./-]+\.json:[\w.]+$")]] = Field(min_length=1)


class LabNumbers(Strict):
    params: Optional[int] = None
    best_val_acc: Optional[float] = None
    best_epoch: Optional[int] = None
    val_acc: Optional[float] = None


class RecipeGoal(Strict):
    """A stronger recipe judged against the lab's: same model and epoch budget as `baseline`,
    and the best-validation-accuracy goal it is meant to reach under each protocol."""

    baseline: str
    # Keyed by params.yaml's protocols (config.Protocol; this module sits below config).
    target: dict[Literal["lab", "offline"], Annotated[float, Field(gt=0, le=100)]] = {}


# The lab's parts by the name `run --part` takes, and the roles (fields of `Parts`) each part's variants play.
PART_ROLES = {"1.1": ("simple_cnn", "more_epochs", "cheaper"), "1.2": ("alexnet",), "1.3": ("transfer",)}
PART_ALIASES = {"transfer": "1.3"}


class Parts(Strict):
    """Which variant plays which role in the lab's parts: the report's sections and `run --part`
    read it. A role left out has no variant: its section says so."""

    simple_cnn: Optional[str] = None     # Part 1.1's Simple CNN
    more_epochs: Optional[str] = None    # Part 1.1's "would more epochs help?": the same recipe, longer
    cheaper: Optional[str] = None        # Part 1.1's "a cheaper network"
    alexnet: Optional[str] = None        # Part 1.2's AlexNet
    transfer: dict[str, str] = {}        # Part 1.3's options in the lab's order: variant -> the report's label

    def named(self) -> dict[str, str]:
        """Every variant named here -> its key in reference.yaml (`parts.<role>`)."""
        out = {v: f"parts.{role}" for role in ("simple_cnn", "more_epochs", "cheaper", "alexnet")
               if (v := getattr(self, role)) is not None}
        return out | {v: f"parts.transfer.{v}" for v in self.transfer}

    def lab_variants(self) -> tuple[str, ...]:
        """The variants that are the lab's own protocols: each part's main variant and the transfer options."""
        return tuple(v for v in (self.simple_cnn, self.alexnet) if v is not None) + tuple(self.transfer)

    def part_of(self, variant: str) -> Optional[str]:
        """The part ("1.1", "1.2", "1.3") whose roles name this variant, if any."""
        return next((part for part in PART_ROLES if variant in self.of_part(part)), None)

    def of_part(self, part: str) -> list[str]:
        """The variants of one part ("1.1", "1.2", "1.3" or "transfer"), in order."""
        part = PART_ALIASES.get(part, part)
        if part not in PART_ROLES:
            raise ParamsError(f"part {part!r} is not one of the lab's parts; allowed: "
                              f"{', '.join([*PART_ROLES, *PART_ALIASES])}")
        out: list[str] = []
        for role in PART_ROLES[part]:
            value = getattr(self, role)
            out += list(value) if isinstance(value, dict) else [] if value is None else [value]
        return out


class Reference(Strict):
    lab: dict[str, LabNumbers] = {}
    parts: Parts = Parts()
    recipes: dict[str, RecipeGoal] = {}
    check: Optional[Check] = None

    def check_against(self, variants: Mapping[str, object]) -> None:
        """Every variant named here is one of params.yaml's `variants` (config.Variant objects), and a
        recipe keeps its baseline's dataset, model, epochs and width."""
        def unknown(key: str, name: str) -> ParamsError:
            return ParamsError(f"{NAME}: {key}: {name!r} is not a variant; allowed: {sorted(variants)}")

        for name in self.lab:
            if name not in variants:
                raise unknown(f"lab.{name}", name)
        for name, key in self.parts.named().items():
            if name not in variants:
                raise unknown(key, name)
        for name, rc in self.recipes.items():
            for key, ref in ((name, name), (f"{name}.baseline", rc.baseline)):
                if ref not in variants:
                    raise unknown(f"recipes.{key}", ref)
            if rc.baseline == name:
                raise ParamsError(f"{NAME}: recipes.{name}.baseline: {name!r} cannot be its own baseline")
            v, b = variants[name], variants[rc.baseline]
            for field in ("dataset", "model", "epochs", "hidden"):
                if getattr(v, field) != getattr(b, field):
                    raise ParamsError(
                        f"{NAME}: recipes.{name}: {field} {getattr(v, field)!r} differs from baseline "
                        f"{rc.baseline!r}'s {getattr(b, field)!r}; a recipe keeps the model and budget")


def parse(raw: object) -> Reference:
    """Validate a reference mapping (as read from YAML) on its own; config.parse checks it
    against the params."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{NAME}: the top level must be a mapping, got {type(raw).__name__}")
    for name, rc in (raw.get("recipes") or {}).items() if isinstance(raw.get("recipes"), dict) else ():
        if isinstance(rc, dict) and isinstance(rc.get("target"), dict) and "seed" in rc["target"]:
            raise ParamsError(f"{NAME}: recipes.{name}.target.seed: protocol 'seed' is now called 'lab'; "
                              f"rename the key to `lab`")
    try:
        return Reference.model_validate(raw)
    except ValidationError as err:
        e = err.errors()[0]
        raise ParamsError(yamlfile.one_line(NAME, e, ".".join(str(p) for p in e["loc"]))) from None

