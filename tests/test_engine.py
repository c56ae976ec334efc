"""The shared loop and its on-device data path, on tiny random data."""
import numpy as np
import pytest
import torch

from pipelines import compute, hardware, inference, models
from pipelines.embed import tsne
from pipelines.layers import batch_part
from pipelines.train import engine
from pipelines.train.svm import fit_linear_svm


def _data(n=96, size=28, c=1, k=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size, c), dtype=np.uint8)
    y = rng.integers(0, k, n)
    return compute.DeviceData.from_arrays(x, y, [0.5] * c, [0.25] * c, torch.device("cpu"))


@pytest.mark.parametrize("name", list(engine.AUGMENTS))
def test_augments_keep_shape_dtype_and_are_seeded(name):
    d = _data(8, 16, 3)
    a = engine.augment(name, d.x, torch.Generator().manual_seed(1))
    b = engine.augment(name, d.x, torch.Generator().manual_seed(1))
    assert a.shape == d.x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(engine.AUGMENTS))
def test_each_rank_augments_its_rows_as_one_process_does(name):
    # Under batch_part a rank holds rows rank::world of the global batch; its images come out as
    # those rows of the whole batch augmented by one process, and its generator ends where that one does.
    x = _data(9, 12, 3).x
    gen = torch.Generator().manual_seed(5)
    whole = engine.augment(name, x, gen)
    for rank in range(2):
        g = torch.Generator().manual_seed(5)
        with batch_part(rank, 2, len(x)) as part:
            mine = engine.augment(name, x[rank::2], g, part)
        assert torch.equal(mine, whole[rank::2])
        assert torch.equal(g.get_state(), gen.get_state())


def test_crop_moves_pixels_and_flip_mirrors():
    x = torch.arange(16, dtype=torch.uint8).reshape(1, 4, 4, 1).repeat(64, 1, 1, 1)
    out = engine._random_crop(x, 2, torch.Generator().manual_seed(0))
    assert not all(torch.equal(o, x[0]) for o in out)
    flipped = engine._random_flip(x, torch.Generator().manual_seed(0))
    assert any(torch.equal(f, x[0].flip(1)) for f in flipped)
    # "flip" alone only mirrors: every image is itself or its mirror image, and both occur.
    only = engine.augment("flip", x, torch.Generator().manual_seed(0))
    kinds = {0 if torch.equal(o, x[0]) else 1 if torch.equal(o, x[0].flip(1)) else 2 for o in only}
    assert kinds == {0, 1}


def test_unknown_augment_names_supported_ones():
    with pytest.raises(RuntimeError, match="unknown augment 'mixup'; supported: none"):
        engine.augment("mixup", torch.zeros(1, 4, 4, 1, dtype=torch.uint8), torch.Generator())


def test_normalise_gives_channels_last_float():
    d = _data(4, 8, 3)
    xf = d.normalise(d.x)
    assert xf.shape == (4, 3, 8, 8) and xf.dtype == torch.float32
    assert xf.is_contiguous(memory_format=torch.channels_last)


def _fit(seed):
    compute.seed_everything(seed)
    m = models.build(dict(model="simple_cnn", in_channels=1, image_size=28, n_classes=10, hidden=8))
    r = engine.Recipe(2, 32, 64, "adam", 1e-3, 0.9, 0.0, "onecycle", 0.1, "crop_flip")
    return engine.fit(m, _data(), _data(seed=1), r, torch.device("cpu"), "fp32", seed)


def test_same_seed_same_numbers():
    a, b = _fit(3), _fit(3)
    assert [r["train_loss"] for r in a.history] == [r["train_loss"] for r in b.history]
    assert [r["val_acc"] for r in a.history] == [r["val_acc"] for r in b.history]
    assert len(a.history) == 2 and 1 <= a.best_epoch <= 2
    assert all(torch.equal(a.best_state[k], b.best_state[k]) for k in a.best_state)


