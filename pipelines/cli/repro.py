"""The main job: choose the protocol, then `dvc repro` the whole lab.

    python -m pipelines.cli.repro                    # lab protocol if its sources can be had, else offline
    python -m pipelines.cli.repro --protocol offline # force one; extra arguments go to `dvc repro`
    python -m pipelines.cli.repro --data transfer=~/photos   # your own image folder for a dataset (builtin: back)
    python -m pipelines.cli.repro --part 1.1         # one part of the lab (1.1, 1.2, 1.3 or transfer), then the report
    python -m pipelines.cli.repro --part report      # the report alone, from whatever has run (the rest: "not run")

Before each stage it prints where the run is (stage k of n, elapsed, an estimate of what is left:
pipelines/cli/progress.py); the last line gives the whole run's time against its arithmetic floor.

Exit status: 0 when `dvc repro` succeeded, 1 when it failed (the failing stage's `error:` line says why),
2 when an argument or params.yaml is bad (pipelines/errors.py).

The choice is written to params.yaml (`protocol:`), so DVC's cache and every MLflow run know
which data a result came from; it is printed with its reason before any stage runs.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from pipelines import config
from pipelines.cli import progress
from pipelines.errors import FAILURE, OK, LabError, ParamsError, one_line
from pipelines.reference import PART_ALIASES

PROBE_TIMEOUT_S = 5


def _lab_file_available(name: str, key: str, rel: str, params: config.Params) -> str | None:
    """Why this lab-protocol file can be had, or None."""
    from pipelines.data.sources import urls_for

    filename = Path(rel).name
    # A file already downloaded counts only if SOURCE.json says it is this source's (the same
    # file names hold Fashion-MNIST in the offline protocol).
    record = Path("data/raw") / name / "SOURCE.json"
    if record.is_file() and (Path("data/raw") / name / rel).is_file():
        from pipelines.io import read_json

        if read_json(record).get("source") == key or rel.startswith("weights/"):
            return f"data/raw/{name}/{rel} present"
    for mirror in params.sources.mirrors:
        if (Path(mirror) / filename).is_file():
            return f"mirror {mirror}"
    last = "no URL configured"
    for base in urls_for(key, params):
        # GET without reading the body: some servers (and mirrors) answer HEAD with 405/501.
        req = urllib.request.Request(base + filename)
        try:
            with urllib.request.urlopen(req, timeout=PROBE_TIMEOUT_S):
                return f"{base} reachable"
        except urllib.error.HTTPError as e:
            last = f"{base}{filename}: HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            last = f"{base}: {getattr(e, 'reason', e)}"
    raise LookupError(last)


def choose_protocol(params: config.Params) -> tuple[str, str]:
    """('lab' | 'offline', reason): lab when every lab-protocol file (the lab's published data) is
    present or reachable."""
    from pipelines.data.sources import files_for

    lab_params = params.model_copy(update={"protocol": "lab"})
    for name in params.datasets:
        for key, rel in files_for(name, lab_params):
            try:
                _lab_file_available(name, key, rel, params)
            except LookupError as e:
                return "offline", f"lab-protocol file {Path(rel).name} ({name}) cannot be had: {e}"
    return "lab", "every lab-protocol file is present, mirrored or reachable"


def set_protocol(path: Path, protocol: str) -> bool:
    """Rewrite the `protocol:` line of params.yaml in place (comments kept); True if it changed."""
    text = path.read_text()
    new, n = re.subn(r"(?m)^protocol:\s*\S+", f"protocol: {protocol}", text, count=1)
    if n != 1:
        raise ParamsError(f"{path}: no top-level 'protocol:' line to set")
    if new == text:
        return False
    from pipelines.io import write_text

    write_text(path, new)
    return True


def set_folder(path: Path, dataset: str, folder: str) -> str:
    """Rewrite datasets.<dataset>.folder in params.yaml in place (comments kept); return the value written.
    `builtin` restores the built-in sources; a folder is written as an absolute path."""
    params = config.load(path)
    params.dataset(dataset)   # one line naming the allowed datasets when unknown
    if folder == "builtin":
        value = config.BUILTIN_SOURCES
    else:
        target = Path(folder).expanduser().resolve()
        if not target.is_dir():
            raise ParamsError(f"--data {dataset}={folder}: {target} is not a folder")
        value = str(target)
    text = path.read_text()
    block = re.search(rf"(?m)^  {re.escape(dataset)}:.*\n((?:    .*\n|\s*\n)*)", text)
    line = re.compile(r"(?m)^(    folder:[ \t]*)(\S.*?)([ \t]+#.*)?$")
    m = line.search(text, block.start(1), block.end(1)) if block else None
    if m is None:
        raise ParamsError(f"{path}: datasets.{dataset} has no 'folder:' line to set")
    quoted = value if re.fullmatch(r"[\w./-]+", value) else '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    new = text[:m.start(2)] + quoted + text[m.end(2):]
    if new != text:
        from pipelines.io import write_text

        write_text(path, new)
    config.load(path)
    return value


def _apply_data_options(specs: list[str]) -> config.Params:
    """Write each --data DATASET=FOLDER into params.yaml; return the params then in force."""
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise ParamsError(f"--data {spec!r}: expected DATASET=FOLDER, e.g. transfer=~/photos")
        value = set_folder(config.PARAMS_FILE, name, folder)
        print(f"data: {name} reads {value}; params.yaml updated", flush=True)
    return config.load()


PARTS = ("1.1", "1.2", "1.3", "transfer", "report")


def repro_commands(params: config.Params, parts: list[str], extra: list[str]) -> list[list[str]]:
    """The `dvc repro` calls for `--part`: the stages of the named parts (reference.yaml `parts` says
    which variants each has; the transfer options bring their replicates), then the report alone
    (`-s`: without rerunning the parts not named). No part: the whole lab."""
    if not parts:
        return [["dvc", "repro", *extra]]
    stages: list[str] = []
    for part in dict.fromkeys(PART_ALIASES.get(p, p) for p in parts):   # "transfer" is "1.3"; each once
        if part == "report":
            continue
        variants = params.reference.parts.of_part(part)
        if not variants:
            raise ParamsError(f"--part {part}: reference.yaml (`parts`) names no variant for it")
        rep = params.replicates
        for v in variants:
            stages += [f"{stage}@{v}" for stage in ("train", "evaluate", "embed")]
            if rep is not None and v in rep.variants:
                stages += [f"replicate@{v}-{seed}" for seed in rep.seeds]
    return ([["dvc", "repro", *extra, *stages]] if stages else []) + [["dvc", "repro", *extra, "-s", "report"]]


def produced(repro_args: list[str], root: Path = Path(".")) -> str:
    """What a successful `dvc repro <repro_args>` built, for the closing line: the report when the whole
    lab (or the report) was asked for, else the outputs of the stages that were named."""
    from dvc.cli import parse_args
    from dvc.repo import Repo

    ns = parse_args(["repro", *[a for a in repro_args if a != "--"]])
    targets = list(ns.targets or [])
    if getattr(ns, "dry", False):
        return "nothing (a dry run)"
    if not targets or ns.all_pipelines or ns.downstream or any(t.rsplit(":", 1)[-1] == "report" for t in targets):
        return "reports/report.html (and report.md)"
    try:
        with Repo(str(root)) as repo:
            outs = [str(o) for t in targets for stage in repo.stage.collect(t, glob=getattr(ns, "glob", False))
                    for o in stage.outs]
    except Exception:   # noqa: BLE001 -- the run succeeded; naming the stages is enough
        outs = []
    return (f"{', '.join(targets)}" + (f" ({', '.join(outs)})" if outs else "")
            + " and the stages it needs; no report was built (run without a stage name to build it)")


def _protocol_flag(value: str) -> str:
    if value == "seed":   # the protocol's former name
        raise argparse.ArgumentTypeError("'seed' is now called 'lab' (the lab's published data); use --protocol lab")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.cli.repro", description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", type=_protocol_flag, choices=["auto", "lab", "offline"], default="auto",
                    help="lab: the lab's published data (MNIST, CIFAR-10, ants/bees, ResNet-18); offline: packaged data")
    ap.add_argument("--data", action="append", default=[], metavar="DATASET=FOLDER",
                    help="read DATASET (mnist, cifar10, transfer) from your own image folder; FOLDER 'builtin' "
                         "restores the built-in sources; written to params.yaml")
    ap.add_argument("--part", action="append", default=[], choices=PARTS,
                    help="run one part of the lab (repeatable), then the report; 'report': the report alone")
    ap.add_argument("repro_args", nargs=argparse.REMAINDER, help="passed to `dvc repro`")
    args = ap.parse_args(argv)
    try:
        params = _apply_data_options(args.data)
        commands = repro_commands(params, args.part, [a for a in args.repro_args if a != "--"])
        if args.protocol == "auto":
            protocol, reason = choose_protocol(params)
        else:
            protocol, reason = args.protocol, "forced with --protocol"
        changed = set_protocol(config.PARAMS_FILE, protocol)
    except LabError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    print(f"protocol: {protocol} ({reason})" + ("; params.yaml updated" if changed else ""), flush=True)
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    start = time.time()
    rc, runs = 0, []
    for cmd in commands:   # each is `dvc repro ARGS`: run with a progress line before each stage
        rc, ran = progress.repro(cmd[2:])
        runs.append(ran)
        if rc != 0:
            break
    seconds = time.time() - start
    minutes = seconds / 60
    if rc == 0:
        built = "reports/report.html (and report.md)" if args.part else produced(args.repro_args)
        print(f"done in {minutes:.1f} min: {built}; "
              "MLflow UI: mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000")
        print(progress.floor_line(runs[0], seconds), flush=True)
        if (outside := progress.outside_line(runs[0], seconds)) is not None:
            print(outside, flush=True)
    else:
        print(f"dvc repro failed (exit {rc}) after {minutes:.1f} min; completed stages stay cached", file=sys.stderr)
    return OK if rc == 0 else FAILURE


if __name__ == "__main__":
    sys.exit(main())
