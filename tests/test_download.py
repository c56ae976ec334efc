"""fetch() against a local server that misbehaves, and acquire()'s choice of source."""
from __future__ import annotations

import hashlib
import shutil
import time

import pytest

from pipelines.data import sources
from pipelines.data.download import fetch
from pipelines.errors import DataError, DownloadError, IntegrityError
from pipelines.io import read_json

import fakedata

BODY = b"published bytes " * 1000
SHA = hashlib.sha256(BODY).hexdigest()
FAST = dict(backoff_s=0.01, timeout_s=5)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_download(http_server, tmp_path):
    http_server.add("a/f.bin", ("ok", BODY))
    dest = fetch([http_server.base("a")], "f.bin", tmp_path, sha256=SHA, **FAST)
    assert dest == tmp_path / "f.bin" and dest.read_bytes() == BODY
    assert leftovers(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("kind", ["md5", "sha256_prefix"])
def test_other_digest_kinds(http_server, tmp_path, kind):
    http_server.add("a/f.bin", ("ok", BODY))
    digest = hashlib.md5(BODY).hexdigest() if kind == "md5" else SHA[:8]
    fetch([http_server.base("a")], "f.bin", tmp_path, **{kind: digest}, **FAST)
    assert (tmp_path / "f.bin").read_bytes() == BODY


def test_corrupt_is_refused_and_removed(http_server, tmp_path):
    bad = BODY[:-1] + b"!"
    http_server.add("a/f.bin", ("ok", bad))
    with pytest.raises(IntegrityError) as err:
        fetch([http_server.base("a")], "f.bin", tmp_path, sha256=SHA, **FAST)
    msg = str(err.value)
    assert "f.bin" in msg and SHA in msg and hashlib.sha256(bad).hexdigest() in msg
    assert "\n" not in msg
    assert leftovers(tmp_path) == []
    assert http_server.hits["a/f.bin"] == 1  # the same server would send the same bytes


def test_404_moves_to_next_mirror_without_retrying(http_server, tmp_path):
    http_server.add("b/f.bin", ("ok", BODY))
    dest = fetch([http_server.base("a"), http_server.base("b")], "f.bin", tmp_path, sha256=SHA,
                 retries=3, **FAST)
    assert dest.read_bytes() == BODY
    assert http_server.hits["a/f.bin"] == 1 and http_server.hits["b/f.bin"] == 1


def test_500_then_ok_is_retried(http_server, tmp_path):
    http_server.add("a/f.bin", ("status", 500), ("status", 503), ("ok", BODY))
    dest = fetch([http_server.base("a")], "f.bin", tmp_path, sha256=SHA, retries=3, **FAST)
    assert dest.read_bytes() == BODY and http_server.hits["a/f.bin"] == 3
    assert leftovers(tmp_path) == ["f.bin"]


def test_truncated_body_is_retried_then_reported(http_server, tmp_path):
    http_server.add("a/f.bin", ("truncated", BODY))
    with pytest.raises(DownloadError) as err:
        fetch([http_server.base("a")], "f.bin", tmp_path, sha256=SHA, retries=3, **FAST)
    msg = str(err.value)
    assert "truncated" in msg and http_server.hits["a/f.bin"] == 3
    assert leftovers(tmp_path) == []


def test_truncated_then_ok(http_server, tmp_path):
    http_server.add("a/f.bin", ("truncated", BODY), ("ok", BODY))
    assert fetch([http_server.base("a")], "f.bin", tmp_path, sha256=SHA, **FAST).read_bytes() == BODY


def test_stall_times_out_quickly(http_server, tmp_path):
    http_server.add("a/f.bin", ("stall", 30))
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        fetch([http_server.base("a")], "f.bin", tmp_path, sha256=SHA, retries=2, timeout_s=0.3,
              backoff_s=0.01)
    assert time.monotonic() - start < 5
    assert "timed out" in str(err.value) and http_server.hits["a/f.bin"] == 2
    assert leftovers(tmp_path) == []


def test_final_error_is_one_actionable_line(http_server, tmp_path):
    urls = [http_server.base("a"), http_server.base("b")]
    with pytest.raises(DownloadError) as err:
        fetch(urls, "f.bin", tmp_path / "raw", sha256=SHA, **FAST)
    msg = str(err.value)
    assert "\n" not in msg
    for part in ("f.bin", urls[0] + "f.bin", urls[1] + "f.bin", "HTTP 404", SHA,
                 f"put f.bin in {tmp_path / 'raw'}/", "sources.mirrors"):
        assert part in msg, part


def test_refused_connection_is_a_download_error(tmp_path):
    # Port 9 (discard) on localhost: nothing listens, the connection is refused at once.
    with pytest.raises(DownloadError, match="f.bin"):
        fetch(["http://127.0.0.1:9/"], "f.bin", tmp_path, sha256=SHA, retries=2, **FAST)
    assert leftovers(tmp_path) == []


# --- acquire(): present > mirror > system > network --------------------------------------

def test_acquire_order_fashion(fake_idx, tmp_path, make_params):
    names = list(sources.CHECKSUMS["fashion_mnist"])
    raw, mirror, system = tmp_path / "raw", tmp_path / "mirror", tmp_path / "system"
    for d in (raw, mirror, system):
        d.mkdir()
    shutil.copy(fake_idx / names[0], raw)       # present
    shutil.copy(fake_idx / names[1], mirror)    # mirror only
    shutil.copy(fake_idx / names[0], mirror)    # ... not used: present wins
    for n in names:                             # system holds everything
        shutil.copy(fake_idx / n, system)
    params = make_params({"protocol": "offline",
                          "sources": {"mirrors": [str(mirror)], "fashion_mnist_dir": str(system)}})
    rec = sources.acquire("mnist", params, raw)
    assert rec == read_json(raw / "SOURCE.json")
    assert (rec["dataset"], rec["source"], rec["protocol"]) == ("mnist", "fashion_mnist", "offline")
    origins = [rec["files"][n]["origin"] for n in names]
    assert origins[0] == "present"
    assert origins[1] == f"mirror:{(mirror / names[1]).resolve()}"
    assert origins[2:] == [f"system:{(system / n).resolve()}" for n in names[2:]]
    assert all(rec["files"][n]["verified"] == "md5 from torchvision" for n in names)
    assert all(rec["files"][n]["sha256"] == fakedata.sha256(raw / n) for n in names)
    assert sorted(p.name for p in raw.iterdir()) == sorted(names + ["SOURCE.json"])


def test_acquire_mirror_before_network(fake_idx, tmp_path, make_params, http_server):
    names = list(sources.CHECKSUMS["mnist"])
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(fake_idx / names[2], mirror)
    base = http_server.serve_dir("m", fake_idx)
    params = make_params({"protocol": "lab", "sources": {"mirrors": [str(mirror)], "mnist_urls": [base]}})
    rec = sources.acquire("mnist", params, tmp_path / "raw")
    assert rec["files"][names[2]]["origin"].startswith("mirror:")
    assert http_server.hits[f"m/{names[2]}"] == 0
    for n in names[:2] + names[3:]:
        assert rec["files"][n]["origin"] == f"url:{base}{n}"


def test_present_but_corrupt_is_replaced(fake_idx, tmp_path, make_params, http_server):
    names = list(sources.CHECKSUMS["mnist"])
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / names[0]).write_bytes(b"not the file")
    base = http_server.serve_dir("m", fake_idx)
    params = make_params({"protocol": "lab", "sources": {"mnist_urls": [base]}})
    rec = sources.acquire("mnist", params, raw)
    assert rec["files"][names[0]]["origin"].startswith("url:")
    assert (raw / names[0]).read_bytes() == (fake_idx / names[0]).read_bytes()


