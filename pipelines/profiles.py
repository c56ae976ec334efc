"""Run profiles: the params.yaml a run uses, derived from the real one.

`tiny` (CI's: `python -m pipelines.cli.check`, and the tests' whole-DAG run) shrinks every
dataset and budget so the whole DAG runs in minutes on 2 CPU cores, on real data (Debian's
Fashion-MNIST, the real EfficientNet-Lite0 weights), while leaving the variants enough data and
steps to beat chance clearly (tests/test_pipeline.py checks it). It changes sizes and budgets only,
never what a variant is (model, recipe, classes), so a params change is judged on the same kind of run.
"""


def tiny(p: dict) -> dict:
    """The tiny profile of raw params p (changed in place and returned)."""
    p["datasets"]["mnist"].update(train_limit=256, val_limit=128)
    # The AlexNet stays at chance after 4 steps; 1,024 images for 2 epochs (32 steps) lift it.
    p["datasets"]["cifar10"].update(train_limit=1024, val_limit=128)
    # 64 px: at 32 px the pretrained features barely separate the two classes (a linear SVM on
    # 12 + 12 images: 56 % of 100). 50 + 50 validation images tell learning from luck.
    p["datasets"]["transfer"].update(train_limit=40, val_limit=50, test_limit=8, image_size=64)
    p["replicates"].update(variants=["tl_finetune"], seeds=[1])
    p["defaults"].update(tsne_points=60, eval_batch_size=128)
    # Tiny stages train for a second or two: sample system metrics often enough to catch them.
    p["tracking"]["system_metrics_interval_s"] = 0.5
    for v in p["variants"].values():
        cap = {"simple_cnn": 2, "alexnet_cifar": 2}.get(v.get("model"), 3)
        v["epochs"] = min(v.get("epochs", p["defaults"]["epochs"]), cap)
        v["batch_size"] = 16 if v.get("dataset") == "transfer" else 64
        v.pop("eval_batch_size", None)
    p["variants"]["mnist_cnn_20ep"]["epochs"] = 3  # still longer than mnist_cnn's 2
    return p


# The runs per gated variant on the `gate` profile: the stage's own and more seeds
# (pipelines/gate/evidence.py), so that the seed-to-seed spread is measured on the profile itself.
# The head runs GATE_SEEDS; the base more, GATE_BASE_SEEDS, since its runs are cached across the
# checks of one base: the pooled spread then has more degrees of freedom for a few head runs.
GATE_SEEDS = 5
GATE_BASE_SEEDS = 10
# Training images of the gated networks' datasets on the gate profile (the tiny one's 256 and 1,024
# leave a seed-to-seed spread of several points).
GATE_TRAIN = {"mnist": 16384, "cifar10": 16384}


def gate(p: dict) -> dict:
    """The gate's profile (`python -m pipelines.cli.check`, CI's): the tiny profile's training budgets,
    larger where a gated network's seed spread needs it, and every validation image the real params
    evaluate on (validation and test), so that base and head are judged on the same full split, image
    by image (docs/ci-gate.md has the measured times and detectable differences)."""
    val = {k: d.get("val_limit", 0) for k, d in p["datasets"].items()}
    test = {k: d.get("test_limit") for k, d in p["datasets"].items()}
    tiny(p)
    for k in ("mnist", "cifar10"):
        p["datasets"][k].update(train_limit=GATE_TRAIN[k], val_limit=val[k])
    # The held-out test split as the real params hold it (the transfer set's 1,800 images): the
    # transfer options are gated on it, nine times the validation split's images, for seconds of
    # inference at the tiny profile's image size.
    for k, d in p["datasets"].items():
        d["val_limit"], d["test_limit"] = val[k], test[k]
        if test[k] is None:
            d.pop("test_limit")
    # One thread per process, and the extra seeds' runs side by side, one per core: on two shared
    # cores a stage on two threads ran up to 10 times slower under load (AlexNet, 4,096 images for two
    # epochs: 21 s at load 1.7, 220 s at load 6.6), while one-thread runs only share the cores.
    p["threads"] = 1
    return p
