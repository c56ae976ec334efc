"""DVC plots rendered to local SVG/PNG files through the real `dvc plots show --json`."""
import os
import subprocess
import sys

import pytest
import vl_convert  # noqa: F401  (required: requirements.txt; plots_offline imports it lazily)

from pipelines.cli import plots as plots_offline

DVC_YAML = """\
plots:
  - r/history.csv:
      x: epoch
      y: [train_loss, val_loss]
      title: loss per epoch
  - accuracy:
      x: epoch
      y:
        r/history.csv: [train_acc, val_acc]
      title: accuracy per epoch (%)
  - confusion:
      template: confusion
      x: actual
      y:
        r/confusion.csv: predicted
  - missing/history.csv:
      x: epoch
      y: val_loss
"""


@pytest.fixture
def repo(tmp_path):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True, env=env)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True, env=env)
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "history.csv").write_text(
        "epoch,train_loss,val_loss,train_acc,val_acc\n1,0.9,0.8,70,72\n2,0.5,0.6,80,79\n3,0.4,0.55,84,81\n")
    (tmp_path / "r" / "confusion.csv").write_text(
        "actual,predicted\nShirt,Shirt\nShirt,Coat\nCoat,Coat\nCoat,Coat\nBag,Bag\n")
    (tmp_path / "dvc.yaml").write_text(DVC_YAML)
    return tmp_path


def test_renders_every_plot_to_local_files_only(repo, capsys):
    out = repo / "reports" / "plots"
    assert plots_offline.main(["--root", str(repo), "--out", str(out)]) == 0
    res = capsys.readouterr()
    assert "3 plot(s)" in res.out
    assert "missing/history.csv" in res.err  # a plot whose file is absent is named, not fatal

    svgs, pngs = sorted(out.glob("*.svg")), sorted(out.glob("*.png"))
    assert len(svgs) == 3 and len(pngs) == 3
    for f in pngs:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loss = next(f for f in svgs if "history" in f.name).read_text()
    assert "<svg" in loss and "loss per epoch" in loss and "val_loss" in loss
    assert "Shirt" in next(f for f in svgs if "confusion" in f.name).read_text()

    index = (out / "index.html").read_text()
    for f in svgs:
        assert f'src="{f.name}"' in index
    assert "Not rendered" in index and "missing/history.csv" in index
    for f in [out / "index.html", *svgs]:
        assert plots_offline.remote_references(f.read_text()) == [], f.name
        assert "<script" not in f.read_text()


def test_remote_reference_check_ignores_namespaces_only():
    assert plots_offline.remote_references('<svg xmlns="http://www.w3.org/2000/svg">') == []
    assert plots_offline.remote_references('<script src="https://cdn.jsdelivr.net/npm/vega@5">') == [
        "https://cdn.jsdelivr.net/npm/vega@5"]


def test_no_dvc_repo_is_one_line_error(tmp_path, capsys):
    assert plots_offline.main(["--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'dvc.yaml'} not found")
