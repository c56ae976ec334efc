"""Your own images as a dataset: a folder laid out as torchvision's ImageFolder.

    <folder>/<class>/<image>                      a seeded, stratified split from the dataset's limits
    <folder>/{train,val[,test]}/<class>/<image>   the split the folders give

`scan` (download stage) checks the layout and every file before anything is written and lists
each file with its sha256; `decode` (preprocess stage) reads the listed files, checks each digest
again, and decodes them (EXIF orientation applied, samples scaled to 8 bits by pipelines/data/pixels.py,
converted to the dataset's channels, shorter side resized and centre-cropped to image_size) straight
into one preallocated uint8 array, on several threads (Pillow releases the GIL while it decodes and
resizes). The split itself is planned by pipelines/data/splits.py.

Hidden files (a leading dot), Thumbs.db/desktop.ini and files without an image extension are
ignored and counted. Every bad input stops with one line naming the file or folder, a class folder
without images too (unless the dataset's skip_empty_classes leaves such classes out, listed).
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipelines.data import pixels
from pipelines.data.splits import SPLITS, plan_splits
from pipelines.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
JUNK = {"thumbs.db", "desktop.ini"}


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def describe(data: bytes) -> str:
    """What a file Pillow cannot identify holds, for the message: empty, or its size and first bytes."""
    if not data:
        return "an empty file (0 bytes)"
    head = data[:16]
    text = None
    for cut in range(4):   # the 16th byte may split a UTF-8 character
        try:
            text = head[:len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    kind = "text" if text and all(c.isprintable() or c in "\t\n\r" for c in text) else "data"
    return f"{len(data):,} bytes of {kind} in no image format Pillow knows, starting {head!r}"


def _open(path: Path, data: bytes) -> Image.Image:
    """Pillow image of `data` (the bytes of `path`), or DataError naming the file."""
    try:
        with warnings.catch_warnings():
            # Over Pillow's limit (MAX_IMAGE_PIXELS) is refused, not merely warned about.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.size  # noqa: B018 -- the header is parsed here
            return img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Pillow's own text quotes twice the limit when it raises rather than warns; say the one that holds.
        m = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(m.group(1)):,} pixels, " if m else ""
        raise DataError(f"{path}: {size}over the limit of {Image.MAX_IMAGE_PIXELS:,} pixels that guards against "
                        "decompression bombs (PIL.Image.MAX_IMAGE_PIXELS); shrink the image") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image ({describe(data)})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{path}: not a readable image ({err})") from None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot be read ({err.strerror or err})") from None


def _walk(root: Path, counts: dict[str, int]) -> tuple[list[Path], list[Path]]:
    """Every candidate image file under root, and every folder (both sorted), refusing links that leave it."""
    real_root = root.resolve()
    found, folders = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for d in list(dirnames):
            p = here / d
            if d.startswith("."):
                dirnames.remove(d)
                counts["hidden"] += 1
            elif p.is_symlink():
                target = p.resolve()
                if not target.is_relative_to(real_root):
                    raise DataError(f"{p}: a symbolic link to {target}, outside {root}; copy the files in instead")
                raise DataError(f"{p}: a symbolic link to the folder {target}; links to folders are not followed, "
                                "move or copy the images in instead")
            else:
                folders.append(p)
        for f in filenames:
            p = here / f
            if f.startswith("."):
                counts["hidden"] += 1
                continue
            if f.lower() in JUNK or not _is_image_name(f):
                counts["not_image"] += 1
                continue
            if p.is_symlink():
                target = p.resolve()
                if not target.is_relative_to(real_root):
                    raise DataError(f"{p}: a symbolic link to {target}, outside {root}; copy the file in instead")
            found.append(p)
    return sorted(found), sorted(folders)


def _empty_folders(root: Path, files: list[Path], folders: list[Path]) -> list[tuple[str, Optional[str]]]:
    """(relative folder, its class or None for a split folder) of every class folder, and every split
    folder, that holds no image: where the layout puts classes, <class>/ or <split>/<class>/."""
    top = {p.relative_to(root).parts[0] for p in files}
    splits = bool(top) and top <= set(SPLITS)
    used = {p.relative_to(root).parts[:k] for p in files for k in (1, 2)}
    empty = []
    for d in folders:
        parts = d.relative_to(root).parts
        if parts in used:
            continue
        if splits and len(parts) == 1 and parts[0] in SPLITS:
            empty.append((parts[0], None))
        elif len(parts) == (2 if splits else 1) and (not splits or parts[0] in SPLITS):
            empty.append(("/".join(parts), parts[-1]))
    return empty


def _refuse_empty(root: Path, empty: list[tuple[str, Optional[str]]], setting: str) -> None:
    rel, cls = empty[0]
    others = [f.name for f in sorted((root / rel).iterdir()) if f.is_file() and not f.name.startswith(".")]
    holds = f" (it holds only {len(others)} file(s) without an image extension, e.g. {others[0]!r})" if others else ""
    more = f" (and {len(empty) - 1} more: {', '.join(r for r, _ in empty[1:4])}{' …' if len(empty) > 4 else ''})" \
        if len(empty) > 1 else ""
    what = "class folder" if cls else "split folder"
    raise DataError(f"{root / rel}: a {what} without images{holds}{more}; put its images in, remove the folder, "
                    f"or set {setting}: true to leave {'the class' if cls else 'it'} out")


def _layout(root: Path, files: list[Path]) -> tuple[str, dict[str, dict[str, list[Path]]]]:
    """('splits' | 'classes', {split: {class: [files]}}); split '' for a folder without split folders."""
    top = {p.relative_to(root).parts[0] for p in files}
    by: dict[str, dict[str, list[Path]]] = {}
    if top and top <= set(SPLITS):
        layout = "splits"
        for p in files:
            parts = p.relative_to(root).parts
            if len(parts) != 3:
                raise DataError(f"{p}: expected <split>/<class>/<image> under {root}")
            by.setdefault(parts[0], {}).setdefault(parts[1], []).append(p)
        for s in ("train", "val"):
            if s not in by:
                raise DataError(f"{root}: has {', '.join(sorted(top))}/ but no {s}/; split folders need train/ and val/ "
                                "(test/ is optional), or put the class folders directly in it")
        classes = {s: sorted(c) for s, c in by.items()}
        ref = classes["train"]
        for s, cs in classes.items():
            if cs != ref:
                raise DataError(f"{root}: {s}/ holds classes {cs} but train/ holds {ref}; every split folder "
                                "needs the same class folders")
    else:
        layout = "classes"
        for p in files:
            parts = p.relative_to(root).parts
            if len(parts) != 2:
                raise DataError(f"{p}: expected <class>/<image> (or <split>/<class>/<image>) under {root}")
            by.setdefault("", {}).setdefault(parts[0], []).append(p)
    return layout, by


def scan(root: Path | str, train_limit: int, val_limit: int, test_limit: Optional[int], seed: int,
         skip_bad: bool = False, skip_empty: bool = False, setting: str = "skip_empty_classes") -> dict:
    """Check a folder and plan its splits; the SOURCE.json record of it (every file with its sha256).
    A class folder without images stops it, naming the folder, unless `skip_empty` (the params
    `setting`) leaves those classes out, in every split, and lists them."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    counts = {"hidden": 0, "not_image": 0}
    files, folders = _walk(root, counts)
    if not files:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTS)}) in it or in its class folders")
    empty = _empty_folders(root, files, folders)
    if empty and not skip_empty:
        _refuse_empty(root, empty, setting)
    left_out = sorted({c for _, c in empty if c})
    class_level = {root, *(root / s for s in SPLITS)}
    files = [p for p in files if not (p.parent.name in left_out and p.parent.parent in class_level)]
    layout, by = _layout(root, files)
    classes = sorted({c for split in by.values() for c in split})
    if len(classes) < 2:
        raise DataError(f"{root}: only one class folder ({classes[0]!r}); a classifier needs two or more")
    entries, skipped, digest = [], [], hashlib.sha256()
    bad: set[Path] = set()
    for p in files:
        data = _read(p)
        try:
            img = _open(p, data)
            pixels.samples(img, p)   # a sample format no scale fits is refused here, before anything is written
            if img.format == "PNG":
                img.verify()   # checks the PNG chunks' CRCs without decoding
        except Exception as err:   # _open's DataError, or whatever verify()'s plugin raises
            reason = str(err).split(": ", 1)[-1] if isinstance(err, DataError) else f"not a readable image ({err})"
            if not skip_bad:
                raise err if isinstance(err, DataError) else DataError(f"{p}: {reason}") from None
            skipped.append({"path": str(p.relative_to(root)), "reason": reason})
            bad.add(p)
            continue
        sha = hashlib.sha256(data).hexdigest()
        rel = str(p.relative_to(root))
        entries.append({"path": rel, "sha256": sha, "bytes": len(data)})
        digest.update(f"{rel}\0{sha}\n".encode())
    if bad:
        by = {s: {c: [p for p in fs if p not in bad] for c, fs in cs.items()} for s, cs in by.items()}
    plan = plan_splits(root, layout, by, classes, train_limit, val_limit, test_limit, seed)
    splits = {s: [[str(p.relative_to(root)), k] for p, k in items] for s, items in plan.items() if items}
    return {"path": str(root.resolve()), "layout": layout, "classes": classes, "files": entries,
            "digest": digest.hexdigest(), "ignored": counts, "skipped": skipped,
            "empty_folders": [r for r, _ in empty], "skipped_classes": left_out, "splits": splits}


