"""The report from a synthetic tree of stage outputs (docs/outputs.md): sections, tables, HTML, failures."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipelines import config, report
from pipelines.report.alexnet import against_claim
from pipelines.train import diagnosis
from pipelines.io import write_csv, write_json, write_bytes
from stages import report as report_stage

import isolation

REPO = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SIMPLE_CNN_LAYERS = [("conv1.weight", "32x1x3x3", 288), ("conv1.bias", "32", 32), ("conv2.weight", "32x32x3x3", 9216),
                     ("conv2.bias", "32", 32), ("fc1.weight", "128x6272", 802816), ("fc1.bias", "128", 128),
                     ("fc2.weight", "10x128", 1280), ("fc2.bias", "10", 10)]
# Synthetic results, one made-up accuracy per variant: test data, not measurements.
SYNTHETIC_ACC = {"mnist_cnn": 91.23, "cifar_alexnet": 88.02, "tl_scratch": 70.5, "tl_svm": 81.0,
                 "tl_finetune": 84.5, "tl_finetune_aug": 86.0, "mnist_cnn_20ep": 91.73, "mnist_cnn_small": 90.83,
                 "mnist_cnn_plus": 93.61, "cifar_alexnet_plus": 90.02}
SMALL_CNN_LAYERS = [("conv1.weight", "32x1x3x3", 288), ("conv1.bias", "32", 32), ("conv2.weight", "32x32x3x3", 9216),
                    ("conv2.bias", "32", 32), ("fc.weight", "10x6272", 62720), ("fc.bias", "10", 10)]
FLOPS = {"mnist_cnn": 16_000_000, "mnist_cnn_small": 14_400_000}
IMG_PER_S = {"mnist_cnn": 1000.0, "mnist_cnn_small": 1250.0}
REPLICATE_OFFSETS = {1: +1.0, 2: -1.0}   # params.yaml replicates.seeds -> accuracy offset of that run
DETERMINISTIC = "tl_svm"   # the same model for every seed: fitted once, no replicates (params.yaml)


def _params(extra: dict | None = None, protocol: str = "offline") -> config.Params:
    """The committed params, under the protocol the synthetic tree's meta.json files claim."""
    raw = isolation.committed_params()
    raw["protocol"] = protocol
    raw["variants"].update(extra or {})
    raw["replicates"]["seeds"] = list(REPLICATE_OFFSETS)   # the seeds these tests write, whatever the checkout runs
    return config.parse(raw, isolation.committed_reference())


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buf, format="PNG")
    return buf.getvalue()


def write_dataset(root: Path, name: str, height: int, channels: int, classes: list[str], n: tuple[int, ...],
                  backbone: str | None = None) -> None:
    d = root / "data" / "prepared" / name
    splits = dict(zip(("train", "val", "test"), n))
    write_json(d / "meta.json", {
        "dataset": name, "source": "fashion_mnist", "source_title": f"Fashion-MNIST (synthetic {height}px)",
        "protocol": "offline", "classes": classes, "height": height, "width": height, "channels": channels,
        "mean": [0.5] * channels, "std": [0.25] * channels, "splits": splits,
        "files": {}, "backbone": {"name": backbone, "file": "backbone.pt", "sha256": "0" * 64,
                                  "origin": "test"} if backbone else None})
    write_csv(d / "sizes.csv", ["split", "height", "width", "channels", "samples"],
              [(split, height, height, channels, k) for split, k in splits.items()])


def synthetic_history(acc: float, epochs: int, overfit_after: int | None = None) -> list[tuple]:
    """(epoch, train_loss, train_acc, val_loss, val_acc) rows; the validation loss rises after `overfit_after`."""
    rows = []
    for e in range(1, epochs + 1):
        val_loss = 1.1 / e if overfit_after is None or e <= overfit_after else 1.1 / overfit_after * (1 + 0.05 * (e - overfit_after))
        rows.append((e, round(1 / e, 4), round(acc - 5 + e / epochs, 2), round(val_loss, 4), round(acc - epochs + e, 2)))
    return rows


def _train_json(v: str, dataset: str, acc: float, total: int, hist: list[tuple], seed: int = 42,
                test_acc: float | None = None) -> dict:
    rows = [dict(zip(("epoch", "train_loss", "train_acc", "val_loss", "val_acc"), h)) for h in hist]
    best = max(rows, key=lambda r: r["val_acc"])
    return {"variant": v, "dataset": dataset, "model": "m", "protocol": "offline", "seed": seed,
            "params_total": total, "flops_per_image": FLOPS.get(v, 1_000_000), "best_val_acc": acc,
            "best_epoch": best["epoch"], "final_val_acc": rows[-1]["val_acc"],
            "min_val_loss_epoch": min(rows, key=lambda r: r["val_loss"])["epoch"], "epochs": len(rows),
            "val_n": 1000, **({"test_acc": test_acc, "test_n": 200} if test_acc is not None else {}),
            "train_seconds": 12.5, "train_img_per_s": IMG_PER_S.get(v, 1000.0), "device": "cpu",
            "precision": "fp32", "diagnosis": diagnosis.diagnose(rows, 1000)}


