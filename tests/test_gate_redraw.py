"""The params gate where base and head were judged on different images: each side's extra runs draw
their own data (`python -m stages.preprocess --seed`), and the two sides' run accuracies are
compared as two independent samples (Welch's t), the draw's variance in the interval."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from pipelines.gate import evidence, noise
from pipelines.gate.evidence import Runs
from pipelines.gate.repo import Stage
from pipelines.gate.rerun import Outcome, redraws
from pipelines.gate.verdict import SAME, compared, judge
from pipelines.io import load_npz
from pipelines.reference import Check
from stages import download as download_cli
from stages import preprocess as preprocess_cli

METRIC = "metrics/tl_svm/evaluate.json:test_accuracy"


def _runs(accs: list[float], n: int, rng: np.random.Generator, digest: str) -> Runs:
    """One run per accuracy (%), each over its own n images (its own digest), with exactly that many right."""
    correct = []
    for a in accs:
        c = np.zeros(n, dtype=bool)
        c[rng.choice(n, int(round(a / 100 * n)), replace=False)] = True
        correct.append(c)
    test = Runs(seeds=list(range(len(accs))), correct=correct, images=digest, redrawn=True)
    return Runs(seeds=list(range(len(accs))), correct=[c.copy() for c in correct], images=digest, test=test,
                redrawn=True)


def test_redrawn_runs_are_welchs_t_on_their_accuracies():
    base = [80.0, 82.5, 84.0, 78.5, 81.0, 79.0]
    head = [85.0, 83.0, 87.5, 84.5]
    r = noise.draws_compared(base, head, 2000, 2000)
    welch = sps.ttest_ind(head, base, equal_var=False)
    vb, vh = np.var(base, ddof=1) / 6, np.var(head, ddof=1) / 4
    df = (vb + vh) ** 2 / (vb ** 2 / 5 + vh ** 2 / 3)
    assert r["diff"] == pytest.approx(np.mean(head) - np.mean(base))
    assert r["se"] == pytest.approx(np.sqrt(vb + vh))     # no binomial part added to the runs' own spread
    assert r["df"] == pytest.approx(df)
    assert r["p"] == pytest.approx(welch.pvalue)
    half = sps.t.ppf(0.975, df) * np.sqrt(vb + vh)
    assert (r["lo"], r["hi"]) == pytest.approx((r["diff"] - half, r["diff"] + half))
    assert r["sd_base"] == pytest.approx(np.std(base, ddof=1)) and r["sd_head"] == pytest.approx(np.std(head, ddof=1))
    assert r["detectable"] == pytest.approx((sps.t.ppf(1 - 0.05 / 2, df) + sps.t.ppf(0.8, df)) * np.sqrt(vb + vh))
    assert r["redrawn"] and not r["paired"] and not r["floored"] and r["runs"] == (6, 4)


def test_runs_that_agree_closer_than_their_images_allow_fall_back_to_the_binomial_floor():
    # A deterministic model whose draws happen to score alike: the images' binomial variance is
    # the least each run's accuracy varies by, so it stands in for the too-small spread.
    r = noise.draws_compared([90.0, 90.0, 90.0], [90.0, 90.0], 1000, 1000)
    floor = 0.9 * 0.1 / 1000 * (1 / 3 + 1 / 2) * 1e4
    assert r["floored"] and r["se"] == pytest.approx(np.sqrt(floor)) and r["p"] == pytest.approx(1.0)
    # One run a side: nothing measured but that floor, on the normal.
    one = noise.draws_compared([90.0], [88.0], 1000, 1000)
    assert one["sd_base"] is None and one["sd_head"] is None and np.isinf(one["df"])
    assert one["se"] == pytest.approx(np.sqrt((0.9 * 0.1 + 0.88 * 0.12) / 1000) * 100)


def test_the_floor_stands_in_per_side_and_keeps_the_few_runs_degrees_of_freedom():
    # Two base draws that happen to agree (0.27 pp apart, far less than 1,900 images allow) and two
    # head draws 5 pp higher: each side's variance is kept at least the binomial one, and with two
    # runs a side the interval stays Student's on about 2 degrees of freedom, so this is no
    # difference (on the normal, as if the floor were known exactly, it would have been p < 0.001).
    base, head = [70.946, 71.214], [75.161, 76.999]
    r = noise.draws_compared(base, head, 1900, 1900)
    least = [m / 100 * (1 - m / 100) / 1900 * 1e4 for m in (np.mean(base), np.mean(head))]
    vb, vh = max(np.var(base, ddof=1), least[0]) / 2, max(np.var(head, ddof=1), least[1]) / 2
    assert np.var(base, ddof=1) < least[0] < np.var(head, ddof=1) and r["floored"]
    assert r["se"] == pytest.approx(np.sqrt(vb + vh))
    assert r["df"] == pytest.approx((vb + vh) ** 2 / (vb ** 2 + vh ** 2)) and 1.5 < r["df"] < 2.5
    assert r["p"] == pytest.approx(2 * sps.t.sf(5.0 / np.sqrt(vb + vh), r["df"]), rel=1e-3) and r["p"] > 0.05


def test_a_side_with_one_run_borrows_the_others_spread():
    r = noise.draws_compared([80.0, 84.0, 82.0], [81.0], 2000, 2000)
    s2 = np.var([80.0, 84.0, 82.0], ddof=1)
    assert r["se"] == pytest.approx(np.sqrt(s2 / 3 + s2 / 1)) and r["df"] == 2.0
    assert r["sd_head"] is None and r["sd_base"] == pytest.approx(np.sqrt(s2))


def _judged(base: Runs, head: Runs):
    gate = Check.model_validate({"tolerance_pp": 1.0, "metrics": [METRIC]})
    dag = {"evaluate@tl_svm": Stage("evaluate@tl_svm", metrics=["metrics/tl_svm/evaluate.json"])}
    out = Outcome(["evaluate@tl_svm"], cwd=None, baseline="")
    out.runs = {"base": {"evaluate@tl_svm": base}, "head": {"evaluate@tl_svm": head}}
    out.metrics = {side: {METRIC: float(np.mean([c.mean() for c in r.test.correct]) * 100)}
                   for side, r in (("base", base), ("head", head))}
    rows, failures, _ = judge(gate, out, dag)
    return rows[0], failures


def test_draws_of_one_distribution_are_no_difference_and_the_summary_says_they_redrew():
    """Both sides' runs from one distribution of accuracies (a draw-to-draw sd of 2.5 pp, as an SVM on
    80 training images has), judged as redrawn runs: no false "better", and the interval from the
    runs' own spread (Welch), not from the images' binomial variance."""
    rng = np.random.default_rng(7)
    base_acc = list(79.0 + 2.5 * rng.standard_normal(10))
    head_acc = list(79.0 + 2.5 * rng.standard_normal(5))
    base, head = _runs(base_acc, 1800, rng, "base-test"), _runs(head_acc, 1800, rng, "head-test")
    row, failures = _judged(base, head)
    assert row.verdict.startswith(SAME) and not failures, row
    assert row.how.startswith("unpaired, each run its own draw of the data (1,800 images a run), 10 + 5 runs, "
                              "draw-and-seed sd "), row.how
    assert row.how.endswith(" pp (base / head)")
    assert row.blind   # 10 + 5 draws with a 2.5 pp sd cannot see 1 pp
    assert row.diff == pytest.approx(np.mean(head.test.correct, axis=1).mean() * 100
                                     - np.mean(base.test.correct, axis=1).mean() * 100)
    sb, sh = (np.std(np.mean(r.test.correct, axis=1) * 100, ddof=1) for r in (base, head))
    assert (row.hi - row.lo) / 2 == pytest.approx(sps.t.ppf(0.975, _welch_df(sb, 10, sh, 5))
                                                  * np.sqrt(sb ** 2 / 10 + sh ** 2 / 5))


def _welch_df(sb: float, kb: int, sh: float, kh: int) -> float:
    vb, vh = sb ** 2 / kb, sh ** 2 / kh
    return (vb + vh) ** 2 / (vb ** 2 / (kb - 1) + vh ** 2 / (kh - 1))


def test_false_alarms_of_redrawn_runs_stay_near_5_percent():
    rng = np.random.default_rng(11)
    hits = 0
    for _ in range(400):
        r = noise.draws_compared(list(80 + 3 * rng.standard_normal(10)), list(80 + 3 * rng.standard_normal(5)),
                                 1800, 1800)
        hits += r["p"] < 0.05
    assert 8 <= hits <= 32, hits   # 5 % of 400 is 20; binomial 99.9 % range about 7 to 35


def test_the_sides_redraw_where_a_judged_splits_images_differ():
    def runs(val: str, test: str) -> Runs:
        c = [np.ones(4, dtype=bool)]
        return Runs(seeds=[1], correct=c, images=val, test=Runs(seeds=[1], correct=c, images=test))

    base = {"evaluate@a": runs("v", "t"), "evaluate@b": runs("v", "t"), "evaluate@c": runs("v", "t")}
    head = {"evaluate@a": runs("v", "T"), "evaluate@b": runs("v", "T"), "evaluate@c": runs("V", "T")}
    splits = {"evaluate@a": {"test"}, "evaluate@b": {"val"}, "evaluate@c": {"val"}}
    # a: its judged test split differs; b: judged on validation, which is the same; c: validation differs.
    assert redraws(base, head, splits) == {"evaluate@a": True, "evaluate@b": False, "evaluate@c": True}
    assert redraws(base, {"evaluate@a": runs("v", "t")}, splits) == {"evaluate@a": False}


def _workspace(root, meta: dict, source: dict):
    (root / "data/prepared/transfer").mkdir(parents=True)
    (root / "data/raw/transfer").mkdir(parents=True)
    (root / "data/prepared/transfer/meta.json").write_text(json.dumps(meta))
    (root / "data/raw/transfer/SOURCE.json").write_text(json.dumps(source))
    (root / "params.yaml").write_text(yaml.safe_dump({
        "protocol": "offline", "device": "cpu", "precision": "fp32", "defaults": {"epochs": 1}, "threads": 1,
        "variants": {"tl_svm": {"dataset": "transfer"}}, "datasets": {"transfer": {"train_limit": 40}}}))
    (root / "code.py").write_text("print('x')\n")


def test_redrawn_runs_are_cached_apart_from_runs_on_the_prepared_data(tmp_path):
    source = {"dataset": "transfer", "source": "fashion_mnist", "protocol": "offline",
              "files": {"a.gz": {"sha256": "1" * 64, "origin": "system:/one/place"}}}
    _workspace(tmp_path, {"files": {"test.npz": "t1"}}, source)

    def keys() -> tuple[str, str]:
        return (evidence.run_key(tmp_path, "tl_svm", 5, "data/prepared/transfer", ["code.py"]),
                evidence.run_key(tmp_path, "tl_svm", 5, "data/prepared/transfer", ["code.py"], redraw="transfer"))

    plain, drawn = keys()
    assert plain != drawn
    # Another prepared draw: a new key for runs on it, not for runs that draw their own.
    (tmp_path / "data/prepared/transfer/meta.json").write_text(json.dumps({"files": {"test.npz": "t2"}}))
    assert keys()[0] != plain and keys()[1] == drawn
    # The raw files copied from elsewhere: the same draw. Other raw bytes: another.
    moved = {**source, "files": {"a.gz": {"sha256": "1" * 64, "origin": "system:/another/place"}}}
    (tmp_path / "data/raw/transfer/SOURCE.json").write_text(json.dumps(moved))
    assert keys()[1] == drawn
    other = {**source, "files": {"a.gz": {"sha256": "2" * 64, "origin": "system:/one/place"}}}
    (tmp_path / "data/raw/transfer/SOURCE.json").write_text(json.dumps(other))
    assert keys()[1] != drawn
    # The dataset's params (its limits) are part of what a redrawn run is made from.
    (tmp_path / "data/raw/transfer/SOURCE.json").write_text(json.dumps(source))
    p = yaml.safe_load((tmp_path / "params.yaml").read_text())
    p["datasets"]["transfer"]["train_limit"] = 41
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    assert keys()[1] != drawn


def test_preprocess_seed_redraws_the_seeded_subsets_and_a_bad_one_is_one_line(fake_idx, tmp_path, params_raw,
                                                                            monkeypatch, capsys):
    raw = dict(params_raw, protocol="offline", sources={**params_raw["sources"], "fashion_mnist_dir": str(fake_idx)})
    raw["datasets"] = {**raw["datasets"], "mnist": {**raw["datasets"]["mnist"], "train_limit": 10, "val_limit": 5}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    assert download_cli.main(["--dataset", "mnist", "--out", "data/raw/mnist"]) == 0

    def prep(out: str, *seed: str) -> int:
        return preprocess_cli.main(["--dataset", "mnist", "--raw", "data/raw/mnist", "--out", out, *seed])

    other = (raw["seed"] + 1) % 2**32
    assert prep("own") == 0 and prep("same", "--seed", str(raw["seed"])) == 0 and prep("other", "--seed", str(other)) == 0
    assert f"preprocess mnist: data/raw/mnist -> other, seed {other}" in capsys.readouterr().out
    meta = {d: json.loads((tmp_path / d / "meta.json").read_text()) for d in ("own", "same", "other")}
    assert meta["own"]["files"] == meta["same"]["files"]   # the default is params' seed
    assert meta["other"]["splits"] == meta["own"]["splits"] == {"train": 10, "val": 5}
    for split in ("train.npz", "val.npz"):
        assert meta["other"]["files"][split] != meta["own"]["files"][split]
    y = {d: load_npz(tmp_path / d / "train.npz")["x"].reshape(10, -1) for d in ("own", "other")}
    assert {r.tobytes() for r in y["own"]} != {r.tobytes() for r in y["other"]}   # other training images
    for bad, says in (("-1", "--seed -1: must be between 0 and 4294967295"),
                      (str(2**32), f"--seed {2**32}: must be between 0 and 4294967295"),
                      ("seven", "--seed 'seven': not an integer")):
        assert prep("bad", "--seed", bad) == 2
        assert capsys.readouterr().err == f"error: preprocess mnist: {says}\n"
        assert not (tmp_path / "bad").exists()
