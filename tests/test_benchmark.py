"""The benchmark's whole code path on a few hundred synthetic images: every figure is produced
and printed. No timing assertions: speed depends on the machine."""
import json
import math

import numpy as np
import pytest
import torch

from benchmarks import compare, paths, studies
from pipelines.train import engine


def _arrays(n_train, n_val, size, c, seed):
    rng = np.random.default_rng(seed)
    return paths.Arrays(
        rng.integers(0, 256, (n_train, size, size, c), dtype=np.uint8), np.arange(n_train) % 10,
        rng.integers(0, 256, (n_val, size, size, c), dtype=np.uint8), np.arange(n_val) % 10,
        [0.3] * c, [0.35] * c, 10)


def _recipe(batch, augment):
    return engine.Recipe(1, batch, 100, "adam", 1e-3, 0.9, 0.0, "constant", 0.0, augment)


@pytest.fixture(scope="module")
def result():
    datasets = {"simple_cnn": _arrays(128, 100, 28, 1, 0), "alexnet": _arrays(96, 100, 32, 3, 1)}
    recipes = {"simple_cnn": _recipe(64, "none"), "alexnet": _recipe(48, "crop_flip")}
    # One thread: on a shared 2-core machine spinning thread pools, not the work, dominate tiny runs.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return compare.run(datasets, recipes, seed=3, precision_batches=2, compile_timeout_s=0,
                           device_name="cpu", log=lambda s: None, quick=True)
    finally:
        torch.set_num_threads(threads)


def _finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_every_model_figure_for_both_paths(result):
    for key in ("simple_cnn", "alexnet"):
        r = result["models"][key]
        assert r["same_init"] is True
        for path in ("ours", "usual"):
            p = r[path]
            for k in ("train_img_per_s", "eval_img_per_s", "train_seconds", "eval_seconds", "seconds",
                      "val_acc", "val_loss", "train_loss", "peak_rss_mib", "peak_rss_increase_mib"):
                assert _finite(p[k]), (key, path, k)
            assert 0 <= p["val_acc"] <= 100 and p["peak_rss_mib"] > 0
            assert p["eval_images"] == 100
        assert r["ours"]["train_images"] == r["usual"]["train_images"] == r["train_n"]
        assert all(_finite(v) for v in r["ratio_ours_over_usual"].values())
    assert result["models"]["simple_cnn"]["params"] == 813_802
    assert result["models"]["alexnet"]["params"] == 6_199_498


def test_tsne_precision_compile_and_machine_figures(result):
    t = result["tsne"]
    assert t["features"] == [100, 128]
    for run in (t["pipeline"], t["opentsne_one_thread_750"]):
        assert _finite(run["seconds"]) and 0 <= run["knn_acc_tsne"] <= 100 and 0 < run["trustworthiness"] <= 1
    assert 250 < t["pipeline"]["iterations"] <= 750 and _finite(t["speedup"])
    p = result["precision"]
    assert p["batches"] == 2 and _finite(p["fp32"]["train_img_per_s"]) and _finite(p["bf16"]["train_img_per_s"])
    assert p["auto_picks"] == ("bf16" if p["native_bf16"] else "fp32")
    assert result["compile_eval"]["simple_cnn"]["status"].startswith("skipped")
    m = result["machine"]
    assert m["cpu_cores"] >= 1 and m["torch"] and "avx512_bf16" in m["flags"]
    json.dumps(result)  # what --json writes


def test_markdown_table_names_every_figure(result):
    md = compare.render_markdown(result)
    for word in ("simple_cnn", "alexnet", "ours (", "usual (fp32)", "ratio ours/usual", "t-SNE", "trustworthiness",
                 "bf16 autocast", "torch.compile", "avx512_bf16", "peak RSS", "Roofline", "% of peak", "oneDNN",
                 "GFLOP/s", "bf16 autocast NCHW"):
        assert word in md, word