def write_variant(root: Path, v: str, dataset: str, classes: list[str], epochs: int,
                  layers=None, total: int | None = None, history: list[tuple] | None = None) -> None:
    res, met = root / "results" / v, root / "metrics" / v
    acc = SYNTHETIC_ACC.get(v, 90.0)
    layers = layers or [("body.weight", "100x10", 1000), ("head.weight", f"{len(classes)}x10", 10 * len(classes))]
    total = sum(p for _, _, p in layers) if total is None else total
    hist = history or synthetic_history(acc, epochs)
    write_csv(res / "train" / "history.csv", ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"],
              [(*h, "0.001", "2.5") for h in hist])
    write_csv(res / "train" / "params.csv", ["layer", "shape", "params"], layers)
    write_bytes(res / "train" / "curves.png", _png("red"))
    test_acc = acc - 0.5 if dataset == "transfer" else None
    write_json(met / "train.json", _train_json(v, dataset, acc, total, hist, test_acc=test_acc))
    write_json(met / "evaluate.json", {
        "split": "val", "n": 1000, "accuracy": acc, "macro_f1": 0.8765,
        **({"test_accuracy": test_acc, "test_n": 200} if test_acc is not None else {}),
        "top_confusions": [{"true": classes[-1], "pred": classes[0], "count": 17},
                           {"true": classes[0], "pred": classes[-1], "count": 9},
                           {"true": classes[1], "pred": classes[0], "count": 3}]})
    # Recall falls with the class index, so the worst class is the last one.
    write_csv(res / "evaluate" / "per_class.csv", ["class", "precision", "recall", "f1", "support"],
              [(c, "0.9000", f"{0.99 - 0.02 * i:.4f}", "0.9000", 100) for i, c in enumerate(classes)])
    write_bytes(res / "evaluate" / "confusion.png", _png("green"))
    write_bytes(res / "evaluate" / "confusions.png", _png("blue"))
    write_json(met / "embed.json", {
        "points": 1000, "tsne_backend": "openTSNE", "seconds": 3.0,
        "layers": {"intermediate": {"module": "fc1", "dim": 128, "subsample": 1000, "silhouette_features": 0.2512,
                                    "silhouette_tsne": 0.3011, "knn_acc_features": 88.1, "knn_acc_tsne": 87.5,
                                    "linear_probe_acc": 89.0, "trustworthiness": 0.85, "seconds": 1.0},
                   "final": {"module": "fc2", "dim": 10, "subsample": 1000, "silhouette_features": 0.4013,
                             "silhouette_tsne": 0.4511, "knn_acc_features": 90.4, "knn_acc_tsne": 90.0,
                             "linear_probe_acc": acc + 0.25, "trustworthiness": 0.97, "seconds": 1.0}}})
    write_bytes(res / "embed" / "tsne.png", _png("purple"))


def write_replicates(root: Path, v: str, offsets: dict[int, float] = REPLICATE_OFFSETS) -> None:
    acc = SYNTHETIC_ACC[v]
    for seed, off in offsets.items():
        hist = synthetic_history(acc + off, 1 if v == "tl_svm" else 15)
        write_json(root / "metrics" / "replicates" / f"{v}-{seed}.json",
                   {**_train_json(v, "transfer", acc + off, 1100, hist, seed=seed, test_acc=acc + off - 0.5)})


