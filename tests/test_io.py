"""pipelines/io.py: the one digest check, the atomic folder swap and the code-version lookup."""
import hashlib
import subprocess

import pytest

from pipelines import io
from pipelines.errors import BAD_INPUT, IntegrityError


def test_verify_digest_names_the_file_both_digests_and_the_fix(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"hello")
    sha, md5 = hashlib.sha256(b"hello").hexdigest(), hashlib.md5(b"hello").hexdigest()
    io.verify_digest(f, {"sha256": sha}, "unused")
    io.verify_digest(f, {"md5": md5, "sha256": None}, "unused")
    io.verify_digest(f, {"sha256_prefix": sha[:8]}, "unused")
    io.verify_digest(f, {}, "unused")   # nothing recorded: nothing to check
    with pytest.raises(IntegrityError) as err:
        io.verify_digest(f, {"sha256": "0" * 64}, "fetch it again")
    assert str(err.value) == f"{f}: sha256 {sha}, expected {'0' * 64}; fetch it again"
    assert err.value.exit_code == BAD_INPUT
    with pytest.raises(IntegrityError, match=f"^a.bin from mirror: md5 {md5}, expected 1; gone$"):
        io.verify_digest(f, {"md5": "1"}, "gone", label="a.bin from mirror")
    assert io.digest_mismatch(f, {"sha256_prefix": "ffff"}) == f"sha256 {sha}, expected one starting ffff"


def test_atomic_dir_swaps_a_complete_folder_in_and_keeps_the_old_one_on_failure(tmp_path):
    out = tmp_path / "prepared"
    with io.atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("one")
    assert (out / "a.txt").read_text() == "one" and oct(out.stat().st_mode & 0o777) == "0o755"
    with pytest.raises(RuntimeError, match="half way"):
        with io.atomic_dir(out) as tmp:
            (tmp / "a.txt").write_text("two")
            raise RuntimeError("half way")
    assert (out / "a.txt").read_text() == "one"
    with io.atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("three")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]   # no temporary folder left


def test_git_commit_short_full_dirty_and_outside_a_checkout(tmp_path):
    assert io.git_commit(tmp_path) is None
    git = ["git", "-c", "user.email=t@localhost", "-c", "user.name=t"]
    (tmp_path / "f.txt").write_text("1")
    for cmd in (["git", "init", "-q"], git + ["add", "f.txt"], git + ["commit", "-qm", "x"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    full = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert io.git_commit(tmp_path) == io.git_commit(tmp_path, mark_dirty=True) == full
    short = io.git_commit(tmp_path, short=True)
    assert full.startswith(short) and 4 <= len(short) < len(full)
    (tmp_path / "f.txt").write_text("2")
    assert io.git_commit(tmp_path, mark_dirty=True) == full + "-dirty"
    assert io.git_commit(tmp_path, short=True) == short   # the report's code version is not marked