def test_usual_dataset_gives_normalised_pil_transformed_tensors():
    d = _arrays(4, 4, 32, 3, 2)
    ds = paths.NotebookDataset(d.train_x, d.train_y, paths.notebook_transforms(d, "crop_flip", True))
    x, y = ds[1]
    assert tuple(x.shape) == (3, 32, 32) and y == 1
    g = _arrays(4, 4, 28, 1, 2)
    x, _ = paths.NotebookDataset(g.val_x, g.val_y, paths.notebook_transforms(g, "none", False))[0]
    expect = (g.val_x[0, :, :, 0] / 255 - 0.3) / 0.35
    assert np.allclose(x[0].numpy(), expect, atol=1e-5)


def test_compile_over_its_limit_is_skipped_not_fatal():
    d = _arrays(10, 20, 28, 1, 4)
    model = paths.build_model("simple_cnn", d, 0)
    res = studies.compare_compile(model, "simple_cnn", d, 10, timeout_s=0.01, precision="fp32")
    assert res["status"].startswith("timed out compiling"), res
    assert res["eager_img_per_s"] > 0 and "compiled_img_per_s" not in res


def test_roofline_figures_agree_with_the_paths_they_describe(result):
    rf = result["roofline"]
    pk = rf["peak"]
    for k in ("gemm_fp32_flops", "gemm_bf16_flops", "peak_fp32_flops", "peak_bf16_flops"):
        assert _finite(pk[k]) and pk[k] > 0, k
    assert pk["peak_fp32_flops"] >= pk["gemm_fp32_flops"]
    # The heaviest convolution of each network, found by FLOP count: the AlexNet's second, 48->128 5x5.
    assert "conv_alexnet.features.3_shape" in pk and pk["conv_alexnet.features.3_shape"].startswith("48->128, 5x5")
    for key in ("simple_cnn", "alexnet"):
        p = rf["paths"][f"{key}/ours"]
        row = result["models"][key]["ours"]
        expect = p["flops_per_image"] * 3 * row["train_img_per_s"]
        assert math.isclose(p["train"]["gflop_per_s"] * 1e9, expect, rel_tol=1e-9)
        assert math.isclose(p["train"]["pct_of_peak"], 100 * expect / pk[f"peak_{row['precision']}_flops"])
        layers = rf[f"layers_{key}"]
        assert math.isclose(sum(r["share_pct"] for r in layers), 100, rel_tol=1e-6)
        assert any(r["type"] == "Conv2d" and r["forward_ms"] > 0 and r["gflop_per_s"] > 0 for r in layers)
    assert rf["paths"]["simple_cnn/ours"]["flops_per_image"] > 14_450_688  # conv2 alone: 2 x 9 x 32 x 32 x 28 x 28
    assert rf["onednn"].get("version", "").startswith("v") and rf["onednn"]["conv_kernels"]
    for key in ("simple_cnn", "alexnet"):
        forms = result["forms"][key]["forms"]
        assert set(forms) == set(studies.FORMS) and forms["fp32 channels-last"]["train_vs_fp32"] == 1.0
        assert all(_finite(f["train_img_per_s"]) and _finite(f["loss_after"]) for f in forms.values())


def test_the_depthwise_benchmark_times_each_form_of_a_layer_and_its_main_prints_both_step_rates(capsys):
    from benchmarks import depthwise

    assert all(depthwise.layer_ms(16, 8, 3, 1, form, calls=2) > 0 for form in ("bf16", "fp32", "ours"))
    assert depthwise.main(["--rounds", "1", "--calls", "1", "--steps", "1", "--batch", "2", "--eval-batch", "2",
                           "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "training img/s (median): bf16 " in out and "float32 gradients " in out
    assert out.count("/") >= 2 * len(depthwise.SHAPES)


def test_the_tsne_benchmarks_map_and_floor_on_clustered_points():
    from benchmarks import tsne as bench

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 100)
    f = (rng.normal(size=(300, 8)) + 6 * y[:, None]).astype(np.float32)
    for neighbours in ("auto", "annoy"):
        m = bench.one_map(f, y, 0, 30, neighbours)
        assert m["seconds"] > 0 and m["knn_acc_tsne"] > 95 and 0.8 < m["trustworthiness"] <= 1, m
    assert bench.floor_seconds(f, 0, 30) > 0