def test_corrupt_mirror_copy_is_an_integrity_error(fake_idx, tmp_path, make_params):
    name = next(iter(sources.CHECKSUMS["fashion_mnist"]))
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / name).write_bytes(b"tampered")
    params = make_params({"protocol": "offline", "sources": {"mirrors": [str(mirror)],
                                                             "fashion_mnist_dir": str(fake_idx)}})
    with pytest.raises(IntegrityError, match=str(mirror / name)):
        sources.acquire("mnist", params, tmp_path / "raw")
    assert not (tmp_path / "raw" / name).exists()


def test_fashion_without_system_copy_says_how_to_install(tmp_path, make_params):
    params = make_params({"protocol": "offline", "sources": {"fashion_mnist_dir": str(tmp_path / "none")}})
    with pytest.raises(DataError) as err:
        sources.acquire("mnist", params, tmp_path / "raw")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "lab protocol" in msg and "\n" not in msg


def test_network_failure_names_offline_remedy(tmp_path, make_params, http_server):
    params = make_params({"protocol": "lab", "sources": {"mnist_urls": [http_server.base("gone")],
                                                          "retries": 1}})
    with pytest.raises(DownloadError) as err:
        sources.acquire("mnist", params, tmp_path / "raw")
    msg = str(err.value)
    name = next(iter(sources.CHECKSUMS["mnist"]))
    assert f"put {name} in {tmp_path / 'raw'}/" in msg
    assert sources.CHECKSUMS["mnist"][name]["md5"] in msg


def test_real_debian_fashion_mnist_verifies(tmp_path, make_params):
    system = "/usr/share/datasets/fashion-mnist"
    names = list(sources.CHECKSUMS["fashion_mnist"])
    if not all((fakedata.Path(system) / n).is_file() for n in names):
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    params = make_params({"protocol": "offline", "sources": {"fashion_mnist_dir": system}})
    rec = sources.acquire("mnist", params, tmp_path / "raw")
    for n in names:
        # Debian recompresses the published .gz files, so torchvision's md5 holds only for
        # an upstream copy; the Debian one is checked against dpkg's record of the package.
        assert rec["files"][n]["verified"] in (
            "md5 from torchvision",
            sources.VERIFIED_DPKG.format(package="dataset-fashion-mnist")), rec["files"][n]
    # Running again keeps the verified copies.
    again = sources.acquire("mnist", params, tmp_path / "raw")
    assert all(again["files"][n]["origin"] == "present" for n in names)
    assert all(again["files"][n]["verified"] == rec["files"][n]["verified"] for n in names)