def populate(root: Path, variants=SYNTHETIC_ACC, replicates: bool = True) -> Path:
    """Every file docs/outputs.md promises the report, for every variant in params.yaml (synthetic values)."""
    write_dataset(root, "mnist", 28, 1, FASHION, (60000, 10000))
    write_dataset(root, "cifar10", 32, 3, FASHION, (60000, 10000))
    write_dataset(root, "transfer", 112, 3, ["T-shirt/top", "Shirt"], (200, 200, 200), backbone="efficientnet_lite0")
    for v in variants:
        if v in ("mnist_cnn", "mnist_cnn_plus"):
            write_variant(root, v, "mnist", FASHION, 10, layers=SIMPLE_CNN_LAYERS)
        elif v == "mnist_cnn_20ep":
            # Same seed as mnist_cnn: its first ten epochs are mnist_cnn's, then ten more.
            first = synthetic_history(SYNTHETIC_ACC["mnist_cnn"], 10)
            more = [(e, round(1 / e, 4), 92.0, round(0.11 * (1 + 0.05 * (e - 10)), 4), 91.73) for e in range(11, 21)]
            write_variant(root, v, "mnist", FASHION, 20, layers=SIMPLE_CNN_LAYERS, history=first + more)
        elif v == "mnist_cnn_small":
            write_variant(root, v, "mnist", FASHION, 10, layers=SMALL_CNN_LAYERS)
        elif v in ("cifar_alexnet", "cifar_alexnet_plus"):
            write_variant(root, v, "cifar10", FASHION, 15,
                          history=synthetic_history(SYNTHETIC_ACC[v], 15, overfit_after=10))
        else:
            write_variant(root, v, "transfer", ["T-shirt/top", "Shirt"], 1 if v == "tl_svm" else 15)
            if replicates and v != DETERMINISTIC:
                write_replicates(root, v)
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
    assert "| best validation accuracy | 91.23 % | 98.94 % | −7.71 pp |" in p11
    assert "| epoch of the best | 10 | 10 | +0 |" in p11
    assert "| 1 | Ankle boot | T-shirt/top | 17 |" in p11 and "| 2 | T-shirt/top | Ankle boot | 9 |" in p11
    assert "| 3 |" not in p11  # only the two most frequent
    assert "true 7 → predicted 2" in p11  # the lab's own confusions, beside ours
    assert ("| layer | module | dim | silhouette (features) | silhouette (t-SNE) | k-NN accuracy (features) "
            "| k-NN accuracy (t-SNE) | linear-probe accuracy | t-SNE trustworthiness |") in p11
    assert "| final | `fc2` | 10 | 0.401 | 0.451 | 90.40 % | 90.00 % | 91.48 % | 0.970 |" in p11
    assert "Different data: the comparison is indicative only" in p11
    for kind in ("curves", "confusion", "confusions", "tsne"):
        assert f"(figures/mnist_cnn_{kind}.png)" in p11

    p12 = _section(md, "## Part 1.2")
    assert "### Per-epoch log" in p12 and "| epoch | train loss | val loss | val accuracy |" in p12
    assert "| 15 |" in p12 and "| best validation accuracy | 88.02 % | 71.27 % | +16.75 pp |" in p12
    assert "| trainable parameters | 1,100 | 6,199,498 | −6,198,398 |" in p12
    assert "61,100,840" in p12  # the lab's mistaken table is called out
    assert "### Per-epoch log" not in p11

    p13 = _section(md, "## Part 1.3")
    for label, lab in [("trained from scratch", "72.00 %"), ("fine-tuning, no augmentation", "92.50 %"),
                       ("fine-tuning, with augmentation", "96.00 %")]:
        assert re.search(rf"\| {re.escape(label)} \| `tl_\w+` \| 3 \| \d+\.\d\d ± 1\.00 % \| .* \| "
                         rf"{re.escape(lab)} \| [+−]\d+\.\d\d pp \|", p13), label
    # The SVM option is the same model for every seed: one run, no spread.
    assert "| pretrained + linear SVM | `tl_svm` | 1 | 81.00 % | — | 80.50 % | 90.50 % | −9.50 pp |" in p13
    assert ("| fine-tuning, with augmentation | `tl_finetune_aug` | 3 | 86.00 ± 1.00 % | 83.52 – 88.48 % "
            "| 85.50 ± 1.00 % | 96.00 % | −10.00 pp |") in p13
    assert "(figures/tl_svm_tsne.png)" in p13 and "tl_svm_curves.png" not in p13
    for v in ("tl_scratch", "tl_finetune", "tl_finetune_aug"):
        assert f"(figures/{v}_curves.png)" in p13 and f"(figures/{v}_tsne.png)" in p13
    # The extra variants of params.yaml, each with its confusions and embedding.
    other = _section(md, "## Other variants")
    for v in ("mnist_cnn_20ep", "mnist_cnn_small"):
        assert f"### `{v}`" in other and f"(figures/{v}_confusions.png)" in other and f"(figures/{v}_tsne.png)" in other
    # Lab order, contents first.
    assert (md.index("## Contents") < md.index("## Data used") < md.index("## Part 1.1") < md.index("## Part 1.2")
            < md.index("## Part 1.3") < md.index("## Curve diagnosis") < md.index("## Other variants"))


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
    # Four figures for each of mnist_cnn, cifar_alexnet, the two extra MNIST variants, the two stronger recipes
    # and the three trained transfer options; the SVM has no curves.
    assert linked == {p.name for p in (out / "figures").iterdir()} and len(linked) == 6 * 4 + 3 * 4 + 3
    assert "<table>" in page and 'style="text-align: right;"' in page
    refs = _Refs()
    refs.feed(page)
    imgs = [v for tag, k, v in refs.refs if tag == "img"]
    assert len(imgs) == len(linked)
    ids = set(re.findall(r'\sid="([^"]+)"', page))
    for tag, k, v in refs.refs:
        if tag == "a" and k == "href":  # contents and cross-references: in-page anchors only
            assert v.startswith("#") and v[1:] in ids, v
            continue
        assert v.startswith("data:image/png;base64,"), (tag, k, v[:60])
        with Image.open(io.BytesIO(base64.b64decode(v.split(",", 1)[1], validate=True))) as im:
            assert im.format == "PNG"
    # The one script is the inline self-check: no source, no network, nothing loaded from outside.
    assert page.count("<script") == 1 and "<script>" in page
    assert not re.search(r"fetch\(|XMLHttpRequest|import\(|https?://", page)
    assert "<link" not in page and "@import" not in page
    assert not re.search(r"url\(", page)
    assert "{#" not in page  # every heading id was consumed by attr_list, none left as text


def test_missing_variants_say_not_run_and_stale_figures_go(tmp_path):
    root = populate(tmp_path / "root")
    out = tmp_path / "reports"
    report.write(report.build(_params(), root, now=NOW), out)
    assert (out / "figures" / "cifar_alexnet_tsne.png").exists()

    partial = tmp_path / "partial"
    populate(partial, variants=["mnist_cnn", "tl_finetune"], replicates=False)
    (partial / "metrics" / "mnist_cnn" / "embed.json").unlink()  # one stage of a variant not run
    rep = report.build(_params(), partial, now=NOW)
    md = rep.markdown
    assert ("*Not run:* no results for `cifar_alexnet` under results/ or metrics/ "
            "(run `python -m pipelines.cli.repro --part 1.2`)") in _section(md, "## Part 1.2")
    assert "**Time of the stages that ran (8 of 10 variants have not run):" in _section(md, "## Summary")
    assert "*Not run:* `metrics/mnist_cnn/embed.json` is missing" in _section(md, "## Part 1.1")
    p13 = _section(md, "## Part 1.3")
    assert "| trained from scratch | `tl_scratch` | not run | — | — | — | 72.00 % | — |" in p13
    assert "*Not run:* no results for `tl_svm`" in p13
    assert "| fine-tuning, no augmentation | `tl_finetune` | 1 of 3 | 84.50 % | — | 84.00 % | 92.50 % | −8.00 pp |" in p13
    assert "n = 1: no replicate runs found" in p13
    assert "*Not run:* fewer than two options have results" in p13
    assert "| `cifar_alexnet` | not run |" in _section(md, "## Curve diagnosis")
    assert "### Would more epochs help?" in md and "*Not run:* `metrics/mnist_cnn_20ep/train.json` is missing" in md
    assert "| `mnist_cnn_small` | `mnist` | simple_cnn | not run |" in _section(md, "## Other variants")

    report.write(rep, out)
    names = {p.name for p in (out / "figures").iterdir()}
    assert "cifar_alexnet_tsne.png" not in names and "mnist_cnn_tsne.png" not in names
    assert "mnist_cnn_curves.png" in names and "tl_finetune_tsne.png" in names

    # Nothing at all: every part still renders.
    empty = report.build(_params(), tmp_path / "nothing", now=NOW).markdown
    assert empty.count("*Not run:*") >= 6 and "Code version: unknown" in empty
    assert "**Transfer-learning verdicts:** not run: no transfer option has results" in empty


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
    ("metrics/cifar_alexnet/evaluate.json", json.dumps({"n": 1, "accuracy": "high", "macro_f1": 0.1,
                                                    "top_confusions": []}), "accuracy = 'high'"),
    ("metrics/tl_svm/embed.json", json.dumps({"points": 3, "layers": {"final": {"dim": 2}}}), "missing key 'module'"),
    ("results/tl_scratch/train/history.csv", "epoch,train_loss,train_acc,val_loss,val_acc\none,1,2,3,4\n",
     "epoch = 'one' is not a number"),
    ("results/mnist_cnn/train/params.csv", "name,count\nfc,3\n", "columns ['layer', 'params', 'shape'] missing"),
    ("results/mnist_cnn/evaluate/confusion.png", "not a png", "not a PNG image"),
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
    assert "| `mnist_cnn_wide` | `mnist` | simple_cnn | 1,100 | 90.00 % | 10 | 0.8765 | 98.94 % (`mnist_cnn`) | −8.94 pp |" in other
    assert "| `cifar_alexnet_cosine` | `cifar10` | alexnet_cifar | not run |" in other


