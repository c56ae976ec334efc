"""What params.yaml and reference.yaml share: strict typed models, a YAML reader that refuses
duplicate keys, and pydantic's report turned into one line naming the file, the key and the value.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from pipelines.errors import ParamsError


class Strict(BaseModel):
    """Frozen, strictly typed, unknown keys forbidden: a typo is an error, never a default."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a pasted-twice variant would silently win."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                break  # SafeLoader reports an unhashable key itself
            if key in seen:
                raise _DuplicateKey(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
            seen.add(key)
        return super().construct_mapping(node, deep)


def read(path: Path) -> object:
    """The YAML document of an existing file; a duplicate key or a syntax error is a ParamsError."""
    text = path.read_text()
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as err:
        raise ParamsError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None


def one_line(file: str, e: dict, loc: str) -> str:
    """One pydantic error (an item of ValidationError.errors()) as `file: key ...: what is wrong`."""
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        return f"{file}: unknown key {loc!r} (not a setting; check the spelling)"
    if e["type"] == "missing":
        return f"{file}: missing key {loc!r}"
    if "input" in e and e["type"] not in ("value_error", "assertion_error") and loc:
        return f"{file}: {loc} = {e['input']!r}: {msg}"
    prefix = f"{loc}: " if loc else ""
    return f"{file}: {prefix}{msg.removeprefix('Value error, ')}"
