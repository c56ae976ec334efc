"""params.yaml is YAML: anchors, aliases and merge keys read as DVC reads them; duplicate keys and
syntax errors are still one line naming the line."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from dvc.dependency.param import read_param_file
from dvc.fs import LocalFileSystem

from pipelines import config, yamlfile
from pipelines.errors import ParamsError
import isolation

MERGED = """\
defaults: &defaults
  epochs: 10
  lr: 0.001
  layers: &layers {intermediate: fc1, final: logits}
variants:
  base: &base
    <<: *defaults
    dataset: mnist
  longer:
    <<: *base
    epochs: 20            # overrides the merged value: not a duplicate
  two_parents:
    <<: [*base, {lr: 0.5, extra: 1}]
    layers: *layers
list: &list [1, 2]
again: *list
"""


def test_merge_keys_and_aliases_read_as_dvc_reads_them(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(MERGED)
    ours = yamlfile.read(path)
    # What DVC's params dependencies and `dvc params diff` read (ruamel.yaml underneath).
    dvcs = read_param_file(LocalFileSystem(), str(path))
    assert ours == dvcs == yaml.safe_load(MERGED)
    v = ours["variants"]
    assert v["longer"] == {"epochs": 20, "lr": 0.001, "layers": {"intermediate": "fc1", "final": "logits"},
                           "dataset": "mnist"}
    assert v["two_parents"]["lr"] == 0.001 and v["two_parents"]["extra"] == 1   # the first mapping wins
    assert ours["again"] == [1, 2]


def _variant(name: str, body: dict, head: str = "") -> str:
    return f"  {name}: {head}\n" + textwrap.indent(yaml.safe_dump(body, sort_keys=False), "    ")


def test_a_variant_written_with_a_merge_key_loads_as_written_out(tmp_path, params_raw):
    """tl_finetune_aug as `<<: *ft` plus what differs: the same validated params as the file written out."""
    variants = params_raw["variants"]
    ft, aug = variants["tl_finetune"], variants["tl_finetune_aug"]
    assert set(ft) <= set(aug), "the merged variant must name every key of its base for this comparison"
    rest = yaml.safe_dump({k: v for k, v in params_raw.items() if k != "variants"}, sort_keys=False)
    blocks = []
    for name, body in variants.items():
        if name == "tl_finetune":
            blocks.append(_variant(name, body, "&ft"))
        elif name == "tl_finetune_aug":
            blocks.append(f"  {name}:\n    <<: *ft\n"
                          + textwrap.indent(yaml.safe_dump({k: v for k, v in aug.items() if ft.get(k) != v},
                                                           sort_keys=False), "    "))
        else:
            blocks.append(_variant(name, body))
    merged_text = rest + "variants:\n" + "".join(blocks)
    assert "<<: *ft" in merged_text
    (tmp_path / "merged").mkdir()
    (tmp_path / "plain").mkdir()
    (tmp_path / "merged" / "params.yaml").write_text(merged_text)
    (tmp_path / "plain" / "params.yaml").write_text(isolation.committed_params_text())
    merged, plain = config.load(tmp_path / "merged" / "params.yaml"), config.load(tmp_path / "plain" / "params.yaml")
    assert merged.variants["tl_finetune_aug"] == plain.variants["tl_finetune_aug"]
    assert merged.variants["tl_finetune_aug"].augment != merged.variants["tl_finetune"].augment
    assert merged.model_dump() == plain.model_dump()
    assert read_param_file(LocalFileSystem(), str(tmp_path / "merged" / "params.yaml")) == \
        yamlfile.read(tmp_path / "merged" / "params.yaml")


@pytest.mark.parametrize("text, names", [
    ("a: 1\nb: 2\na: 3\n", "duplicate key 'a' at line 3"),
    # A key written twice beside a merge key is still a duplicate; overriding a merged key is not.
    ("base: &b {x: 1}\nd:\n  <<: *b\n  x: 2\n  y: 1\n  y: 2\n", "duplicate key 'y' at line 6"),
    ("base: &b {x: 1}\nd:\n  <<: *b\n  <<: *b\n", "duplicate key '<<' at line 4"),
    ("a: [1\n", "not valid YAML at line 2 (expected ',' or ']'"),
    ("d:\n  <<: *nowhere\n", "not valid YAML at line 2 (found undefined alias 'nowhere')"),
    ("d: {<<: 3}\n", "not valid YAML at line 1 (expected a mapping or list of mappings for merging"),
])
def test_duplicates_and_syntax_errors_name_the_line(tmp_path, text, names):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as err:
        yamlfile.read(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: {names}") and "\n" not in msg, msg
