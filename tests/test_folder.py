"""Your own image folder as a dataset: real PNG/JPEG files written by Pillow from Fashion-MNIST
images, through the download (scan) and preprocess (decode) code; every bad input is one line
naming the file or folder, and nothing is written."""
from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.data import folder as own
from pipelines.errors import DataError
from pipelines.data.prepare import prepare
from pipelines.data.readers import read_idx
from pipelines.data.sources import acquire
from pipelines.io import load_npz, read_json, sha256_file

FASHION = Path("/usr/share/datasets/fashion-mnist")   # Debian's dataset-fashion-mnist
CLASSES = ["T-shirt top", "Hemd ü"]                    # a space and a non-ASCII letter


@pytest.fixture(scope="module")
def fashion() -> tuple[np.ndarray, np.ndarray]:
    assert FASHION.is_dir(), f"{FASHION} is missing: apt-get install dataset-fashion-mnist"
    return read_idx(FASHION / "t10k-images-idx3-ubyte.gz", 3)[:400], read_idx(FASHION / "t10k-labels-idx1-ubyte.gz", 1)[:400]


def _save(img: Image.Image, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


def make_folder(root: Path, fashion, per_class: int = 12, splits: tuple[str, ...] = ()) -> Path:
    """Class 0 (T-shirt/top) and class 6 (Shirt) of Fashion-MNIST as PNG (gray) and JPEG (RGB, upscaled)."""
    x, y = fashion
    for k, label in enumerate((0, 6)):
        imgs = x[y == label]
        for i in range(per_class):
            split = splits[i % len(splits)] + "/" if splits else ""
            im = Image.fromarray(imgs[i])
            if i % 2:
                _save(im.convert("RGB").resize((56, 42)), root / f"{split}{CLASSES[k]}/img {i}.jpg", quality=95)
            else:
                _save(im, root / f"{split}{CLASSES[k]}/bild_{i}_ä.png")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "._bild_0_ä.png").write_bytes(b"\0\5\26\7")   # a macOS resource fork
    (root / "README.txt").write_text("my photos\n")
    (root / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    return root


def _params(make_params, root: Path, dataset: str = "mnist", **limits):
    ds = {"folder": str(root), "train_limit": 4, "val_limit": 2, "test_limit": None, **limits}
    return make_params({"datasets": {dataset: ds}})


def _run(params, tmp_path: Path, dataset: str = "mnist"):
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    record = acquire(dataset, params, raw)
    meta = prepare(dataset, params, raw, out)
    return record, meta, out


def test_class_folders_become_a_seeded_stratified_split(tmp_path, fashion, make_params):
    root = make_folder(tmp_path / "my photos", fashion)
    params = _params(make_params, root, test_limit=0)
    record, meta, out = _run(params, tmp_path)
    f = record["folder"]
    assert f["classes"] == sorted(CLASSES) and f["layout"] == "classes"
    assert len(f["files"]) == 24 and f["ignored"] == {"hidden": 2, "not_image": 2}
    for entry in f["files"]:
        assert entry["sha256"] == sha256_file(root / entry["path"])
    assert meta["classes"] == sorted(CLASSES) and meta["splits"] == {"train": 8, "val": 4, "test": 12}
    assert meta["folder"]["files"] == 24 and meta["folder"]["digest"] == f["digest"]
    assert meta["source"] == "image_folder" and str(root.resolve()) in meta["source_title"]
    train, test = load_npz(out / "train.npz"), load_npz(out / "test.npz")
    assert train["x"].shape == (8, 28, 28, 1) and train["x"].dtype == np.uint8
    assert np.bincount(train["y"]).tolist() == [4, 4] and np.bincount(test["y"]).tolist() == [6, 6]
    # The files behind the arrays: disjoint splits, and each PNG decoded to its own pixels.
    used = [rel for items in f["splits"].values() for rel, _ in items]
    assert len(used) == len(set(used)) == 24
    rel, k = f["splits"]["train"][0]
    expect = np.asarray(Image.open(root / rel).convert("L").resize((28, 28)))
    if rel.endswith(".png"):
        assert np.array_equal(train["x"][0, ..., 0], expect)
    assert train["y"][0] == k
    # Same seed, same split; another seed, another.
    assert acquire("mnist", params, tmp_path / "raw2")["folder"]["splits"] == f["splits"]
    other = _params(make_params, root, test_limit=0).model_copy(update={"seed": 7})
    assert acquire("mnist", other, tmp_path / "raw3")["folder"]["splits"] != f["splits"]


def test_split_folders_are_kept_and_rgb_is_made(tmp_path, fashion, make_params):
    root = make_folder(tmp_path / "set", fashion, per_class=12, splits=("train", "train", "val", "test"))
    params = _params(make_params, root, "cifar10", train_limit=0, val_limit=0, test_limit=0)
    record, meta, out = _run(params, tmp_path, "cifar10")
    assert record["folder"]["layout"] == "splits"
    assert meta["splits"] == {"train": 12, "val": 6, "test": 6}
    val = load_npz(out / "val.npz")
    assert val["x"].shape == (6, 32, 32, 3)
    gray = val["x"][np.asarray([r.endswith(".png") for r, _ in record["folder"]["splits"]["val"]])]
    assert (gray[..., 0] == gray[..., 2]).all() and gray.std() > 10   # gray repeated to RGB, not blank


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("L", (60, 30), 0)
    img.paste(255, (0, 0, 30, 30))   # left half white
    exif = Image.Exif()
    exif[0x0112] = 6                 # shown rotated 90° clockwise: the white half on top
    path = tmp_path / "photo.jpg"
    img.save(path, exif=exif, quality=95)
    with Image.open(path) as im:
        arr = own.to_square(im, 16, 1)[..., 0]
    assert arr[1, 1] > 200 and arr[14, 1] < 50 and arr[1, 14] > 200


def _bad(tmp_path, fashion, make_params, mutate, dataset="mnist", stage="download", **limits):
    root = make_folder(tmp_path / "photos", fashion)
    mutate(root)
    params = _params(make_params, root, dataset, **limits)
    with pytest.raises(DataError) as err:
        acquire(dataset, params, tmp_path / "raw")
        prepare(dataset, params, tmp_path / "raw", tmp_path / "prepared")
    if stage == "download":
        assert not (tmp_path / "raw").exists()   # refused by the scan: not even the raw folder
    else:
        assert (tmp_path / "raw" / "SOURCE.json").is_file()
    assert not (tmp_path / "prepared").exists()
    assert "\n" not in str(err.value)
    return str(err.value), root


def test_empty_folder(tmp_path, make_params):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty: no images"):
        acquire("mnist", _params(make_params, tmp_path / "empty"), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def _empty_class(r: Path, *, holding: str = "") -> None:
    (r / "Wespen").mkdir()
    (r / "Wespen" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")   # hidden: not worth naming
    if holding:
        (r / "Wespen" / holding).write_bytes(b"GIF89a")


@pytest.mark.parametrize("holding, says", [
    ("", "a class folder without images; put its images in, remove the folder, or set "
         "datasets.mnist.skip_empty_classes: true to leave the class out"),
    ("wasp.gif", "a class folder without images (it holds only 1 file(s) without an image extension, e.g. 'wasp.gif'); "
                 "put its images in"),
])
def test_a_class_folder_without_images_stops_the_run(tmp_path, fashion, make_params, holding, says):
    msg, root = _bad(tmp_path, fashion, make_params, lambda r: _empty_class(r, holding=holding))
    assert msg.startswith(f"{root / 'Wespen'}: {says}"), msg


def test_an_empty_class_folder_in_one_split_is_named(tmp_path, fashion, make_params):
    root = make_folder(tmp_path / "photos", fashion, splits=("train", "val"))
    (root / "val" / "Wespen").mkdir()
    (root / "train" / "Wespen").mkdir()
    (root / "test").mkdir()
    with pytest.raises(DataError) as err:
        acquire("mnist", _params(make_params, root), tmp_path / "raw")
    assert str(err.value).startswith(f"{root / 'test'}: a split folder without images (and 2 more: train/Wespen, "
                                     "val/Wespen); put its images in, remove the folder, or set "
                                     "datasets.mnist.skip_empty_classes: true to leave it out")
    assert not (tmp_path / "raw").exists()


def test_empty_class_folders_can_be_left_out_and_listed(tmp_path, fashion, make_params, capsys):
    root = make_folder(tmp_path / "photos", fashion, splits=("train", "val"))
    (root / "val" / "Wespen").mkdir()   # the class has training images but an empty validation folder
    for i in range(3):
        Image.new("L", (28, 28), 40 * i).save(_mk(root / "train" / "Wespen") / f"w{i}.png")
    params = _params(make_params, root, skip_empty_classes=True)
    raw = tmp_path / "raw"
    record = acquire("mnist", params, raw, log=print)
    meta = prepare("mnist", params, raw, tmp_path / "prepared")
    assert record["folder"]["empty_folders"] == ["val/Wespen"] and record["folder"]["skipped_classes"] == ["Wespen"]
    assert record["folder"]["classes"] == sorted(CLASSES) == meta["classes"]
    assert not any("Wespen" in rel for rel in [f["path"] for f in record["folder"]["files"]])
    assert read_json(raw / "SOURCE.json")["folder"]["skipped_classes"] == ["Wespen"]
    assert meta["folder"]["empty_folders"] == ["val/Wespen"] and meta["folder"]["skipped_classes"] == ["Wespen"]
    assert "left out 1 folder(s) without images: val/Wespen" in capsys.readouterr().out


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def test_a_link_to_a_folder_inside_is_named_not_ignored(tmp_path, fashion, make_params):
    msg, root = _bad(tmp_path, fashion, make_params, lambda r: (r / "Wespen").symlink_to(r / CLASSES[0]))
    assert msg == (f"{root / 'Wespen'}: a symbolic link to the folder {(root / CLASSES[0]).resolve()}; links to "
                   "folders are not followed, move or copy the images in instead")


def test_single_class(tmp_path, fashion, make_params):
    msg, _ = _bad(tmp_path, fashion, make_params, lambda r: shutil.rmtree(r / CLASSES[1]))
    assert "only one class folder ('T-shirt top')" in msg and not (tmp_path / "raw").exists()


def test_class_with_too_few_images(tmp_path, fashion, make_params):
    def thin(r):
        for p in sorted((r / CLASSES[1]).iterdir())[:8]:
            p.unlink()
    msg, root = _bad(tmp_path, fashion, make_params, thin, test_limit=2)
    assert f"{root / CLASSES[1]}: 4 image(s), fewer than the splits need (2 validation + 4 training + 2 test)" in msg


def test_split_folders_with_different_classes(tmp_path, fashion, make_params):
    root = make_folder(tmp_path / "photos", fashion, splits=("train", "val"))
    (root / "val" / CLASSES[1]).rename(root / "val" / "Shirt")
    with pytest.raises(DataError, match=r"val/ holds classes \['Shirt', 'T-shirt top'\] but train/ holds"):
        acquire("mnist", _params(make_params, root), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


@pytest.mark.parametrize("content, says", [
    (b"hello", "5 bytes of text in no image format Pillow knows, starting b'hello'"),
    (b"", "an empty file (0 bytes)"),
    (b"PK\x03\x04" * 8, "32 bytes of data in no image format Pillow knows, starting "
                        "b'PK\\x03\\x04PK\\x03\\x04PK\\x03\\x04PK\\x03\\x04'"),
])
def test_file_that_is_not_an_image(tmp_path, fashion, make_params, content, says):
    msg, root = _bad(tmp_path, fashion, make_params, lambda r: (r / CLASSES[0] / "notes.jpg").write_bytes(content))
    assert msg == f"{root / CLASSES[0] / 'notes.jpg'}: not a readable image ({says})"


def test_truncated_png(tmp_path, fashion, make_params):
    def cut(r):
        p = r / CLASSES[1] / "bild_2_ä.png"
        p.write_bytes(p.read_bytes()[:-30])
    msg, root = _bad(tmp_path, fashion, make_params, cut)
    assert msg.startswith(f"{root / CLASSES[1] / 'bild_2_ä.png'}: not a readable image")


def test_truncated_jpeg_fails_in_preprocess_and_writes_nothing(tmp_path, fashion, make_params):
    def cut(r):
        p = r / CLASSES[0] / "img 1.jpg"
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])   # header intact: only decoding finds it
    msg, root = _bad(tmp_path, fashion, make_params, cut, stage="preprocess", train_limit=0, val_limit=2)
    assert msg.startswith(f"{root / CLASSES[0] / 'img 1.jpg'}: not a readable image (image file is truncated")


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height, enough for Pillow to open it (and check its size) without decoding."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [9500, 14000])   # over the limit; over twice the limit (Pillow raises there)
def test_decompression_bomb(tmp_path, fashion, make_params, side):
    msg, root = _bad(tmp_path, fashion, make_params, lambda r: (r / CLASSES[0] / "huge.png").write_bytes(_png_header(side, side)))
    assert msg == (f"{root / CLASSES[0] / 'huge.png'}: {side * side:,} pixels, over the limit of "
                   f"{Image.MAX_IMAGE_PIXELS:,} pixels that guards against decompression bombs "
                   "(PIL.Image.MAX_IMAGE_PIXELS); shrink the image")


def test_symlink_leaving_the_folder(tmp_path, fashion, make_params):
    outside = tmp_path / "elsewhere.png"
    Image.new("L", (28, 28)).save(outside)
    msg, root = _bad(tmp_path, fashion, make_params, lambda r: (r / CLASSES[0] / "link.png").symlink_to(outside))
    assert msg == (f"{root / CLASSES[0] / 'link.png'}: a symbolic link to {outside.resolve()}, outside {root}; "
                   "copy the file in instead")


def test_file_that_cannot_be_read(tmp_path, fashion, make_params):
    # A link to a file inside the folder that is not there: open() fails, as it would without permission.
    msg, root = _bad(tmp_path, fashion, make_params,
                     lambda r: (r / CLASSES[0] / "gone.png").symlink_to(r / CLASSES[0] / "missing-target.png"))
    assert msg.startswith(f"{root / CLASSES[0] / 'gone.png'}: cannot be read (")


def test_bad_files_can_be_skipped_and_listed(tmp_path, fashion, make_params):
    root = make_folder(tmp_path / "photos", fashion)
    (root / CLASSES[0] / "notes.jpg").write_text("hello")
    p = root / CLASSES[0] / "img 1.jpg"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    params = _params(make_params, root, skip_bad_images=True, train_limit=0, val_limit=2)
    record, meta, out = _run(params, tmp_path)
    assert [s["path"] for s in record["folder"]["skipped"]] == [f"{CLASSES[0]}/notes.jpg"]
    skipped = [s["path"] for s in meta["folder"]["skipped"]]
    assert skipped == [f"{CLASSES[0]}/notes.jpg", f"{CLASSES[0]}/img 1.jpg"]
    assert meta["splits"]["train"] + meta["splits"]["val"] == 23
    assert read_json(tmp_path / "raw" / "SOURCE.json")["folder"]["skipped"][0]["reason"].startswith("not a readable image")


def test_a_file_changed_after_download_is_refused(tmp_path, fashion, make_params):
    root = make_folder(tmp_path / "photos", fashion)
    params = _params(make_params, root)
    rel = acquire("mnist", params, tmp_path / "raw")["folder"]["splits"]["train"][0][0]
    Image.new("L", (28, 28), 255).save(root / rel)
    with pytest.raises(DataError, match=rf"{rel}: changed since the download stage listed it"):
        prepare("mnist", params, tmp_path / "raw", tmp_path / "prepared")
    assert not (tmp_path / "prepared").exists()
