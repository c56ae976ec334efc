"""The report from a synthetic tree of stage outputs (docs/outputs.md): sections, tables, HTML, failures."""
from __future__ import annotations

import base64
import io
import json
import re
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipelines import config, report
from pipelines.io import write_csv, write_json, write_bytes
from stages import report as report_stage

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SIMPLE_CNN_LAYERS = [("conv1.weight", "32x1x3x3", 288), ("conv1.bias", "32", 32), ("conv2.weight", "32x32x3x3", 9216),
                     ("conv2.bias", "32", 32), ("fc1.weight", "128x6272", 802816), ("fc1.bias", "128", 128),
                     ("fc2.weight", "10x128", 1280), ("fc2.bias", "10", 10)]
# Synthetic results, one made-up accuracy per variant: test data, not measurements.
SYNTHETIC_ACC = {"mnist_cnn": 91.23, "cifar_alexnet": 88.02, "tl_scratch": 70.5, "tl_svm": 81.0,
                 "tl_finetune": 84.5, "tl_finetune_aug": 86.0}


def _params(extra: dict | None = None) -> config.Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["variants"].update(extra or {})
    return config.parse(raw)


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, format="PNG")
    return buf.getvalue()


def write_dataset(root: Path, name: str, height: int, channels: int, classes: list[str], n: tuple[int, int],
                  backbone: str | None = None) -> None:
    d = root / "data" / "prepared" / name
    write_json(d / "meta.json", {
        "dataset": name, "source": "fashion_mnist", "source_title": f"Fashion-MNIST (synthetic {height}px)",
        "protocol": "offline", "classes": classes, "height": height, "width": height, "channels": channels,
        "mean": [0.5] * channels, "std": [0.25] * channels, "splits": {"train": n[0], "val": n[1]},
        "files": {}, "backbone": {"name": backbone, "file": "backbone.pt", "sha256": "0" * 64,
                                  "origin": "test"} if backbone else None})
    write_csv(d / "sizes.csv", ["split", "height", "width", "channels", "samples"],
              [("train", height, height, channels, n[0]), ("val", height, height, channels, n[1])])