def test_parts_follow_the_roles_reference_yaml_gives(tmp_path):
    # Part 1.1's variant and Part 1.3's options come from reference.yaml `parts`, not from the code.
    extra = {"mnist_cnn_wide": {"dataset": "mnist", "model": "simple_cnn", "hidden": 256,
                                "layers": {"intermediate": "fc1", "final": "fc2"}}}
    raw = isolation.committed_params()
    raw["protocol"] = "offline"
    raw["variants"].update(extra)
    raw["replicates"]["seeds"] = list(REPLICATE_OFFSETS)
    ref = isolation.committed_reference()
    ref["parts"]["simple_cnn"] = "mnist_cnn_wide"
    ref["parts"]["transfer"] = {"tl_finetune": "fine-tuned", "tl_scratch": "from scratch"}
    root = populate(tmp_path / "root")
    write_variant(root, "mnist_cnn_wide", "mnist", FASHION, 10)
    md = report.build(config.parse(raw, ref), root, now=NOW).markdown
    assert "## Part 1.1 — Simple CNN (`mnist_cnn_wide`)" in md
    p13 = _section(md, "## Part 1.3")
    assert "| fine-tuned | `tl_finetune` |" in p13 and "| from scratch | `tl_scratch` |" in p13
    assert p13.index("| fine-tuned |") < p13.index("| from scratch |")   # the order reference.yaml gives
    assert "`tl_svm`" not in p13 and "`tl_finetune_aug`" not in p13
    # The lab's own variants no longer named by a part are "other variants" now.
    other = _section(md, "## Other variants")
    assert "| `mnist_cnn` |" in other and "| `tl_svm` |" in other and "`mnist_cnn_wide`" not in other
    # No roles at all (no reference.yaml): each part says so instead of guessing a variant.
    bare = report.build(config.parse(raw), root, now=NOW).markdown
    assert "*Not run:* reference.yaml (`parts`) names no variant for this part." in _section(bare, "## Part 1.1")


