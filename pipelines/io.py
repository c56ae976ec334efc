"""Atomic file output, digests and the code version: every file a stage writes goes through here.

A file is written beside its destination under a temporary name and renamed into place only
once complete, so a kill, a full disk or an exception never leaves a half-written output
(`atomic_path` for a file, `atomic_dir` for a folder). `verify_digest` is the one check of a file
against its md5/sha256, and `git_commit` the one lookup of the code version.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

from pipelines.errors import IntegrityError, StageError

# A write that fails for lack of room is the machine's state, not a bug: one line, not a traceback.
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def _no_room(err: OSError, path: Path) -> StageError:
    return StageError(f"{path}: cannot be written ({os.strerror(err.errno)}); "
                      "free some space (or raise the file size limit) and run again")


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` if the block succeeds. A full disk
    (or file size limit, or read-only file system) is a StageError naming `path`, the old file intact."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; outputs are ordinary files others may read.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:
        if err.errno in NO_ROOM:
            raise _no_room(err, path) from err
        raise
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; swap it in for `path` if the block succeeds.
    The old folder is removed only after the new one is in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the published folder should look ordinary
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", suffix=".tmp", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# The temporary names above: "." + the output's name + "." + mkstemp's 8 random characters + ".tmp"
# (".old." before them for the folder being replaced; without ".tmp" in earlier versions).
_RANDOM = r"[a-z0-9_]{8}"


def _temp_pattern(name: str) -> re.Pattern:
    """The temporary names of an output named `name` (a regular expression)."""
    return re.compile(rf"\.{name}\.(?:old\.)?{_RANDOM}\.tmp|\.{name}\.old\.{_RANDOM}")


ANY_TEMP = _temp_pattern(".+")


def remove_stale_temps(outputs: Iterable[Path | str | None], log: Callable[[str], None] = lambda msg: None) -> list[Path]:
    """Remove what a killed atomic_path/atomic_dir left of these outputs: temporary names of each one
    beside it, and any temporary name inside it when it is a folder. Nothing else is touched: another
    output's temporary files, a user's files, or names that merely end in .tmp stay. Run by every stage
    as it starts (a kill -9 runs no cleanup of its own); returns what was removed."""
    removed = []

    def drop(p: Path) -> None:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
        log(f"removed {p}, left by an interrupted run")

    for out in outputs:
        if out is None:
            continue
        out = Path(out)
        if out.parent.is_dir():
            own = _temp_pattern(re.escape(out.name))
            for p in sorted(out.parent.iterdir()):
                if own.fullmatch(p.name):
                    drop(p)
        if out.is_dir() and not out.is_symlink():
            for dirpath, dirnames, filenames in os.walk(out):
                for name in sorted(dirnames + filenames):
                    if ANY_TEMP.fullmatch(name):
                        drop(Path(dirpath) / name)
                dirnames[:] = [d for d in dirnames if not ANY_TEMP.fullmatch(d)]
    return removed


def write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path | str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path | str) -> dict:
    with open(path) as f:
        return json.load(f)


def write_csv(path: Path | str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    write_text(path, buf.getvalue())


def read_csv(path: Path | str) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def save_npz(path: Path | str, **arrays: np.ndarray) -> None:
    """An .npz (what np.load reads) whose bytes depend only on the arrays: np.savez stamps each
    member with the current time, which would change the file's digest, and so rerun every DVC
    stage downstream, whenever the same data are prepared again."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, arr in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with zf.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)


def load_npz(path: Path | str) -> dict[str, np.ndarray]:
    # allow_pickle=False: a prepared array file can never execute code when read.
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def file_digest(path: Path | str, algo: str = "sha256", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: Path | str) -> str:
    return file_digest(path, "sha256")


def md5_file(path: Path | str) -> str:
    return file_digest(path, "md5")


def digest_mismatch(path: Path | str, spec: Mapping[str, Optional[str]]) -> Optional[str]:
    """None when the file has the digests `spec` names (keys md5, sha256, sha256_prefix; None or
    absent: not checked), else '<algo> <actual>, expected <wanted>' for the first that differs."""
    if spec.get("md5"):
        got = md5_file(path)
        if got != spec["md5"]:
            return f"md5 {got}, expected {spec['md5']}"
    if spec.get("sha256") or spec.get("sha256_prefix"):
        got = sha256_file(path)
        if spec.get("sha256") and got != spec["sha256"]:
            return f"sha256 {got}, expected {spec['sha256']}"
        if spec.get("sha256_prefix") and not got.startswith(spec["sha256_prefix"]):
            return f"sha256 {got}, expected one starting {spec['sha256_prefix']}"
    return None


def verify_digest(path: Path | str, spec: Mapping[str, Optional[str]], fix: str,
                  label: Optional[str] = None) -> None:
    """IntegrityError '<label or path>: <algo> <actual>, expected <wanted>; <fix>' unless the file
    has the digests `spec` names (see digest_mismatch)."""
    if bad := digest_mismatch(path, spec):
        raise IntegrityError(f"{label or path}: {bad}; {fix}")


def verify_sha256(path: Path | str, expected: str, fix: str) -> None:
    verify_digest(path, {"sha256": expected}, fix)


def git_commit(root: Path | str, short: bool = False, mark_dirty: bool = False) -> Optional[str]:
    """The commit checked out at `root` (abbreviated if short; '-dirty' appended when mark_dirty and
    tracked files differ from it), or None outside a git checkout or without git."""
    # GIT_OPTIONAL_LOCKS=0: `git status` must not take the index lock from a concurrent commit.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    run = dict(cwd=root, capture_output=True, text=True, timeout=10, env=env)
    try:
        out = subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"], **run)
        if out.returncode != 0 or not out.stdout.strip():
            return None
        dirty = mark_dirty and subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                              **run).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty else "")
