"""The params gate's judgement on constructed per-image results: McNemar's test where one run per
side is paired, the seed spread where there are more, Holm over the gated metrics, the verdicts,
the check that cannot see a tolerance-sized drop, and --strict."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from pipelines import stats
from pipelines.gate import noise
from pipelines.gate import repo
from pipelines.gate.evidence import Runs
from pipelines.gate.repo import Stage
from pipelines.gate.rerun import Outcome
from pipelines.gate.verdict import SAME, WORSE, blind_spots, judge, verdict_line
from pipelines.reference import Check

DIGEST = "val-images-digest"


def _flip(correct: np.ndarray, lose: int, gain: int, rng: np.random.Generator) -> np.ndarray:
    """A copy of correct with `lose` right images made wrong and `gain` wrong ones made right."""
    out = correct.copy()
    out[rng.choice(np.flatnonzero(correct), lose, replace=False)] = False
    out[rng.choice(np.flatnonzero(~correct), gain, replace=False)] = True
    return out


def _base(n: int, acc: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = np.zeros(n, dtype=bool)
    c[rng.choice(n, int(round(acc * n)), replace=False)] = True
    return c


def test_one_run_per_side_is_mcnemar_on_the_discordant_images():
    rng = np.random.default_rng(1)
    base = _base(2000, 0.8)
    head = _flip(base, lose=60, gain=10, rng=rng)
    r = noise.runs_compared([base], [head])
    assert r["paired"] and r["runs"] == (1, 1) and r["n"] == 2000
    assert r["diff"] == pytest.approx(-50 / 2000 * 100)
    # McNemar's exact test: 10 images only the head gets right against 60 only the base gets right.
    assert r["p"] == pytest.approx(binomtest(10, 70, 0.5).pvalue)
    assert r["p"] < 1e-6 and r["hi"] < 0 < -r["lo"]
    mc = stats.mcnemar(head, base)
    assert (r["lo"], r["hi"]) == (mc["lo"], mc["hi"])
    assert r["seed_sd"] is None


def test_the_seed_spread_widens_the_interval_and_can_outweigh_mcnemar():
    """The same 1.5 pp drop: significant for one run per side judged on the images alone, not once
    three runs per side show a seed-to-seed spread of about 2 pp."""
    rng = np.random.default_rng(2)
    base = _base(4000, 0.75, seed=3)
    head = _flip(base, lose=80, gain=20, rng=rng)
    alone = noise.runs_compared([base], [head])
    assert alone["diff"] == pytest.approx(-1.5) and alone["p"] < 0.001
    bases = [base, _flip(base, 90, 10, rng), _flip(base, 5, 85, rng)]     # about -2, +2 pp around it
    heads = [head, _flip(head, 85, 5, rng), _flip(head, 10, 90, rng)]
    spread = noise.runs_compared(bases, heads)
    assert spread["runs"] == (3, 3) and spread["seed_sd"] > 1.5
    assert spread["p"] > 0.05 and spread["lo"] < 0 < spread["hi"]
    assert spread["detectable"] > 3 * alone["detectable"]
    # Welch-Satterthwaite degrees of freedom from the 2 + 2 of the seeds.
    assert 2 < spread["df"] < 30


def test_different_images_are_compared_unpaired():
    base = Runs(seeds=[1], correct=[_base(1000, 0.8)], images="a")
    head = Runs(seeds=[1], correct=[_base(1000, 0.8, seed=5)], images="b")
    from pipelines.gate.verdict import compared

    c = compared(base, head, 0.05)
    assert not c["paired"] and c["how"].startswith("unpaired on 1,000 images")
    # The binomial noise of two independent 80 % accuracies on 1,000 images each: sqrt(2 * .16 / 1000).
    assert c["se"] == pytest.approx(np.sqrt(2 * 0.8 * 0.2 / 1000) * 100)


def test_holm_adjusts_in_step_down_order():
    assert noise.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    # Alone below 0.05, not among three whose smallest p is larger than 0.05 / 3.
    assert noise.holm([0.03, 0.2, 0.6]) == pytest.approx([0.09, 0.4, 0.6])
    assert noise.holm([]) == []


def _stage(v: str) -> Stage:
    return Stage(f"evaluate@{v}", metrics=[f"metrics/{v}/evaluate.json"])


def _outcome(sides: dict[str, tuple[list[np.ndarray], list[np.ndarray]]]) -> tuple[Outcome, dict, Check]:
    out = Outcome([f"evaluate@{v}" for v in sides], cwd=None, baseline="")
    dag = {f"evaluate@{v}": _stage(v) for v in sides}
    for side, i in (("base", 0), ("head", 1)):
        out.runs[side] = {f"evaluate@{v}": Runs(seeds=list(range(len(r[i]))), correct=r[i], images=DIGEST)
                          for v, r in sides.items()}
        out.metrics[side] = {f"metrics/{v}/evaluate.json:accuracy": float(np.mean([c.mean() for c in r[i]]) * 100)
                             for v, r in sides.items()}
    gate = Check.model_validate({"tolerance_pp": 1.0, "metrics": [f"metrics/{v}/evaluate.json:accuracy" for v in sides]})
    return out, dag, gate


def _seeds(base: np.ndarray, k: int, rng, swing: int = 4) -> list[np.ndarray]:
    """k runs around base, each a few images apart (a small seed spread)."""
    return [base] + [_flip(base, swing, swing, rng) for _ in range(k - 1)]


def test_a_big_drop_fails_a_small_one_is_worse_within_tolerance_and_noise_is_no_difference():
    rng = np.random.default_rng(4)
    big, small, same = _base(10000, 0.9, 1), _base(10000, 0.9, 2), _base(10000, 0.9, 3)
    sides = {"big": (_seeds(big, 3, rng), _seeds(_flip(big, 400, 20, rng), 3, rng)),        # -3.8 pp
             "small": (_seeds(small, 3, rng), _seeds(_flip(small, 80, 10, rng), 3, rng)),  # -0.7 pp
             "same": (_seeds(same, 3, rng), _seeds(_flip(same, 15, 15, rng), 3, rng))}     # 0
    out, dag, gate = _outcome(sides)
    rows, failures, notes = judge(gate, out, dag)
    by = {r.metric.split("/")[1]: r for r in rows}
    assert by["big"].verdict == WORSE and by["big"].fail and by["big"].diff == pytest.approx(-3.8, abs=0.05)
    assert by["small"].verdict == WORSE and not by["small"].fail      # real, but within the 1 pp tolerance
    assert by["same"].verdict == SAME and not by["same"].blind and by["same"].detectable < 1.0
    assert by["big"].p_holm == pytest.approx(min(1.0, 3 * by["big"].p))   # the smallest of three p: times 3
    assert [f.split(" ")[0] for f in failures] == ["metrics/big/evaluate.json:accuracy"]
    assert "beyond noise" in failures[0] and "1 pp tolerance" in failures[0]
    line, rc = verdict_line(failures, blind_spots(rows, 1.0), rows, strict=False)
    assert rc == 1 and line.startswith("**Verdict: FAIL**")


def test_test_accuracy_is_judged_on_the_test_split_runs():
    # A gated test_accuracy reads the runs' test split (here 3,000 images with a 4 pp drop), while the
    # validation split (500 images, unchanged) would have seen nothing.
    rng = np.random.default_rng(9)
    val, test = _base(500, 0.8, 1), _base(3000, 0.8, 2)
    out, dag, _ = _outcome({"tl": (_seeds(val, 3, rng), _seeds(val, 3, rng))})
    for side, runs in (("base", _seeds(test, 3, rng)), ("head", _seeds(_flip(test, 150, 30, rng), 3, rng))):
        out.runs[side]["evaluate@tl"].test = Runs(seeds=[0, 1, 2], correct=runs, images="t")
        out.metrics[side]["metrics/tl/evaluate.json:test_accuracy"] = float(np.mean([c.mean() for c in runs]) * 100)
    gate = Check.model_validate({"tolerance_pp": 1.0, "metrics": ["metrics/tl/evaluate.json:test_accuracy",
                                                                  "metrics/tl/evaluate.json:accuracy"]})
    rows, failures, _ = judge(gate, out, dag)
    by = {r.metric.split(":")[1]: r for r in rows}
    assert by["test_accuracy"].fail and by["test_accuracy"].diff == pytest.approx(-4.0, abs=0.05)
    assert "paired on 3,000 images, 3 + 3 runs" in by["test_accuracy"].how
    assert by["accuracy"].verdict == SAME and "on 500 images" in by["accuracy"].how
    assert len(failures) == 1 and failures[0].startswith("metrics/tl/evaluate.json:test_accuracy dropped 4.0")


def test_a_check_that_cannot_see_the_tolerance_says_so_and_strict_fails_it():
    """200 images and a seed spread of a few points: a 1 pp drop is invisible; nothing fails, the
    verdict is not OK, and --strict turns it into a failure."""
    rng = np.random.default_rng(5)
    base = _base(200, 0.7)
    sides = {"tl": (_seeds(base, 3, rng, swing=6), _seeds(_flip(base, 3, 2, rng), 3, rng, swing=6))}
    out, dag, gate = _outcome(sides)
    rows, failures, _ = judge(gate, out, dag)
    (row,) = rows
    assert row.verdict == SAME and row.blind and row.detectable > 3 and not failures
    (blind,) = blind_spots(rows, 1.0)
    assert blind == (f"this check cannot see a 1 pp drop in `metrics/tl/evaluate.json:accuracy`: "
                     f"smallest detectable {row.detectable:.1f} pp")
    line, rc = verdict_line(failures, [blind], rows, strict=False)
    assert rc == 0 and line.startswith("**Verdict: INCONCLUSIVE** — this check cannot see a 1 pp drop")
    line, rc = verdict_line(failures, [blind], rows, strict=True)
    assert rc == 1 and "(--strict: fails)" in line


def test_redrawn_runs_without_a_measured_spread_are_blind_and_say_so():
    """One run a side, each its own draw: the draw-to-draw spread is unknown, so the row is never a
    clean "no difference" (INCONCLUSIVE; --strict fails it)."""
    out, dag, gate = _outcome({"tl": ([_base(2000, 0.8, 1)], [_base(2000, 0.8, 2)])})
    for side in ("base", "head"):
        out.runs[side]["evaluate@tl"].redrawn = True
    rows, failures, _ = judge(gate, out, dag)
    (row,) = rows
    assert row.how == "unpaired, each run its own draw of the data (2,000 images a run), 1 + 1 runs, " \
                      "draw-and-seed spread not measured"
    assert row.verdict == SAME and row.blind and not failures
    (blind,) = blind_spots(rows, 1.0)
    assert blind.endswith(f"smallest detectable {row.detectable:.1f} pp (draw-and-seed spread not measured)")
    assert verdict_line(failures, [blind], rows, strict=True)[1] == 1


def test_a_deterministic_option_is_fitted_once_a_side_and_its_zero_spread_is_not_unmeasured(tmp_path, params_raw,
                                                                                            reference_raw):
    """The SVM on frozen features (config.Variant.deterministic) on the same data: add_extras trains no
    extra seed of it (one would need prepared data this folder lacks, and fail), and a drop on 2,000
    paired images is judged by McNemar with the seed spread known to be zero, not unmeasured; a
    variant trained end to end still gets its extra seeds."""
    import yaml

    from pipelines.gate import rerun

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_raw, sort_keys=False))
    (tmp_path / "reference.yaml").write_text(yaml.safe_dump(reference_raw, sort_keys=False))
    assert params_raw["variants"]["tl_svm"]["classifier"] == "svm"
    dag = {f"evaluate@{v}": Stage(f"evaluate@{v}", files=["data/prepared/transfer"]) for v in ("tl_svm", "tl_finetune")}
    (tmp_path / "data/prepared/transfer").mkdir(parents=True)
    (tmp_path / "data/prepared/transfer/meta.json").write_text("{}")   # prepared data without its images
    base = _base(2000, 0.8, 1)
    found = {"evaluate@tl_svm": Runs(seeds=[42], correct=[base], images=DIGEST)}
    log: list[str] = []
    rerun.add_extras(tmp_path, dag, found, 42, 5, tmp_path / "cache", tmp_path / "work", log)
    assert found["evaluate@tl_svm"].deterministic and found["evaluate@tl_svm"].seeds == [42]
    assert log == ["tl_svm: every seed gives the same model on the same data (a linear SVM on frozen features), "
                   "so its one run stands for all 5"]
    trained = {"evaluate@tl_finetune": Runs(seeds=[42], correct=[base], images=DIGEST)}
    with pytest.raises(RuntimeError, match="tl_finetune --seed 42001` failed"):
        rerun.add_extras(tmp_path, dag, trained, 42, 2, tmp_path / "cache", tmp_path / "work", log)
    assert not trained["evaluate@tl_finetune"].deterministic

    out, dag, gate = _outcome({"tl": ([base], [_flip(base, 60, 10, np.random.default_rng(3))])})
    for side in ("base", "head"):
        out.runs[side]["evaluate@tl"].deterministic = True
    rows, failures, _ = judge(gate, out, dag)
    (row,) = rows
    assert row.how == "paired (McNemar) on 2,000 images, one fit per side (every seed gives the same model)"
    assert row.fail and row.p == pytest.approx(binomtest(10, 70, 0.5).pvalue)
    out.runs["head"]["evaluate@tl"].correct = [base]     # the same predictions: seen, and not blind
    rows, failures, _ = judge(gate, out, dag)
    assert rows[0].verdict == SAME and not rows[0].blind and not failures
    assert rows[0].detectable == pytest.approx(2.8 * 100 / 2000, abs=0.01)


def test_the_detectable_size_is_what_the_test_then_finds():
    """Simulated: a drop of the stated detectable size is found (Holm-level p below 0.05) in about 80 %
    of repeated paired checks, a drop of a third of it rarely."""
    rng = np.random.default_rng(6)
    n, acc = 3000, 0.85
    base = _base(n, acc)
    d = noise.runs_compared([base], [_flip(base, 60, 60, rng)], alpha=0.05)["detectable"]

    def found(drop_pp: float) -> float:
        hits = 0
        for _ in range(300):
            lose = rng.binomial(n, 0.02 + drop_pp / 100 / 2)
            gain = rng.binomial(n, 0.02 - drop_pp / 100 / 2)
            hits += noise.runs_compared([base], [_flip(base, lose, gain, rng)])["p"] < 0.05
        return hits / 300

    assert 0.65 < found(d) < 0.95
    assert found(d / 3) < 0.35


def test_only_what_the_gated_metrics_need_reruns():
    dag = {"prep": Stage("prep", params=["seed"], downstream={"train", "evaluate", "embed", "report"}),
           "train": Stage("train", params=["seed", "variants.v"], metrics=["m/train.json"],
                          downstream={"evaluate", "embed", "report"}),
           "evaluate": Stage("evaluate", params=["seed", "variants.v"], metrics=["m/evaluate.json"],
                             downstream={"report"}),
           "embed": Stage("embed", params=["seed", "variants.v"], files=["tsne.py"], metrics=["m/embed.json"],
                          downstream={"report"}),
           "report": Stage("report", params=["seed"])}
    gated = {"m/evaluate.json"}
    why, left = repo.stale_stages(dag, ["seed"], [], gated)
    assert list(why) == ["prep", "train", "evaluate"]
    assert left == {"write no metrics": ["report"], "no gated metric reads them": ["embed"]}
    # A change only the embed stage reads reruns it; without a gate every metric stage reruns.
    assert list(repo.stale_stages(dag, [], ["tsne.py"], gated)[0]) == ["embed"]
    assert set(repo.stale_stages(dag, ["seed"], [])[0]) == {"prep", "train", "evaluate", "embed", "report"}


def test_the_summary_puts_the_gated_table_first_and_the_log_last_collapsed():
    from pipelines.gate.summary import summary_md

    rng = np.random.default_rng(7)
    base = _base(10000, 0.9)
    out, dag, gate = _outcome({"cnn": (_seeds(base, 3, rng), _seeds(_flip(base, 300, 20, rng), 3, rng))})
    out.metrics["head"]["metrics/cnn/train.json:best_val_acc"] = 88.0
    out.log = ["$ dvc repro evaluate@cnn   (12 s, exit 0)"]
    rows, failures, notes = judge(gate, out, dag)
    line, rc = verdict_line(failures, blind_spots(rows, 1.0), rows, strict=False)
    md = summary_md("origin/main", "0123456789abcdef", "gate", {"variants.cnn.lr": {"old": 0.001, "new": 0.03}},
                    {"evaluate@cnn": ["variants.cnn.lr"]}, {"write no metrics": ["report"]}, out, rows,
                    "the base's reference.yaml", 1.0, line, notes, 42.0)
    lines = md.splitlines()
    table = lines.index("| gated metric | base → head (%) | difference, 95 % interval (pp) | p (Holm) | verdict | detectable (pp) |")
    (row,) = [x for x in lines if x.startswith("| `metrics/cnn/evaluate.json:accuracy`")]
    assert "| **FAIL**: worse |" in row and f"{rows[0].diff:+.2f} [{rows[0].lo:+.2f}, {rows[0].hi:+.2f}]" in row
    order = [table, lines.index(line), lines.index("| `variants.cnn.lr` | 0.001 | 0.03 |"),
             lines.index("Not rerun (write no metrics): `report`"),
             lines.index("<details><summary>Rerun log</summary>")]
    assert order == sorted(order) and line.startswith("**Verdict: FAIL**") and rc == 1
    assert "| `metrics/cnn/train.json:best_val_acc` | — | 88.00 |" in md   # the others, collapsed
    assert md.index("$ dvc repro evaluate@cnn") > md.index("<details><summary>Rerun log</summary>")


def test_per_image_results_are_read_from_the_evaluate_stage_outputs(tmp_path):
    from pipelines.gate import evidence

    st = Stage("evaluate@cnn", files=["stages/evaluate.py", "data/prepared/mnist", "models/cnn"],
               metrics=["metrics/cnn/evaluate.json"], outs=["results/cnn/evaluate"])
    assert evidence.read_run(tmp_path, st) is None   # not run yet
    (tmp_path / "results/cnn/evaluate").mkdir(parents=True)
    (tmp_path / "results/cnn/evaluate/confusion.csv").write_text(
        "actual,predicted\nShirt,Shirt\nShirt,T-shirt/top\nCoat,Coat\n")
    (tmp_path / "data/prepared/mnist").mkdir(parents=True)
    (tmp_path / "data/prepared/mnist/meta.json").write_text('{"files": {"train.npz": "aa", "val.npz": "bb"}}')
    correct, digest = evidence.read_run(tmp_path, st)
    assert correct.tolist() == [True, False, True] and digest == "bb"
    assert evidence.read_run(tmp_path, st, "test") is None   # no test split
    (tmp_path / "results/cnn/evaluate/test_predictions.csv").write_text("index,label,pred\n0,1,1\n1,0,1\n2,0,0\n3,1,0\n")
    assert evidence.read_run(tmp_path, st, "test") is None   # a file, but meta.json lists no test split
    (tmp_path / "data/prepared/mnist/meta.json").write_text('{"files": {"val.npz": "bb", "test.npz": "cc"}}')
    correct, digest = evidence.read_run(tmp_path, st, "test")
    assert correct.tolist() == [True, False, True, False] and digest == "cc"
    assert evidence.variant_of(st) == "cnn" and evidence.variant_of(Stage("train@cnn")) is None
    # An extra run's cache key covers the code its train and evaluate stages declare, nothing else.
    dag = {"train@cnn": Stage("train@cnn", files=["stages/train.py", "pipelines/stats.py", "data/prepared/mnist"]),
           "evaluate@cnn": st}
    assert evidence.code_of(dag, st) == ["pipelines/stats.py", "stages/evaluate.py", "stages/train.py"]
    # A run that redraws the data runs the dataset's preprocess stage too.
    dag["preprocess@mnist"] = Stage("preprocess@mnist", files=["stages/preprocess.py", "data/raw/mnist"])
    assert evidence.dataset_of(st) == "mnist"
    assert evidence.code_of(dag, st, redraw=True) == ["pipelines/stats.py", "stages/evaluate.py",
                                                      "stages/preprocess.py", "stages/train.py"]
    # Extra seeds follow the global seed: a seed-only change changes every run.
    assert evidence.extra_seeds(42, 3) == [42001, 42002] and evidence.extra_seeds(43, 1) == []


@pytest.mark.parametrize("change", ["lr30", "svm_c", "alexnet_lr30", "cnn_small"])
def test_the_calibration_bad_changes_are_valid_params_and_change_what_they_say(change, params_raw, reference_raw):
    import copy

    from pipelines.cli.calibrate import BAD
    from pipelines.config import parse

    p = copy.deepcopy(params_raw)
    BAD[change][1](p)
    changed = parse(p, copy.deepcopy(reference_raw))
    before = parse(copy.deepcopy(params_raw), copy.deepcopy(reference_raw))
    v = {"lr30": "mnist_cnn", "svm_c": "tl_svm", "alexnet_lr30": "cifar_alexnet", "cnn_small": "mnist_cnn"}[change]
    assert changed.variant(v) != before.variant(v)
    if change.endswith("lr30"):
        assert changed.variant(v).lr == pytest.approx(30 * before.variant(v).lr)


def test_the_gate_profile_judges_on_every_validation_and_test_image_the_real_params_evaluate(params_raw):
    import copy

    from pipelines import config, profiles

    real = copy.deepcopy(params_raw)
    real["datasets"]["transfer"].update(val_limit=100, test_limit=0)   # 0: every image the validation split leaves
    real["datasets"]["mnist"].pop("test_limit", None)
    gate = profiles.gate(copy.deepcopy(real))
    t = gate["datasets"]["transfer"]
    assert (t["val_limit"], t["test_limit"]) == (100, 0)
    assert t["train_limit"] == profiles.tiny(copy.deepcopy(real))["datasets"]["transfer"]["train_limit"]   # training shrinks
    assert "test_limit" not in gate["datasets"]["mnist"]   # no test split in the real params: none here
    assert gate["datasets"]["mnist"]["train_limit"] == profiles.GATE_TRAIN["mnist"]
    config.parse(gate)   # still valid params
