"""benchmarks/precision.py: fp32 and bf16 runs of a variant from the same seeds, with the pipeline's
own loop, and the Welch verdict on their best accuracies."""
import numpy as np
import pytest

from benchmarks import precision
from pipelines.runtime import Prepared


def _prepared(n_train: int, n_val: int, seed: int = 0) -> Prepared:
    # Two classes a small CNN separates within one epoch: a bright or a dark upper half.
    rng = np.random.default_rng(seed)

    def split(n):
        y = rng.integers(0, 2, n)
        x = rng.integers(0, 60, (n, 28, 28, 1)).astype(np.uint8)
        x[y == 1, :14] += 150
        return {"x": x, "y": y.astype(np.int64)}

    meta = {"classes": ["dark", "bright"], "channels": 1, "height": 28, "width": 28, "mean": [0.3], "std": [0.3]}
    return Prepared(meta, split(n_train), split(n_val), folder=None)


@pytest.mark.slow
def test_both_precisions_from_every_seed_learn_and_get_a_verdict(make_params):
    params = make_params({"variants": {"mnist_cnn": {"batch_size": 32}, "mnist_cnn_20ep": {"batch_size": 32}}})
    res = precision.run(params, {"mnist": _prepared(256, 128)}, ["mnist_cnn"], seeds=[1, 2], epochs=1,
                        log=lambda s: None)
    v = res["variants"]["mnist_cnn"]
    assert [(r["seed"], r["precision"]) for r in v["runs"]] == [(1, "fp32"), (1, "bf16"), (2, "fp32"), (2, "bf16")]
    assert all(r["best_val_acc"] > 75 for r in v["runs"]), v["runs"]   # chance is 50 %
    assert v["bf16_minus_fp32_pp"] == pytest.approx(v["bf16_mean"] - v["fp32_mean"])
    assert 0 <= v["welch_p"] <= 1 and v["verdict"]
    md = precision.render_markdown(res)
    assert "`mnist_cnn`" in md and f"{v['fp32_mean']:.2f}" in md


def test_verdict_tells_noise_from_a_real_difference():
    assert "within the seeds' noise" in precision.verdict([92.1, 92.5, 91.9], [92.3, 91.8, 92.4])["verdict"]
    assert "lower beyond the noise" in precision.verdict([92.1, 92.2, 92.0], [90.0, 90.1, 89.9])["verdict"]
    assert precision.verdict([92.0], [91.0])["welch_p"] is None