def test_stage_cli(tmp_path, capsys):
    root = populate(tmp_path / "root")
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({**isolation.committed_params(), "protocol": "offline"}))
    out = tmp_path / "reports"
    assert report_stage.main(["--root", str(root), "--out", str(out), "--params", str(params_file)]) == 0
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    capsys.readouterr()  # the successful run's own MLflow log lines are not part of the error under test

    (root / "metrics" / "tl_svm" / "evaluate.json").write_text("[]")
    assert report_stage.main(["--root", str(root), "--out", str(out), "--params", str(params_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "evaluate.json: expected a JSON object" in err and "\n" not in err
    assert report_stage.main(["--params", str(tmp_path / "nope.yaml")]) == 2


# ---------------------------------------------------------------- measured evidence

def test_curve_diagnosis_for_every_variant_with_the_rule_once(tmp_path):
    root = populate(tmp_path / "root")
    # A train.json written before the diagnosis existed: the report recomputes it from history.csv.
    t = json.loads((root / "metrics" / "mnist_cnn_small" / "train.json").read_text())
    del t["diagnosis"]
    write_json(root / "metrics" / "mnist_cnn_small" / "train.json", t)
    md = report.build(_params(), root, now=NOW).markdown
    diag = _section(md, "## Curve diagnosis")
    params = _params()
    assert all(f"| `{v}` |" in diag for v in params.variants)
    assert ("| `cifar_alexnet` | 15 | 10 | 15 | 0.0708 | −4.00 pp | overfitting from epoch 11: validation loss "
            "25.0 % above its minimum (epoch 10)") in diag
    assert "| `tl_svm` | 1 | — | — | — | — | single fit: no curve to diagnose |" in diag
    assert "still improving" in diag and "(recomputed from history.csv)" in diag
    assert md.count("**The rule.** Let E be the last epoch, P = max(2, E // 5) the patience") == 1
    # Each part points at the rule instead of repeating it.
    assert "**Curve diagnosis:** still improving" in _section(md, "## Part 1.1")


def test_more_epochs_reproduces_the_ten_epoch_run(tmp_path):
    root = populate(tmp_path / "root")
    p11 = _section(report.build(_params(), root, now=NOW).markdown, "## Part 1.1")
    more = p11[p11.index("### Would more epochs help?"):p11.index("### Confusion matrix")]
    assert "(figures/mnist_cnn_20ep_curves.png)" in more
    assert "| `mnist_cnn_20ep` | 20 | 91.73 % | 11 | 10 | 50.0 % | overfitting from epoch 11:" in more
    assert "Epochs 1–10 of `mnist_cnn_20ep` against `mnist_cnn`'s history: same seed, same numbers: yes." in more
    assert "changes the best validation accuracy by +0.50 pp (within the ±2.50 pp noise" in more

    hist = root / "results" / "mnist_cnn_20ep" / "train" / "history.csv"
    rows = hist.read_text().splitlines()
    cells = rows[3].split(",")  # epoch 3
    cells[4] = f"{float(cells[4]) + 0.5:.2f}"
    rows[3] = ",".join(cells)
    hist.write_text("\n".join(rows) + "\n")
    p11 = _section(report.build(_params(), root, now=NOW).markdown, "## Part 1.1")
    assert "same seed, same numbers: no — largest absolute difference 0.5 (val acc, epoch 3)" in p11


def test_alexnet_verdict_against_the_lab_claim(tmp_path):
    root = populate(tmp_path / "root")
    p12 = _section(report.build(_params(), root, now=NOW).markdown, "## Part 1.2")
    assert "| agreement | agrees on overfitting, at the same epoch: ours from epoch 11, the lab's after epoch 10 |" in p12
    assert "| ours | validation loss lowest at epoch 10, 25.0 % above that minimum at the last epoch |" in p12
    write_variant(root, "cifar_alexnet", "cifar10", FASHION, 15, history=synthetic_history(88.02, 15, overfit_after=8))
    p12 = _section(report.build(_params(), root, now=NOW).markdown, "## Part 1.2")
    assert "agrees on overfitting, 2 epochs earlier: ours from epoch 9" in p12
    write_variant(root, "cifar_alexnet", "cifar10", FASHION, 15)  # loss still falling at the end
    p12 = _section(report.build(_params(), root, now=NOW).markdown, "## Part 1.2")
    assert "| agreement | disagrees: by the rule our curves do not show overfitting |" in p12
    # Validation that gets worse without the textbook shape is named, not called a disagreement.
    rows = [{"epoch": e, "train_loss": 0.04, "train_acc": 99.0, "val_loss": 0.3 + 0.1 * max(0, e - 5),
             "val_acc": 90.0 - 5 * max(0, e - 5)} for e in range(1, 16)]
    assert against_claim(diagnosis.diagnose(rows, 1000), 10) == (
        "partly: ours get worse from epoch 6, but not in the rule's overfitting shape; "
        "the lab's: overfitting after epoch 10")


def test_cheaper_network_table_and_reading(tmp_path):
    md = report.build(_params(), populate(tmp_path / "root"), now=NOW).markdown
    cheap = md[md.index("### A cheaper network"):md.index("## Part 1.2")]
    assert "| trainable parameters | 813,802 | 72,298 | 11.3x fewer |" in cheap
    assert "| FLOPs per image (forward) | 16,000,000 | 14,400,000 | 1.1x fewer |" in cheap
    assert "| best validation accuracy | 91.23 % | 90.83 % | −0.40 pp |" in cheap
    assert "| training throughput (images/s) | 1,000 | 1,250 | 1.2x faster |" in cheap
    assert ("**Reading.** `mnist_cnn_small` against `mnist_cnn`: 11.3x fewer parameters, 1.1x fewer FLOPs per image, "
            "trains 1.2x faster, −0.40 pp best validation accuracy, within the ±2.56 pp") in cheap
    assert "without fc1" in cheap


def test_embedding_evidence_beside_each_tsne(tmp_path):
    root = populate(tmp_path / "root")
    emb = json.loads((root / "metrics" / "tl_scratch" / "embed.json").read_text())
    emb["layers"]["intermediate"]["silhouette_features"] = 0.6  # the intermediate layer separates more here
    write_json(root / "metrics" / "tl_scratch" / "embed.json", emb)
    md = report.build(_params(), root, now=NOW).markdown
    assert md.count("| layer | module | dim | silhouette (features) |") == md.count("(figures/") - md.count("_curves.png)") \
        - md.count("_confusion.png)") - md.count("_confusions.png)")  # one table per t-SNE figure
    assert ("The final layer (`fc2`) separates the classes more than the intermediate one (`fc1`): silhouette "
            "0.401 vs 0.251 (on the features, +0.150), k-NN accuracy 90.40 % vs 88.10 % (+2.30 pp)") in md
    assert "The intermediate layer (`fc1`) separates the classes more than the final one (`fc2`): silhouette 0.600 vs 0.401" in md
    assert "Against `mnist_cnn`'s final layer, `cifar_alexnet`'s classes are about as separated" in _section(md, "## Part 1.2")
    sep = md[md.index("### Linear separability"):md.index("### Trained from scratch")]
    assert "| trained from scratch | `tl_scratch` | `fc2` | 70.75 % | 0.401 | 0.451 | 1,000 |" in sep
    assert "Most linearly separable: **fine-tuning, with augmentation** (a linear classifier on its final-layer " \
           "features reaches 86.25 %); least: trained from scratch (70.75 %), −15.50 pp." in sep


def test_noise_statistics(tmp_path):
    from scipy import stats

    root = populate(tmp_path / "root")
    write_replicates(root, "tl_finetune", {1: +2.0, 2: -0.5})
    p13 = _section(report.build(_params(), root, now=NOW).markdown, "## Part 1.3")
    runs = [84.5, 86.5, 84.0]
    m, s = sum(runs) / 3, stats.tstd(runs)
    lo, hi = stats.t.interval(0.95, 2, loc=m, scale=s / 3 ** 0.5)
    assert f"| fine-tuning, no augmentation | `tl_finetune` | 3 | {m:.2f} ± {s:.2f} % | {lo:.2f} – {hi:.2f} % |" in p13
    p = stats.ttest_ind(runs, [86.0, 87.0, 85.0], equal_var=False).pvalue
    assert (f"| fine-tuning, no augmentation vs fine-tuning, with augmentation | +{86.0 - m:.2f} pp | "
            f"Welch t over seeds | {p:.3g} | within noise |") in p13
    # The SVM option is one model for every seed: the scratch runs against its one value.
    p = stats.ttest_1samp([70.5, 71.5, 69.5], 81.0).pvalue
    assert (f"| trained from scratch vs pretrained + linear SVM | +10.50 pp | one-sample t over seeds | {p:.3g} "
            "| beyond noise |") in p13
    assert "Within noise: fine-tuning, no augmentation vs fine-tuning, with augmentation." in p13
    assert "the test split (200 images) was never seen during selection" in p13
    assert "Model selection (the best epoch) uses the validation split" in p13


def test_noise_with_single_runs_uses_the_set_size(tmp_path):
    root = populate(tmp_path / "root", replicates=False)
    p13 = _section(report.build(_params(), root, now=NOW).markdown, "## Part 1.3")
    assert "| trained from scratch | `tl_scratch` | 1 of 3 | 70.50 % | — | 70.00 % | 72.00 % | −1.50 pp |" in p13
    assert "n = 1: no replicate runs found" in p13
    # 84.5 % vs 86.0 % of 1,000 images each, pooled two-proportion z = 0.946: p = 0.344.
    assert "| +1.50 pp | two-proportion z (n = 1) | 0.344 | within noise |" in p13


def test_confusions_and_per_class_for_every_classifier(tmp_path):
    md = report.build(_params(), populate(tmp_path / "root"), now=NOW).markdown
    for v in _params().variants:
        assert f"(figures/{v}_confusions.png)" in md, v
    assert md.count("| class (worst first) | accuracy (recall) | precision | F1 | images |") == len(_params().variants)
    p11 = _section(md, "## Part 1.1")
    table = p11[p11.index("| class (worst first)"):]
    assert table.index("| Ankle boot | 81.00 % |") < table.index("| Bag | 83.00 % |") < table.index("| T-shirt/top | 99.00 % |")
    svm = _section(md, "## Part 1.3")
    svm = svm[svm.index("### Pretrained + linear SVM"):svm.index("### Fine-tuning, no augmentation")]
    assert "| 1 | Shirt | T-shirt/top | 17 |" in svm and "| Shirt | 97.00 % |" in svm
    assert "held-out test accuracy 80.50 % on 200 images" in svm


@pytest.mark.parametrize("rel, content, expect", [
    ("results/tl_svm/evaluate/per_class.csv", "class,precision,recall,f1,support\nShirt,x,1,1,1\n",
     "precision = 'x' is not a number"),
    ("metrics/replicates/tl_scratch-1.json", json.dumps({"params_total": 1, "best_val_acc": 70.0, "best_epoch": 1,
                                                         "seed": 7}), "not 'tl_scratch' seed 1"),
    ("metrics/mnist_cnn/train.json", json.dumps({"params_total": 1, "best_val_acc": 70.0, "best_epoch": 1,
                                                 "diagnosis": {"rule": "r"}}), "diagnosis: missing key 'verdict'"),
])
def test_new_contract_files_in_a_wrong_format(tmp_path, rel, content, expect):
    root = populate(tmp_path / "root")
    (root / rel).write_text(content)
    with pytest.raises(report.ReportError, match=re.escape(expect)):
        report.build(_params(), root, now=NOW)


def test_contents_link_every_part(tmp_path):
    rep = report.build(_params(), populate(tmp_path / "root"), now=NOW)
    contents = _section(rep.markdown, "## Contents")
    for anchor in ("data-used", "part-1-1", "more-epochs", "cheaper-network", "part-1-2", "alexnet-overfitting",
                   "part-1-3", "tl-comparison", "tl-noise", "tl-separability", "curve-diagnosis", "other-variants"):
        assert f"](#{anchor})" in contents, anchor
        assert f' id="{anchor}"' in report.render_html(rep)


# ---------------------------------------------------------------- stronger recipes

def test_recipes_table_judges_each_recipe_against_its_baseline_and_goal(tmp_path):
    root = populate(tmp_path / "root")
    md = report.build(_params(), root, now=NOW).markdown
    sec = _section(md, "## Stronger recipes at the lab's budget")
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in sec.splitlines() if line.startswith("| `")}
    cnn = rows["`mnist_cnn_plus`"]
    assert cnn[:3] == ["`mnist_cnn_plus`", "`mnist_cnn`", "10"]
    assert "optimizer adam → adamw" in cnn[3] and "schedule constant → onecycle" in cnn[3] and "momentum" not in cnn[3]
    assert cnn[4:7] == ["91.23 %", "93.61 %", "+2.38 pp"] and cnn[8:10] == ["93.50 %", "met"]
    alex = rows["`cifar_alexnet_plus`"]
    assert alex[4:7] == ["88.02 %", "90.02 %", "+2.00 pp"] and alex[8:10] == ["94.00 %", "not met (−3.98 pp)"]

    # A recipe without results says so; its goal under the other protocol is the lab one.
    shutil.rmtree(root / "metrics" / "cifar_alexnet_plus")
    shutil.rmtree(root / "results" / "cifar_alexnet_plus")
    sec = _section(report.build(_params(protocol="lab"), root, now=NOW).markdown, "## Stronger recipes at the lab's budget")
    alex_line = next(l for l in sec.splitlines() if l.startswith("| `cifar_alexnet_plus`"))
    assert "not run" in alex_line and "85.00 %" in alex_line
    cnn_line = next(l for l in sec.splitlines() if l.startswith("| `mnist_cnn_plus`"))
    assert "99.30 %" in cnn_line and "not met (−5.69 pp)" in cnn_line


# ---------------------------------------------------------------- paired verdicts on the test set

TEST_ACC = {"tl_scratch": 0.70, "tl_svm": 0.84, "tl_finetune": 0.85, "tl_finetune_aug": 0.86}   # made up


def write_predictions(root: Path, n: int = 1000, labels_seed: int = 0) -> None:
    """Per-image test predictions of every transfer option and seed (made-up accuracies, one test set)."""
    import numpy as np

    y = np.random.default_rng(labels_seed).integers(0, 2, n)
    rng = np.random.default_rng(1)
    for v, acc in TEST_ACC.items():
        for seed in (42,) if v == DETERMINISTIC else (42, *REPLICATE_OFFSETS):
            pred = np.where(rng.random(n) < acc, y, 1 - y)
            folder = root / "results" / v / "evaluate" if seed == 42 else root / "results" / "replicates" / f"{v}-{seed}"
            write_csv(folder / "test_predictions.csv", ["index", "label", "pred"],
                      [(i, int(a), int(b)) for i, (a, b) in enumerate(zip(y, pred))])


def test_transfer_verdicts_from_paired_test_predictions(tmp_path):
    root = populate(tmp_path / "root")
    write_predictions(root)
    rep = report.build(_params(), root, now=NOW)
    md = rep.markdown
    header, rows = rep.tables["transfer_comparison"]
    assert header[-1] == "verdict" and len(rows) == 6   # every pair of the four options
    verdicts = {r[0]: r[-1] for r in rows}
    # 70 % against 84-86 % on 1,000 images and 3 seeds: scratch loses to every pretrained option.
    for other in ("pretrained + linear SVM", "fine-tuning, no augmentation", "fine-tuning, with augmentation"):
        assert verdicts[f"{other} vs trained from scratch"].startswith(f"{other} beats trained from scratch by ")
    # 85 % against 86 %: within what 1,000 images can tell apart.
    pair = next(k for k in verdicts if "no augmentation" in k and "with augmentation" in k)
    assert verdicts[pair].startswith("no difference detectable at this test size (smallest detectable: ")
    assert all(r[1] == "1,000" and r[6] == 3 for r in rows)
    p13 = _section(md, "## Part 1.3")
    assert "| pair (A vs B) | test images | A correct, B wrong |" in p13 and "McNemar's exact" in p13
    summary = _section(md, "## Summary")
    assert "Transfer-learning verdicts** (1,000 held-out test images" in summary
    assert all(f"- {r[-1]}" in summary if " beats " in r[-1] else f"- {r[0]}: {r[-1]}" in summary for r in rows)
    assert "| `tl_scratch` | `transfer` | 70.50 % | 70.00 ± 1.00 % (n = 3) | 72.00 % | −1.50 pp |" in summary
    assert "| `mnist_cnn` | `mnist` | 91.23 % | — | 98.94 % | −7.71 pp |" in summary
    # 10 variants + 6 replicates (the SVM option has none) at 12.5 s of training, 10 embeddings at 3 s: 230 s.
    assert "**Whole-run time: 0:03:50** (h:mm:ss)" in summary and "training 3.3 min (16 stages), embedding 0.5 min (10 stages)" in summary
    assert md.index("## Summary") < md.index("## Contents") < md.index("## Data used")


def test_the_deterministic_option_has_one_run_that_pairs_with_every_seed(tmp_path):
    root = populate(tmp_path / "root")
    write_predictions(root)
    # Stray replicate files of the SVM option (a run before it was fitted once) are not read.
    write_replicates(root, DETERMINISTIC)
    rep = report.build(_params(), root, now=NOW)
    p13 = _section(rep.markdown, "## Part 1.3")
    row = next(l for l in p13.splitlines() if l.startswith("| pretrained + linear SVM | `tl_svm` |"))
    assert row.startswith("| pretrained + linear SVM | `tl_svm` | 1 | 81.00 % | — |"), row
    assert "Pretrained + linear SVM (`tl_svm`) has one run, not 3 equal ones" in p13
    header, rows = rep.tables["transfer_comparison"]
    svm = [r for r in rows if "linear SVM" in r[0]]
    # Its one model against each of the other option's 3 seeds: 3 paired differences, whose spread is the other's.
    assert len(svm) == 3 and all(r[6] == 3 and r[7] != "—" for r in svm), svm
    assert all(r[6] == 3 for r in rows)


def test_predictions_of_other_test_images_are_refused(tmp_path):
    root = populate(tmp_path / "root")
    write_predictions(root)
    rows = (root / "results" / "replicates" / "tl_finetune-2" / "test_predictions.csv").read_text().splitlines()
    label = rows[1].split(",")[1]
    rows[1] = ",".join(["0", "1" if label == "0" else "0", "0"])
    (root / "results" / "replicates" / "tl_finetune-2" / "test_predictions.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(report.ReportError, match=r"tl_finetune-2/test_predictions.csv: its labels differ .* same test images"):
        report.build(_params(), root, now=NOW)


def test_stage_logs_the_verdict_table_to_mlflow(tmp_path):
    import mlflow

    root = populate(tmp_path / "root")
    write_predictions(root)
    params_file = tmp_path / "params.yaml"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["replicates"]["seeds"] = list(REPLICATE_OFFSETS)
    params_file.write_text(yaml.safe_dump(raw))
    # reference.yaml beside it names the transfer options (`parts`) whose verdicts the table holds
    (tmp_path / "reference.yaml").write_text(isolation.committed_text("reference.yaml"))
    assert report_stage.main(["--root", str(root), "--out", str(tmp_path / "out"), "--params", str(params_file)]) == 0
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(raw["tracking"]["experiment"])
    run = client.search_runs([exp.experiment_id], "tags.dvc_stage = 'report'")[0]
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "tables/transfer_comparison.json", str(tmp_path))).read_text())
    expected = report.build(config.load(params_file), root, now=NOW).tables["transfer_comparison"]
    assert table["columns"] == list(expected[0])
    assert [row[-1] for row in table["data"]] == [r[-1] for r in expected[1]]