# ---------------------------------------------------------------- decoding

def to_square(img: Image.Image, size: int, channels: int, where: Path | str = "image") -> np.ndarray:
    """EXIF-upright, 8-bit (pipelines/data/pixels.py), gray or RGB as `channels`, shorter side resized
    to `size` (antialiased), centre crop."""
    how = pixels.samples(img, where)   # read from the file as opened, before the copies below
    if img.format == "JPEG":
        img.draft("L" if channels == 1 else "RGB", (size, size))   # decode at a reduced scale when it can
    img = ImageOps.exif_transpose(img)
    img = pixels.to_8bit(img, how, where).convert("L" if channels == 1 else "RGB")
    w, h = img.size
    if w <= h:
        nw, nh = size, max(size, round(size * h / w))
    else:
        nw, nh = max(size, round(size * w / h)), size
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return arr[..., None] if channels == 1 else arr


def decode(root: Path, items: list[tuple[str, int]], sha256: dict[str, str], size: int, channels: int,
           skip_bad: bool = False, threads: int = 0) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(uint8 N×size×size×channels, int64 labels, skipped files) of the listed files, each checked
    against its recorded sha256 first. Decoded in parallel into one preallocated array."""
    x = np.empty((len(items), size, size, channels), dtype=np.uint8)
    ok = np.ones(len(items), dtype=bool)
    skipped: list[dict] = []

    def one(i: int) -> Optional[dict]:
        rel = items[i][0]
        path = root / rel
        data = _read(path)
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256[rel]:
            raise DataError(f"{path}: changed since the download stage listed it (sha256 {actual}, listed "
                            f"{sha256[rel]}); rerun `dvc repro`")
        try:
            with _open(path, data) as img:
                x[i] = to_square(img, size, channels, path)
        except (DataError, OSError, SyntaxError, ValueError) as err:
            msg = str(err) if isinstance(err, DataError) else f"{path}: not a readable image ({err})"
            if not skip_bad:
                raise DataError(msg) from None
            ok[i] = False
            return {"path": rel, "reason": msg.split(": ", 1)[-1]}
        return None

    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for res in pool.map(one, range(len(items)), chunksize=64):
            if res is not None:
                skipped.append(res)
    y = np.array([k for _, k in items], dtype=np.int64)
    if not ok.all():
        x, y = x[ok], y[ok]
    return x, y, skipped