def write_variant(root: Path, v: str, dataset: str, classes: list[str], epochs: int,
                  layers=None, total: int | None = None) -> None:
    res, met = root / "results" / v, root / "metrics" / v
    acc = SYNTHETIC_ACC.get(v, 90.0)
    layers = layers or [("body.weight", "100x10", 1000), ("head.weight", f"{len(classes)}x10", 10 * len(classes))]
    total = sum(p for _, _, p in layers) if total is None else total
    hist = [(e, f"{1 / e:.4f}", f"{acc - 5 + e / epochs:.2f}", f"{1.1 / e:.4f}", f"{acc - epochs + e:.2f}",
             "0.001", "2.5") for e in range(1, epochs + 1)]
    write_csv(res / "train" / "history.csv",
              ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"], hist)
    write_csv(res / "train" / "params.csv", ["layer", "shape", "params"], layers)
    write_bytes(res / "train" / "curves.png", _png("red"))
    write_json(met / "train.json", {
        "variant": v, "dataset": dataset, "model": "m", "protocol": "offline", "params_total": total,
        "best_val_acc": acc, "best_epoch": epochs, "final_val_acc": acc, "min_val_loss_epoch": epochs,
        "epochs": epochs, "train_seconds": 12.5, "train_img_per_s": 1000.0, "device": "cpu", "precision": "fp32"})
    write_json(met / "eval.json", {
        "split": "val", "n": 1000, "accuracy": acc, "macro_f1": 0.8765,
        "top_confusions": [{"true": classes[-1], "pred": classes[0], "count": 17},
                           {"true": classes[0], "pred": classes[-1], "count": 9},
                           {"true": classes[1], "pred": classes[0], "count": 3}]})
    write_bytes(res / "eval" / "confusion.png", _png("green"))
    write_bytes(res / "eval" / "confusions.png", _png("blue"))
    write_json(met / "embed.json", {
        "points": 1000, "tsne_backend": "openTSNE", "seconds": 3.0,
        "layers": {"intermediate": {"module": "fc1", "dim": 128, "silhouette": 0.2512, "knn_acc": 88.1},
                   "final": {"module": "fc2", "dim": 10, "silhouette": 0.4013, "knn_acc": 90.4,
                             "linear_probe_acc": 91.0}}})
    write_bytes(res / "embed" / "tsne.png", _png("purple"))


def populate(root: Path, variants=SYNTHETIC_ACC) -> Path:
    """Every file docs/outputs.md promises the report, for the lab's six variants (synthetic values)."""
    write_dataset(root, "mnist", 28, 1, FASHION, (60000, 10000))
    write_dataset(root, "cifar10", 32, 3, FASHION, (60000, 10000))
    write_dataset(root, "transfer", 112, 3, ["T-shirt/top", "Shirt"], (200, 200), backbone="efficientnet_lite0")
    for v in variants:
        if v == "mnist_cnn":
            write_variant(root, v, "mnist", FASHION, 10, layers=SIMPLE_CNN_LAYERS)
        elif v == "cifar_alexnet":
            write_variant(root, v, "cifar10", FASHION, 15)
        else:
            write_variant(root, v, "transfer", ["T-shirt/top", "Shirt"], 1 if v == "tl_svm" else 15)
    return root


def _section(md: str, heading: str) -> str:
    start = md.index(heading)
    nxt = md.find("\n## ", start + len(heading))
    return md[start:] if nxt < 0 else md[start:nxt]


def test_full_report_has_every_section_and_table(tmp_path):
    rep = report.build(_params(), populate(tmp_path / "root"), now=NOW)
    md = rep.markdown
    assert rep.warnings == ()
    assert "not run" not in md.lower()
    assert "2026-11-28 12:00 UTC" in md and "Protocol: **offline**" in md
    data = _section(md, "## Data used")
    assert data.count("different data: indicative only") == 3
    assert "EfficientNet-Lite0" in data and "ResNet-18" in data and "MNIST" in data and "CIFAR-10" in data

    p11 = _section(md, "## Part 1.1")
    assert "| split | height | width | channels | samples |" in p11 and "| train | 28 | 28 | 1 | 60,000 |" in p11
    assert "| `conv1.weight` | 32x1x3x3 | 288 |" in p11 and "**813,802**" in p11
    assert "| trainable parameters | 813,802 | 813,802 | +0 |" in p11
    assert "| best validation accuracy | 91.23 % | 98.94 % | -7.71 pp |" in p11
    assert "| epoch of the best | 10 | 10 | +0 |" in p11
    assert "| 1 | Ankle boot | T-shirt/top | 17 |" in p11 and "| 2 | T-shirt/top | Ankle boot | 9 |" in p11
    assert "| 3 |" not in p11  # only the two most frequent
    assert "true 7 → predicted 2" in p11  # the lab's own confusions, beside ours
    assert "| layer | module | dim | silhouette | knn acc | linear probe acc |" in p11
    assert "| final | `fc2` | 10 | 0.4013 | 90.4 | 91 |" in p11
    assert "Different data: the comparison is indicative only" in p11
    for kind in ("curves", "confusion", "confusions", "tsne"):
        assert f"(figures/mnist_cnn_{kind}.png)" in p11

    p12 = _section(md, "## Part 1.2")
    assert "### Per-epoch log" in p12 and "| epoch | train loss | val loss | val accuracy |" in p12
    assert "| 15 |" in p12 and "| best validation accuracy | 88.02 % | 71.27 % | +16.75 pp |" in p12
    assert "| trainable parameters | 1,100 | 6,199,498 | -6,198,398 |" in p12
    assert "61,100,840" in p12  # the lab's mistaken table is called out
    assert "### Per-epoch log" not in p11

    p13 = _section(md, "## Part 1.3")
    for label, lab in [("trained from scratch", "72.00 %"), ("pretrained + linear SVM", "90.50 %"),
                       ("fine-tuning, no augmentation", "92.50 %"), ("fine-tuning, with augmentation", "96.00 %")]:
        assert re.search(rf"\| {re.escape(label)} \| `tl_\w+` \| \d+\.\d\d % \| {re.escape(lab)} \| [+-]\d+\.\d\d pp \|",
                         p13), label
    assert "| fine-tuning, with augmentation | `tl_finetune_aug` | 86.00 % | 96.00 % | -10.00 pp |" in p13
    assert "(figures/tl_svm_tsne.png)" in p13 and "tl_svm_curves.png" not in p13
    for v in ("tl_scratch", "tl_finetune", "tl_finetune_aug"):
        assert f"(figures/{v}_curves.png)" in p13 and f"(figures/{v}_tsne.png)" in p13
    assert "## Other variants" not in md
    # Lab order.
    assert md.index("## Part 1.1") < md.index("## Part 1.2") < md.index("## Part 1.3")


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href", "srcset", "data", "action", "poster"):
                self.refs.append((tag, k, v or ""))


def test_written_report_is_self_contained(tmp_path):
    rep = report.build(_params(), populate(tmp_path / "root"), now=NOW)
    out = tmp_path / "reports"
    report.write(rep, out)
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    linked = set(re.findall(r"\(figures/([^)]+)\)", md))
    assert linked == {p.name for p in (out / "figures").iterdir()} and len(linked) == 2 * 4 + 3 * 2 + 1
    assert "<table>" in page and 'style="text-align: right;"' in page
    refs = _Refs()
    refs.feed(page)
    imgs = [v for tag, k, v in refs.refs if tag == "img"]
    assert len(imgs) == len(linked)
    for tag, k, v in refs.refs:
        assert v.startswith("data:image/png;base64,"), (tag, k, v[:60])
        with Image.open(io.BytesIO(base64.b64decode(v.split(",", 1)[1], validate=True))) as im:
            assert im.format == "PNG"
    assert "<link" not in page and "<script" not in page and "@import" not in page
    assert not re.search(r"url\(", page)


def test_missing_variants_say_not_run_and_stale_figures_go(tmp_path):
    root = populate(tmp_path / "root")
    out = tmp_path / "reports"
    report.write(report.build(_params(), root, now=NOW), out)
    assert (out / "figures" / "cifar_alexnet_tsne.png").exists()

    partial = tmp_path / "partial"
    populate(partial, variants=["mnist_cnn", "tl_finetune"])
    (partial / "metrics" / "mnist_cnn" / "embed.json").unlink()  # one stage of a variant not run
    rep = report.build(_params(), partial, now=NOW)
    md = rep.markdown
    assert "*Not run:* no results for `cifar_alexnet`" in _section(md, "## Part 1.2")
    assert "*Not run:* `metrics/mnist_cnn/embed.json` is missing" in _section(md, "## Part 1.1")
    p13 = _section(md, "## Part 1.3")
    assert "| trained from scratch | `tl_scratch` | not run | 72.00 % |" in p13
    assert "*Not run:* no results for `tl_svm`" in p13
    assert "| fine-tuning, no augmentation | `tl_finetune` | 84.50 % | 92.50 % | -8.00 pp |" in p13

    report.write(rep, out)
    names = {p.name for p in (out / "figures").iterdir()}
    assert "cifar_alexnet_tsne.png" not in names and "mnist_cnn_tsne.png" not in names
    assert "mnist_cnn_curves.png" in names and "tl_finetune_tsne.png" in names

    # Nothing at all: every part still renders.
    empty = report.build(_params(), tmp_path / "nothing", now=NOW).markdown
    assert empty.count("*Not run:*") >= 6 and "Code version: unknown" in empty


def test_parameter_sum_mismatch_is_a_visible_warning(tmp_path):
    root = populate(tmp_path / "root")
    write_variant(root, "cifar_alexnet", "cifar10", FASHION, 15, total=61_100_840)
    rep = report.build(_params(), root, now=NOW)
    assert len(rep.warnings) == 1 and "sum to 1,100 but params_total is 61,100,840" in rep.warnings[0]
    assert "> **Warning:** the per-layer parameters of `cifar_alexnet` sum to 1,100" in rep.markdown
    assert "## Warnings" in rep.markdown and rep.markdown.index("## Warnings") < rep.markdown.index("## Part 1.1")
    page = report.render_html(rep)
    assert "<blockquote>" in page and "61,100,840" in page


@pytest.mark.parametrize("rel, content, expect", [
    ("metrics/mnist_cnn/train.json", '{"params_total": 1}', "missing key 'best_val_acc'"),
    ("metrics/mnist_cnn/train.json", "{not json", "not valid JSON"),
    ("metrics/cifar_alexnet/eval.json", json.dumps({"n": 1, "accuracy": "high", "macro_f1": 0.1,
                                                    "top_confusions": []}), "accuracy = 'high'"),
    ("metrics/tl_svm/embed.json", json.dumps({"points": 3, "layers": {"final": {"dim": 2}}}), "missing key 'module'"),
    ("results/tl_scratch/train/history.csv", "epoch,train_loss,train_acc,val_loss,val_acc\none,1,2,3,4\n",
     "epoch = 'one' is not a number"),
    ("results/mnist_cnn/train/params.csv", "name,count\nfc,3\n", "columns ['layer', 'params', 'shape'] missing"),
    ("results/mnist_cnn/eval/confusion.png", "not a png", "not a PNG image"),
])
def test_wrong_format_is_a_clear_error(tmp_path, rel, content, expect):
    root = populate(tmp_path / "root")
    (root / rel).write_text(content)
    with pytest.raises(report.ReportError, match=re.escape(expect)) as err:
        report.build(_params(), root, now=NOW)
    assert rel in str(err.value) and "\n" not in str(err.value)


def test_other_variants_are_listed(tmp_path):
    extra = {"mnist_cnn_wide": {"dataset": "mnist", "model": "simple_cnn", "hidden": 256,
                                "layers": {"intermediate": "fc1", "final": "fc2"}},
             "cifar_alexnet_cosine": {"dataset": "cifar10", "model": "alexnet_cifar", "schedule": "cosine",
                                      "layers": {"intermediate": "flatten", "final": "classifier.6"}}}
    root = populate(tmp_path / "root")
    write_variant(root, "mnist_cnn_wide", "mnist", FASHION, 10)
    other = _section(report.build(_params(extra), root, now=NOW).markdown, "## Other variants")
    assert "| `mnist_cnn_wide` | `mnist` | simple_cnn | 1,100 | 90.00 % | 10 | 0.8765 | 98.94 % (`mnist_cnn`) | -8.94 pp |" in other
    assert "| `cifar_alexnet_cosine` | `cifar10` | alexnet_cifar | not run |" in other


def test_stage_cli(tmp_path, capsys):
    root = populate(tmp_path / "root")
    params_file = tmp_path / "params.yaml"
    params_file.write_text((REPO / "params.yaml").read_text())
    out = tmp_path / "reports"
    assert report_stage.main(["--root", str(root), "--out", str(out), "--params", str(params_file)]) == 0
    assert (out / "report.md").is_file() and (out / "report.html").is_file()

    (root / "metrics" / "tl_svm" / "eval.json").write_text("[]")
    assert report_stage.main(["--root", str(root), "--out", str(out), "--params", str(params_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "eval.json: expected a JSON object" in err and "\n" not in err
    assert report_stage.main(["--params", str(tmp_path / "nope.yaml")]) == 2