def test_training_reduces_loss_on_learnable_data():
    # Two classes that differ in brightness: any working loop separates them in a few epochs.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 256)
    x = (rng.integers(0, 100, (256, 8, 8, 1)) + 150 * y[:, None, None, None]).astype(np.uint8)
    d = compute.DeviceData.from_arrays(x, y, [0.5], [0.3], torch.device("cpu"))
    compute.seed_everything(0)
    m = models.build(dict(model="simple_cnn", in_channels=1, image_size=8, n_classes=2, hidden=8))
    r = engine.Recipe(4, 32, 128, "adam", 3e-3, 0.9, 0.0, "constant", 0.0, "none")
    res = engine.fit(m, d, d, r, torch.device("cpu"), "fp32", 0)
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.best_val_acc > 90


def test_extract_reads_named_layers_by_hooks():
    d = _data(10)
    m = models.build(dict(model="simple_cnn", in_channels=1, image_size=28, n_classes=10))
    feats = inference.extract(m, {"fc1": m.fc1, "out": m.fc2}, d, 4, torch.device("cpu"), "fp32")
    assert feats["fc1"].shape == (10, 128) and feats["out"].shape == (10, 10)
    assert not m.fc1._forward_hooks  # hooks removed


def test_precision_auto_is_fp32_without_native_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda: False)
    assert compute.pick_precision("auto", torch.device("cpu")) == "fp32"
    monkeypatch.setattr(hardware, "native_bf16", lambda: True)
    assert compute.pick_precision("auto", torch.device("cpu")) == "bf16"
    assert compute.pick_precision("fp32", torch.device("cpu")) == "fp32"


def test_linear_svm_folds_into_a_head_with_the_same_decisions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    f = rng.normal(size=(200, 16)) + y[:, None] * 1.5
    w, b, acc = fit_linear_svm(f, y, 1.0, 0)
    assert w.shape == (2, 16) and acc > 80
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC
    z = StandardScaler().fit_transform(f)
    ref = LinearSVC(C=1.0, dual="auto", max_iter=20000, random_state=0).fit(z, y).predict(z)
    assert ((f @ w.T + b).argmax(1) == ref).mean() > 0.98


def test_tsne_and_quality_figures():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 40)
    f = rng.normal(size=(120, 8)) + 6 * y[:, None]
    xy, backend = tsne.tsne_2d(f, 0, 30)
    assert xy.shape == (120, 2) and backend in ("openTSNE", "scikit-learn")
    q = tsne.quality(f, xy, y, 0)
    assert q["silhouette_features"] > 0.5 and q["knn_acc_features"] > 95 and q["linear_probe_acc"] > 95
    assert 0.5 < q["trustworthiness"] <= 1


def test_a_wide_layer_is_mapped_through_pca_and_keeps_its_neighbours():
    # 600 points of 1,100 dimensions: reduced to tsne.PCA_COMPONENTS first, the same map on a second
    # call, and the map judged against the original features keeps their classes and neighbours.
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], 200)
    centres = rng.normal(size=(3, 1100)) * 2
    f = (centres[y] + rng.normal(size=(600, 1100))).astype(np.float32)
    info, again = {}, {}
    xy, _ = tsne.tsne_2d(f, 0, 30, n_jobs=1, info=info)
    assert info["pca_components"] == tsne.PCA_COMPONENTS
    assert np.array_equal(xy, tsne.tsne_2d(f, 0, 30, n_jobs=1, info=again)[0])
    q = tsne.quality(f, xy, y, 0)
    assert q["knn_acc_tsne"] > 95 and q["trustworthiness"] > 0.8, q
    narrow = {}
    tsne.tsne_2d(f[:, :100], 0, 30, n_jobs=1, info=narrow)
    assert "pca_components" not in narrow


