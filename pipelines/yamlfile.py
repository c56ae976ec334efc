"""What params.yaml and reference.yaml share: strict typed models, a YAML reader that refuses
duplicate keys (anchors, aliases and merge keys read as in any YAML reader), and pydantic's report turned into one line naming the file, the key and the value.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from pipelines.errors import ParamsError


class Strict(BaseModel):
    """Frozen, strictly typed, unknown keys forbidden: a typo is an error, never a default."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


MERGE_TAG = "tag:yaml.org,2002:merge"


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a pasted-twice variant would silently win.

    Only the keys a mapping writes itself are compared: a key it also takes from a merge key
    (`<<: *base`) is an override, which is what merging is for. SafeLoader's own construct_mapping
    then resolves the merge, anchors and aliases as any YAML reader (and DVC) does."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                # A merge key has no value of its own to construct; two of them are a duplicate too.
                key = "<<" if key_node.tag == MERGE_TAG else self.construct_object(key_node, deep=True)
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
        problem = " ".join(str(getattr(err, "problem", None) or "").split())
        raise ParamsError(f"{path}: not valid YAML{where}" + (f" ({problem})" if problem else "")) from None


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
