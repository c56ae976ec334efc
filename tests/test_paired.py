"""Paired verdicts on one held-out test set: McNemar's exact test, the paired interval, the test size,
the rule over seeds, and the per-image predictions the train and evaluate stages write for them."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipelines import io, stats
from pipelines.evaluate.stage import evaluate as evaluate_stage
from pipelines.report import transfer
from pipelines.report.load import PREDICTIONS_FILE
from pipelines.runtime import StagePaths
from pipelines.train.stage import train as train_stage


def _pairs(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.r_[np.ones(both + only_a, bool), np.zeros(only_b + neither, bool)]
    b = np.r_[np.ones(both, bool), np.zeros(only_a, bool), np.ones(only_b, bool), np.zeros(neither, bool)]
    return a, b


def test_mcnemar_counts_only_discordant_images():
    a, b = _pairs(100, 10, 20, 70)
    m = stats.mcnemar(a, b)
    assert (m["n"], m["b"], m["c"]) == (200, 10, 20)
    assert m["diff"] == pytest.approx(-5.0) and m["acc_a"] == pytest.approx(55.0) and m["acc_b"] == pytest.approx(60.0)
    # Exact two-sided binomial p of 10 successes in 30 at 1/2, written out.
    p = 2 * sum(math.comb(30, k) for k in range(11)) / 2 ** 30
    assert m["p"] == pytest.approx(p, rel=1e-9)
    # Agresti-Min: 0.5 added to each cell, Wald interval of (b - c) / n on the adjusted table.
    b2, c2, n2 = 10.5, 20.5, 202
    se = math.sqrt((b2 + c2) - (b2 - c2) ** 2 / n2) / n2
    assert m["lo"] == pytest.approx(((b2 - c2) / n2 - 1.959964 * se) * 100, abs=1e-4)
    assert m["hi"] == pytest.approx(((b2 - c2) / n2 + 1.959964 * se) * 100, abs=1e-4)
    # Concordant images change nothing but n.
    a2, b2_ = _pairs(1000, 10, 20, 70)
    assert stats.mcnemar(a2, b2_)["p"] == m["p"]
    with pytest.raises(ValueError, match="equal, non-empty"):
        stats.mcnemar(a, b[:-1])


def test_test_size_and_smallest_detectable_are_inverse_and_have_the_stated_power():
    n = stats.test_size_for(3, 0.2)
    assert n == 1742
    assert stats.smallest_detectable(n, 0.2) == pytest.approx(3.0, abs=0.01)
    assert stats.smallest_detectable(4 * n, 0.2) < 1.6   # four times the images, about half the difference
    # Simulated: true difference 3 pp with 20 % discordant images; McNemar at n finds it about 80 % of the time.
    rng = np.random.default_rng(0)
    hits = 0
    sims = 400
    for _ in range(sims):
        u = rng.random(n)
        only_a, only_b = u < 0.115, (u >= 0.115) & (u < 0.2)   # 11.5 % - 8.5 % = 3 pp
        a = only_a | (u >= 0.2) & (u < 0.8)
        b = only_b | (u >= 0.2) & (u < 0.8)
        hits += stats.mcnemar(a, b)["p"] < 0.05
    assert 0.72 <= hits / sims <= 0.88


def test_verdict_needs_the_main_seed_and_the_seeds_to_agree():
    n = 2000
    rng = np.random.default_rng(1)

    def model(acc: float) -> np.ndarray:
        return rng.random(n) < acc

    strong = {s: model(0.90) for s in (42, 1, 2, 3, 4)}
    weak = {s: model(0.80) for s in (42, 1, 2, 3, 4)}
    same = {s: model(0.80) for s in (42, 1, 2, 3, 4)}
    rows = transfer.comparison_rows([("weak", weak), ("strong", strong), ("same", same)], main_seed=42)
    assert rows[0][0] == "strong vs weak"   # the option ahead on the main seed is named first
    by_pair = {r[0]: r for r in rows}
    win = by_pair["strong vs weak"]
    assert len(win) == len(transfer.HEADER) and win[6] == 5
    assert win[-1].startswith("strong beats weak by ") and ", p < 0.001" in win[-1]
    tie = next(r for r in rows if "same" in r[0] and "weak" in r[0])
    assert tie[-1].startswith("no difference detectable at this test size (smallest detectable: ")

    # The main seed alone differs, the other seeds do not: no verdict, and the reason is given.
    lucky = {42: model(0.90), **{s: model(0.80) for s in (1, 2, 3, 4)}}
    row = transfer.comparison_rows([("lucky", lucky), ("weak", weak)], main_seed=42)[0]
    assert row[-1].startswith("no difference detectable") and "the main seed alone differs" in row[-1]
    # One seed only: the main seed's test decides alone.
    row = transfer.comparison_rows([("a", {42: strong[42]}), ("b", {42: weak[42]})], main_seed=42)[0]
    assert row[-1].startswith("a beats b by") and row[7] == "—"
    # No seed in common: said, not computed.
    row = transfer.comparison_rows([("a", {1: strong[1]}), ("b", {2: weak[2]})], main_seed=42)[0]
    assert row[-1].startswith("not run")


def _prepared_with_test(folder: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    files, counts = {}, {}
    for split, n in (("train", 400), ("val", 100), ("test", 300)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, 28, 28, 1)) + (y * 19)[:, None, None, None]
        io.save_npz(folder / f"{split}.npz", x=x.astype(np.uint8), y=y.astype(np.int64))
        files[f"{split}.npz"] = io.sha256_file(folder / f"{split}.npz")
        counts[split] = n
    io.write_json(folder / "meta.json", {
        "dataset": "mnist", "source": "synthetic", "protocol": "offline", "classes": [str(i) for i in range(10)],
        "height": 28, "width": 28, "channels": 1, "mean": [0.3], "std": [0.2],
        "splits": counts, "files": files, "backbone": None})


def test_train_and_evaluate_write_the_same_per_image_test_predictions(tmp_path, make_params):
    params = make_params({"variants": {"mnist_cnn_small": {"epochs": 1, "batch_size": 32}}, "device": "cpu",
                          "precision": "fp32"})
    data = tmp_path / "data"
    _prepared_with_test(data)
    train = train_stage(params, "mnist_cnn_small", StagePaths(data, tmp_path / "model", tmp_path / "res" / "train",
                                                              tmp_path / "metrics" / "train.json"))
    ev = evaluate_stage(params, "mnist_cnn_small", StagePaths(data, tmp_path / "model", tmp_path / "res" / "evaluate",
                                                              tmp_path / "metrics" / "evaluate.json"))
    y = io.load_npz(data / "test.npz")["y"]
    rows_train = io.read_csv(tmp_path / "res" / "train" / PREDICTIONS_FILE)
    rows_eval = io.read_csv(tmp_path / "res" / "evaluate" / PREDICTIONS_FILE)
    assert rows_train == rows_eval and len(rows_train) == len(y) == train["test_n"] == ev["test_n"]
    assert [int(r["index"]) for r in rows_train] == list(range(len(y)))
    assert [int(r["label"]) for r in rows_train] == y.tolist()
    acc = 100 * np.mean([r["label"] == r["pred"] for r in rows_train])
    assert acc == pytest.approx(train["test_acc"]) == pytest.approx(ev["test_accuracy"])
    assert acc > 30   # learnable labels after one short epoch; chance is 10 %
    saved = json.loads((tmp_path / "metrics" / "evaluate.json").read_text())
    assert saved["seconds"] > 0 and train["seconds"] >= train["train_seconds"] > 0