def test_own_folder_is_named_with_its_file_count_and_digest(tmp_path):
    root = populate(tmp_path / "root")
    meta_path = root / "data" / "prepared" / "transfer" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta.update(source="image_folder", source_title="your own images, /home/me/Fotos Bienen",
                classes=["Ameisen", "Bienen"],
                folder={"path": "/home/me/Fotos Bienen", "files": 397, "digest": "ab12" * 16, "layout": "splits",
                        "ignored": {"hidden": 2, "not_image": 1}, "skipped": [{"path": "Bienen/kaputt.jpg", "reason": "x"}],
                        "empty_folders": ["val/Wespen", "train/Wespen"], "skipped_classes": ["Wespen"]})
    write_json(meta_path, meta)
    params = _params()
    params = params.model_copy(update={"datasets": {**params.datasets, "transfer": params.datasets["transfer"].model_copy(
        update={"folder": "/home/me/Fotos Bienen"})}})
    md = report.build(params, root, now=NOW).markdown
    assert "- Your own images: `transfer` from `/home/me/Fotos Bienen` (whatever the protocol)" in md
    line = ("your own images, /home/me/Fotos Bienen at 112×112×3 (protocol `offline`); classes Ameisen vs Bienen "
            "(397 files, digest sha256 `ab12ab12ab12ab12`; ignored 2 hidden and 1 non-image files; skipped 1 "
            "unreadable: Bienen/kaputt.jpg; left out 2 folder(s) without images: val/Wespen, train/Wespen "
            "(classes Wespen not used))")
    assert line in _section(md, "## Summary") and line in _section(md, "## Data used")


