"""The variant -> training recipe mapping: the one place an engine.Recipe is built from params."""
from __future__ import annotations

from dataclasses import fields, replace
from typing import TYPE_CHECKING

from pipelines.train.engine import Recipe

if TYPE_CHECKING:
    from pipelines.config import Variant


def recipe_for(v: "Variant", **changes) -> Recipe:
    """The recipe a variant trains with: each Recipe field read from the variant's params field of the
    same name, then `changes` (e.g. epochs=1 for a benchmark) applied on top."""
    return replace(Recipe(**{f.name: getattr(v, f.name) for f in fields(Recipe)}), **changes)
