"""The golden workspace: a fixed tiny-profile run's report inputs, the report built from them, and
canonical digests of every metrics file that run wrote.

Rebuild from a finished tiny-profile run (only when an output is meant to change, and say why in the
commit):

    python tests/golden_files.py <root of a finished tiny run>
    python tests/golden_files.py --report-only    # the report's code changed: rebuild report.md/html only

It copies the run's params.yaml and reference.yaml, every `data/prepared/*/{meta.json,sizes.csv}`, `metrics/` and every CSV
under `results/` into tests/golden/workspace, replaces each figure by a tiny PNG of its own (the
report only inlines figure bytes), writes the report built from that workspace, and records the
digests of the run's metrics files for tests/test_pipeline.py. Then run `make docs`: the table of
docs/testing.md is made from this workspace (tests/test_docs.py checks it).
"""
from __future__ import annotations

import csv
import hashlib
import io as _stdio
import json
import platform
import shutil
import struct
import sys
import tempfile
import zlib
from datetime import datetime, timezone
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent / "golden"
WORKSPACE = GOLDEN / "workspace"
NOW = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)   # the report's "Generated" line
# Keys whose values are wall-clock times, throughputs or store identities: they differ between two
# runs of the same code on the same machine, so the digests leave them out. So does openTSNE's final
# KL divergence: its last digits follow the threads' summation order (the map itself is identical).
VOLATILE_SUFFIXES = ("seconds", "seconds_here", "img_per_s", "gflop_per_s", "pct_of_peak", "run_id", "kl_divergence")
VOLATILE_KEYS = {"experiment_id", "tracking_uri", "clock"}   # clock: the stage process's start and end times


def volatile(key: str) -> bool:
    return key in VOLATILE_KEYS or key.endswith(VOLATILE_SUFFIXES)


def _strip(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if not volatile(k)}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def canonical(path: Path) -> bytes:
    """A metrics file's content without its volatile values: JSON re-dumped without those keys,
    CSV without those columns, any other file as it is."""
    if path.suffix == ".json":
        return json.dumps(_strip(json.loads(path.read_text())), sort_keys=True, indent=1).encode()
    if path.suffix == ".csv":
        rows = list(csv.reader(path.read_text().splitlines()))
        if not rows:
            return b""
        keep = [i for i, h in enumerate(rows[0]) if not volatile(h)]
        out = _stdio.StringIO()
        csv.writer(out, lineterminator="\n").writerows([[r[i] for i in keep] for r in rows])
        return out.getvalue().encode()
    return path.read_bytes()


def metrics_files(root: Path) -> list[Path]:
    """Every JSON and CSV file a run wrote under metrics/ and results/, relative to root."""
    return sorted(p.relative_to(root) for d in ("metrics", "results") for p in (root / d).rglob("*")
                  if p.is_file() and p.suffix in (".json", ".csv"))


def digests(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(canonical(root / p)).hexdigest() for p in metrics_files(root)}


def cpu_signature() -> dict:
    """What decides a run's floating-point results here: the CPU's model and vector extensions,
    the core count and torch's version."""
    import torch

    from pipelines import hardware
    cpu = hardware.cpu()
    model, flags = cpu.model, cpu.flags
    isa = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))
    return {"machine": platform.machine(), "cpu": model, "isa": isa, "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def tiny_png(name: str) -> bytes:
    """A valid 1x1 grey PNG whose bytes name the figure it stands for."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"tEXt", b"Title\x00" + name.encode()) + chunk(b"IDAT", zlib.compress(b"\x00\x80", 9))
            + chunk(b"IEND", b""))


def _copy_inputs(run: Path) -> None:
    if WORKSPACE.exists():
        shutil.rmtree(WORKSPACE)
    WORKSPACE.mkdir(parents=True)
    for name in ("params.yaml", "reference.yaml"):
        shutil.copy(run / name, WORKSPACE / name)
    for f in sorted((run / "data" / "prepared").glob("*/*")):
        if f.name in ("meta.json", "sizes.csv"):
            dst = WORKSPACE / f.relative_to(run)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst)
    for d in ("metrics", "results"):
        for f in sorted((run / d).rglob("*")):
            if not f.is_file() or f.suffix not in (".json", ".csv", ".png"):
                continue
            dst = WORKSPACE / f.relative_to(run)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if f.suffix == ".png":
                dst.write_bytes(tiny_png(str(f.relative_to(run))))
            else:
                shutil.copy(f, dst)


def main(run: Path | None) -> None:
    """Rebuild from the finished tiny run `run`; with None, only the report from today's workspace (the
    report's code changed, the run's outputs did not)."""
    sys.path.insert(0, str(GOLDEN.parents[1]))
    import test_golden   # the one place that knows how to build the report from a workspace

    if run is not None:
        _copy_inputs(run)
    with tempfile.TemporaryDirectory() as tmp:   # outside any git checkout, as in the test
        ws = Path(tmp) / "ws"
        shutil.copytree(WORKSPACE, ws)
        md, page = test_golden.build_report(ws, Path(tmp) / "out")
    (GOLDEN / "report.md").write_text(md)
    (GOLDEN / "report.html").write_text(page)
    if run is None:
        return
    (GOLDEN / "metrics.json").write_text(json.dumps({"cpu": cpu_signature(), "files": digests(run)}, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tests/golden_files.py <finished tiny run> | --report-only")
    main(None if sys.argv[1] == "--report-only" else Path(sys.argv[1]).resolve())
