"""Run profiles: the params.yaml a run uses, derived from the real one.

`tiny` (CI's: `python -m pipelines.check_params`, and the tests' whole-DAG run) shrinks every
dataset and budget so the whole DAG runs in a few minutes on 2 CPU cores, on real data (Debian's
Fashion-MNIST, the real EfficientNet-Lite0 weights), and still leaves every variant enough to
beat chance clearly."""


def tiny(p: dict) -> dict:
    """The tiny profile of raw params p (changed in place and returned)."""
    for name in ("mnist", "cifar10"):
        p["datasets"][name].update(train_limit=256, val_limit=128)
    p["datasets"]["transfer"].update(train_limit=12, val_limit=12, test_limit=8, image_size=32)
    p["replicates"].update(variants=["tl_svm", "tl_finetune"], seeds=[1])
    p["defaults"].update(tsne_points=60, eval_batch_size=128)
    # Tiny stages train for a second or two: sample system metrics often enough to catch them.
    p["tracking"]["system_metrics_interval_s"] = 0.5
    for v in p["variants"].values():
        v["epochs"] = min(v.get("epochs", p["defaults"]["epochs"]), 2 if v.get("model") == "simple_cnn" else 1)
        v["batch_size"] = 16 if v.get("dataset") == "transfer" else 64
        v.pop("eval_batch_size", None)
    p["variants"]["mnist_cnn_20ep"]["epochs"] = 3  # still longer than mnist_cnn's 2
    return p
