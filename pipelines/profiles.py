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