def test_tsne_neighbours_are_exact_up_to_the_limit_and_equal_brute_force():
    from openTSNE import affinity
    from sklearn.neighbors import NearestNeighbors

    assert tsne.neighbour_search(10_000)["method"] == "exact"
    assert tsne.neighbour_search(tsne.EXACT_NEIGHBOURS_UP_TO + 1)["method"] == "annoy"
    assert tsne.neighbour_search(50, "annoy")["method"] == "annoy"
    with pytest.raises(ValueError, match="neighbours 'fast': allowed are auto, exact, annoy"):
        tsne.neighbour_search(50, "fast")
    rng = np.random.default_rng(4)
    f = rng.normal(size=(1500, 12)).astype(np.float32)
    aff = affinity.PerplexityBasedNN(f, perplexity=10, n_jobs=1, random_state=0, **tsne.neighbour_search(len(f)))
    # Every point's nonzero affinities are its 30 (3 x perplexity) true nearest neighbours, before symmetrising.
    _, true = NearestNeighbors(n_neighbors=31).fit(f).kneighbors(f)
    p = aff.P.tocsr()
    hits = [len(set(p[i].indices) & set(true[i, 1:])) for i in range(0, 1500, 50)]
    assert min(hits) == 30, hits
    xy, _ = tsne.tsne_2d(f, 0, 10, n_jobs=1)
    assert np.array_equal(xy, tsne.tsne_2d(f, 0, 10, n_jobs=1)[0])
    approx, _ = tsne.tsne_2d(f, 0, 10, n_jobs=1, neighbours="annoy")
    assert approx.shape == xy.shape


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5, 7, 40])
def test_onecycle_runs_on_a_handful_of_steps(steps):
    # A one-epoch run of a few batches (the tiny CI profile) once divided by zero inside OneCycleLR.
    model = torch.nn.Linear(2, 2)
    r = engine.Recipe(1, 32, 64, "adamw", 0.01, 0.9, 0.0, "onecycle", 0.0, "none")
    opt = engine.make_optimizer(model.parameters(), r)
    sched = engine.make_schedule(opt, r, steps)
    lrs = []
    for _ in range(steps):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(0 < lr <= 0.01 + 1e-12 for lr in lrs)
    if steps >= 40:
        assert sched.total_steps == 40 and max(lrs) == pytest.approx(0.01, rel=0.01)


def test_tsne_stops_once_converged_and_repeats_itself(monkeypatch):
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 50)
    f = (rng.normal(size=(150, 8)) + 6 * y[:, None]).astype(np.float32)
    info, again = {}, {}
    xy, _ = tsne.tsne_2d(f, 3, 30, info=info)
    xy2, _ = tsne.tsne_2d(f, 3, 30, info=again)
    # Same seed, same map on every core; the KL value's last digits depend on the threads' summation order.
    assert np.array_equal(xy, xy2) and info["iterations"] == again["iterations"]
    assert info["kl_divergence"] == pytest.approx(again["kl_divergence"], rel=1e-9)
    assert tsne.TSNE_EXAGGERATION_ITER < info["iterations"] <= tsne.TSNE_EXAGGERATION_ITER + tsne.TSNE_MAX_ITER
    assert tsne.quality(f, xy, y, 0)["knn_acc_tsne"] > 95
    monkeypatch.setattr(tsne, "TSNE_TOL", 0.0)  # never converged: the full budget
    full = {}
    tsne.tsne_2d(f, 3, 30, info=full)
    assert full["iterations"] == tsne.TSNE_EXAGGERATION_ITER + tsne.TSNE_MAX_ITER
    monkeypatch.setattr(tsne, "TSNE_TOL", 1.0)  # any decrease is small enough: stops at the second check
    short = {}
    tsne.tsne_2d(f, 3, 30, info=short)
    assert short["iterations"] == tsne.TSNE_EXAGGERATION_ITER + 2 * tsne.TSNE_CHECK_EVERY