def test_where_the_time_went_sums_every_stage_the_metrics_timed(tmp_path):
    root = populate(tmp_path / "root")
    t = json.loads((root / "metrics" / "mnist_cnn" / "train.json").read_text())
    write_json(root / "metrics" / "mnist_cnn" / "train.json", {**t, "seconds": 300.0})
    e = json.loads((root / "metrics" / "mnist_cnn" / "evaluate.json").read_text())
    write_json(root / "metrics" / "mnist_cnn" / "evaluate.json", {**e, "seconds": 4.0, "img_per_s": 2500.0})
    params = _params()
    md = report.build(params, root, now=NOW).markdown
    part = _section(md, "## Where the time went")
    rows = [r for r in part.splitlines() if r.startswith("| `")]
    n_reps = len(params.replicates.variants) * len(params.replicates.seeds)
    # A train and an embed row per variant (eval only where it recorded seconds), a train row per replicate.
    assert len(rows) == 2 * len(params.variants) + 1 + n_reps
    secs = [float(r.split("|")[2].replace(",", "")) for r in rows]
    assert secs == sorted(secs, reverse=True) and secs[0] == 300.0
    assert abs(sum(float(r.split("|")[3].strip(" %")) for r in rows) - 100) < 0.5
    flops = t["flops_per_image"]
    assert f"| `train@mnist_cnn` | 300.0 |" in part and f"{3 * flops * t['train_img_per_s'] / 1e9:,.1f} |" in part
    assert "| `evaluate@mnist_cnn` | 4.0 |" in part and "| 2,500 |" in part
    assert f"Sum of these stages: {sum(secs):,.0f} s" in part


def test_a_list_after_a_lead_in_line_renders_as_a_list(tmp_path):
    # Markdown needs a blank line between a line of text and a list; without it the items are one paragraph.
    root = populate(tmp_path / "root")
    write_predictions(root)
    page = report.render_html(report.build(_params(), root, now=NOW))
    for lead in ("<strong>Data that ran:</strong>", "<strong>Transfer-learning verdicts</strong>"):
        after = page[page.index(lead):]
        assert after.index("</p>") < after.index("<ul>") < after.index("<li>") < after.index("<table>")
        assert "\n- " not in after[:after.index("</p>")]


def test_each_transfer_option_names_its_augmentation(tmp_path):
    params = _params()
    p13 = _section(report.build(params, populate(tmp_path / "root"), now=NOW).markdown, "## Part 1.3")
    line = next(l for l in p13.splitlines() if l.startswith("Training augmentation"))
    for v in params.reference.parts.transfer:
        cfg = params.variants[v]
        assert (f"`{v}`: none: a linear SVM" if cfg.classifier == "svm" else f"`{v}`: `{cfg.augment}`") in line
    assert "random resized crops" in line and "not digits or text" in line
