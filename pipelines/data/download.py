"""Fetch one published file over HTTP(S), verified, with nothing partial ever left behind.

Only the standard library is used so a download behaves the same on every machine (no
requests/urllib3 version differences), and the code path the tests exercise against a local
server is exactly the one that talks to the real mirrors.
"""
from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional, Sequence

from pipelines.errors import DownloadError
from pipelines.io import atomic_path, verify_digest

CHUNK = 1 << 20
USER_AGENT = "cnn-lab-pipeline/1 (python urllib)"


class _Retryable(Exception):
    """A failure that a later attempt at the same URL may not repeat."""


class _NextUrl(Exception):
    """A failure this URL will keep giving (404 and other client errors): try the next one."""


def _expected_text(sha256: Optional[str], md5: Optional[str], sha256_prefix: Optional[str]) -> str:
    if sha256:
        return f"sha256 {sha256}"
    if md5:
        return f"md5 {md5}"
    if sha256_prefix:
        return f"sha256 starting {sha256_prefix}"
    return "no digest (trust on first use)"


def _attempt(url: str, tmp: Path, timeout_s: float) -> None:
    """GET url into tmp. Raises _Retryable/_NextUrl."""
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            declared = resp.headers.get("Content-Length")
            received = 0
            with open(tmp, "wb") as f:
                while block := resp.read(CHUNK):
                    f.write(block)
                    received += len(block)
            # http.client does not raise when the connection closes early on a sized read,
            # so a short body has to be detected here or it would reach the digest check as
            # a "corrupt" file instead of being retried.
            if declared is not None and declared.isdigit() and received != int(declared):
                raise _Retryable(f"truncated body ({received} of {declared} bytes)")
    except urllib.error.HTTPError as err:
        if err.code >= 500 or err.code in (408, 429):
            raise _Retryable(f"HTTP {err.code}") from None
        raise _NextUrl(f"HTTP {err.code}") from None
    except urllib.error.URLError as err:
        raise _Retryable(f"{type(err.reason).__name__}: {err.reason}") from None
    except TimeoutError:
        raise _Retryable(f"timed out after {timeout_s:g} s") from None
    except (OSError, http.client.HTTPException) as err:
        raise _Retryable(f"{type(err).__name__}: {err}") from None


def fetch(urls: Sequence[str], filename: str, dest_dir: Path | str, **options) -> Path:
    """fetch_from() without the URL that served the file."""
    return fetch_from(urls, filename, dest_dir, **options)[0]


def fetch_from(
    urls: Sequence[str],
    filename: str,
    dest_dir: Path | str,
    *,
    sha256: Optional[str] = None,
    md5: Optional[str] = None,
    sha256_prefix: Optional[str] = None,
    retries: int = 3,
    timeout_s: float = 30,
    backoff_s: float = 1.0,
    log: Callable[[str], None] = lambda msg: None,
) -> tuple[Path, str]:
    """Download base+filename for the first base URL that serves it; return (dest_dir/filename, URL).

    `retries` is the number of attempts per URL for transient failures (connection errors,
    timeouts, 5xx, truncated bodies), spaced backoff_s, 2*backoff_s, ... apart. A digest
    mismatch is not retried: the same server would send the same bytes, and a mirror serving
    different bytes for a checksummed file is a problem to report, not to route around.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / filename
    expected = _expected_text(sha256, md5, sha256_prefix)
    spec = {"sha256": sha256, "md5": md5, "sha256_prefix": sha256_prefix}
    hint = (f"to provide it offline put {filename} in {dest_dir}/ "
            f"or a folder listed in params sources.mirrors")
    if not urls:
        raise DownloadError(f"{filename}: no URL configured; expected {expected}; {hint}")

    tried: list[str] = []
    reason = "not attempted"
    for base in urls:
        url = base + filename
        tried.append(url)
        for attempt in range(max(1, retries)):
            if attempt:
                time.sleep(backoff_s * 2 ** (attempt - 1))
            try:
                with atomic_path(dest) as tmp:
                    log(f"  {filename}: GET {url}" + (f" (attempt {attempt + 1})" if attempt else ""))
                    _attempt(url, tmp, timeout_s)
                    verify_digest(tmp, spec, "the file was discarded", label=f"{filename} from {url}")
                return dest, url
            except _Retryable as err:
                reason = f"{url}: {err}"
            except _NextUrl as err:
                reason = f"{url}: {err}"
                break
    raise DownloadError(
        f"could not download {filename} (tried {', '.join(tried)}; last: {reason}); "
        f"expected {expected}; {hint}")