def test_cpu_probe_reads_the_first_processor_and_names_native_bf16(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n")
    c = hardware.cpu(info)
    assert c.model == "Test CPU 9000" and c.flags == {"fpu", "avx2", "avx512f", "avx512_bf16"} and c.native_bf16
    info.write_text("model name\t: Old CPU\nflags\t\t: fpu avx2 avx512f\n")
    assert not hardware.cpu(info).native_bf16
    gone = hardware.cpu(tmp_path / "missing")   # not Linux: a model from platform, no flags, never bf16
    assert gone.model and gone.flags == frozenset() and not gone.native_bf16


CHECKPOINT_KEYS = ["epoch", "model", "optimizer", "schedule", "torch_rng", "history", "best_state", "best_epoch",
                   "best_val_acc", "train_seconds", "train_images"]


def test_checkpoint_is_a_plain_dict_and_resuming_from_it_repeats_the_straight_run(tmp_path):
    r = engine.Recipe(3, 32, 64, "sgd", 0.05, 0.9, 1e-4, "cosine", 0.0, "crop_flip")

    def run(resume=None, checkpoint=None):
        compute.seed_everything(5)
        m = models.build(dict(model="simple_cnn", in_channels=1, image_size=28, n_classes=10, hidden=8))
        return engine.fit(m, _data(), _data(seed=1), r, torch.device("cpu"), "fp32", 5,
                          resume=resume, checkpoint=checkpoint)

    saved = []
    straight = run(checkpoint=lambda st: saved.append(torch.save(st, tmp_path / f"{st['epoch']}.pt")))
    assert len(saved) == 3
    first = torch.load(tmp_path / "1.pt", weights_only=True)   # tensors, numbers and lists only
    assert list(first) == CHECKPOINT_KEYS and first["epoch"] == 1 and len(first["history"]) == 1
    resumed = run(resume=first)
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in straight.history]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in resumed.history] == strip
    assert resumed.best_epoch == straight.best_epoch and resumed.train_images == straight.train_images == 3 * 96
    assert all(torch.equal(resumed.best_state[k], straight.best_state[k]) for k in straight.best_state)


def test_recipe_for_reads_every_recipe_field_from_the_variant(make_params):
    from pipelines.train.engine import recipe_for

    p = make_params({"variants": {"mnist_cnn_small": {
        "batch_size": 48, "lr": 0.0123, "optimizer": "sgd", "momentum": 0.8, "schedule": "cosine", "augment": "crop",
        "label_smoothing": 0.05}}})
    v = p.variant("mnist_cnn_small")
    r = recipe_for(v)
    assert (r.batch_size, r.lr, r.optimizer, r.momentum, r.schedule, r.augment, r.label_smoothing) == \
        (48, 0.0123, "sgd", 0.8, "cosine", "crop", 0.05)
    assert (r.epochs, r.eval_batch_size, r.weight_decay) == (v.epochs, v.eval_batch_size, v.weight_decay)
    assert recipe_for(v, epochs=1) == engine.Recipe(**{**r.__dict__, "epochs": 1})


def test_gemm_peak_times_a_real_matrix_product():
    # The FLOP count over the best time of the product: a positive, finite rate in both precisions,
    # and best_seconds really takes the fastest call.
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    for precision in ("fp32", "bf16"):
        rate = hardware.gemm_peak(precision, "cpu", n=128, repeats=2, min_seconds=0.01)
        assert 1e6 < rate < 1e15, (precision, rate)
    # Measuring the peak leaves the global random stream where training left it.
    assert torch.equal(torch.rand(3), expected)
    import time
    calls = iter([0.05, 0.2, 0.02, 0.2])   # warm-up, then three timed calls
    assert 0.02 <= hardware.best_seconds(lambda: time.sleep(next(calls)), 3, 0.0) < 0.1


def test_embed_stops_in_one_line_on_the_features_of_a_diverged_model():
    # A model whose weights went to NaN (as a far too high learning rate leaves them) gives NaN features
    # through the real extraction; the embed stage's check names the layer and the count.
    from pipelines import inference
    from pipelines.errors import StageError

    compute.seed_everything(0)
    m = models.build(dict(model="simple_cnn", in_channels=1, image_size=28, n_classes=10, hidden=8))
    path, fc = next((n, mod) for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear))
    feats = inference.extract(m, {"final": fc}, _data(), 16, torch.device("cpu"), "fp32")["final"]
    tsne.check_finite(feats, "embed@v", "final", path)   # a healthy model passes
    with torch.no_grad():
        fc.weight[0, 0] = float("nan")
    feats = inference.extract(m, {"final": fc}, _data(), 16, torch.device("cpu"), "fp32")["final"]
    with pytest.raises(StageError) as e:
        tsne.check_finite(feats, "embed@v", "final", path)
    msg = str(e.value)
    assert "\n" not in msg and f"`{path}`" in msg and f"for {len(feats)} of {len(feats)} images" in msg
    assert msg.startswith("embed@v: the final layer")
