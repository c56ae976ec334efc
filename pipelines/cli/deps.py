"""Write dvc.yaml's code dependencies: each stage depends on exactly the project modules its command
imports, transitively, so DVC reruns a stage when code it runs changed and never serves a stale result.

    python -m pipelines.cli.deps            # rewrite dvc.yaml's code-dep lists (make deps)
    python -m pipelines.cli.deps --check    # exit 1, naming what differs, when they are not current

The import closure is computed from the source (ast), starting at the stage's entry module (the
`python -m stages.<name>` of its cmd) and following only the project's packages, pipelines/ and
stages/. Every import statement counts, also those inside functions (a lazy import runs when its
function does), except those under `if TYPE_CHECKING:`. Importing `pipelines.data.x` runs
pipelines/data/__init__.py too, so a package's __init__.py is in the closure when it holds code.
A module that names a sibling source file in a string ("model.py": code it ships or runs by path,
as a logged MLflow model's code) depends on that file as if it imported it; one that names a
project package's modules as "<package>.*" (pipelines/models.py imports every network that way)
depends on every module of that package.

Only the code-dep lines change (`- pipelines/...py`, `- stages/...py` in a stage's `deps:`): the entry
module first, then the rest in path order. Every other line of dvc.yaml, comments included, is kept.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "stages")
CODE_DEP = re.compile(r"^(\s*)- ((?:pipelines|stages)/\S+\.py)\s*(#.*)?$")


def _module_file(name: str, repo: Path) -> Path | None:
    """The file of a project module (dotted name), or None for anything outside pipelines/ and stages/."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = repo.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _has_code(f: Path) -> bool:
    body = ast.parse(f.read_text()).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # a docstring alone runs nothing
    return bool(body)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _package_modules(pattern: str, repo: Path) -> list[str]:
    """The modules "<package>.*" names: every .py file of that project package, __init__ aside."""
    package = pattern[:-2]
    folder = repo.joinpath(*package.split("."))
    return [f"{package}.{p.stem}" for p in sorted(folder.glob("*.py")) if p.name != "__init__.py"]


def _imported_names(f: Path, module: str, repo: Path) -> list[str]:
    """Dotted names of every module an import statement of file f may run (packages first)."""
    package = module if f.name == "__init__.py" else module.rpartition(".")[0]
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                src = f"{base}.{node.module}" if node.module else base
            else:
                src = node.module
            names.append(src)
            names.extend(f"{src}.{a.name}" for a in node.names)  # `from pkg import submodule`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith(".py") \
                and "/" not in node.value and (f.parent / node.value).is_file():
            names.append(f"{package}.{node.value[:-3]}")  # a sibling file used by path
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and re.fullmatch(r"(pipelines|stages)(\.\w+)*\.\*", node.value):
            names.extend(_package_modules(node.value, repo))  # every module of a package, imported by name
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(f.read_text(), str(f)))
    out = []
    for n in names:  # `import a.b.c` runs a/__init__.py and a/b/__init__.py first
        parts = n.split(".")
        out.extend(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def import_closure(entry: str, repo: Path = REPO) -> dict[str, str]:
    """{repository path of every project file that `python -m <entry>` can run: the module it was
    imported from}; the entry module's own file maps to ''."""
    first = _module_file(entry, repo)
    if first is None:
        raise SystemExit(f"error: no project module {entry}")
    seen: dict[Path, str] = {}
    todo = [(entry, first, "")]
    for pkg in (".".join(entry.split(".")[:i]) for i in range(1, entry.count(".") + 1)):
        todo.append((pkg, _module_file(pkg, repo), entry))
    while todo:
        name, f, parent = todo.pop()
        if f is None or f in seen:
            continue
        seen[f] = parent
        for dep in _imported_names(f, name, repo):
            g = _module_file(dep, repo)
            if g is not None and g not in seen:
                todo.append((dep, g, name))
    return {f.relative_to(repo).as_posix(): parent for f, parent in seen.items()
            if f.name != "__init__.py" or _has_code(f)}


def entry_module(cmd: str) -> str:
    m = re.search(r"\bpython3?\s+-m\s+(stages\.\w+)", cmd)
    if not m:
        raise SystemExit(f"error: dvc.yaml: a cmd runs no `python -m stages.<name>`: {cmd!r}")
    return m[1]


def stage_entries(text: str) -> dict[str, str]:
    """{stage: its entry module} of dvc.yaml's text (foreach/matrix bodies unwrapped)."""
    stages = yaml.safe_load(text)["stages"]
    return {name: entry_module((d["do"] if "do" in d else d)["cmd"]) for name, d in stages.items()}


def code_deps(entry: str, repo: Path = REPO) -> list[str]:
    """The code deps a stage with this entry module lists: its own file, then the rest in order."""
    closure = import_closure(entry, repo)
    own = next(p for p, parent in closure.items() if parent == "")
    return [own] + sorted(p for p in closure if p != own)


def render(text: str, repo: Path = REPO) -> str:
    """dvc.yaml's text with every stage's code-dep lines replaced by its import closure."""
    entries = stage_entries(text)
    lines, out = text.splitlines(keepends=True), []
    stage, in_deps, written = None, False, False
    for line in lines:
        m = re.match(r"^  (\w+):\s*(#.*)?$", line)
        if m and m[1] in entries:
            stage, in_deps = m[1], False
        elif re.match(r"^\S", line):
            stage, in_deps = None, False   # plots: and other top-level keys
        elif stage and re.match(r"^\s+deps:\s*(#.*)?$", line):
            in_deps, written = True, False
            out.append(line)
            continue
        elif in_deps and not re.match(r"^\s+- ", line) and line.strip() and not line.strip().startswith("#"):
            in_deps = False
        dep = CODE_DEP.match(line) if in_deps else None
        if dep:
            if not written:   # the whole list, where its first line was
                out += [f"{dep[1]}- {p}\n" for p in code_deps(entries[stage], repo)]
                written = True
            continue
        out.append(line)
    return "".join(out)


def mismatches(text: str, repo: Path = REPO) -> list[str]:
    """One line per stage whose listed code deps differ from its import closure, saying what differs."""
    stages = yaml.safe_load(text)["stages"]
    problems = []
    for name, d in stages.items():
        d = d["do"] if "do" in d else d
        entry = entry_module(d["cmd"])
        closure = import_closure(entry, repo)
        declared = {x for x in d.get("deps") or [] if x.split("/")[0] in PACKAGES}
        missing, extra = sorted(set(closure) - declared), sorted(declared - set(closure))
        if missing or extra:
            why = "; ".join([f"add {m} (imported by {closure[m] or entry})" for m in missing]
                            + [f"remove {e} (not imported by {entry}, transitively)" for e in extra])
            problems.append(f"stage '{name}': {why}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.cli.deps", description=__doc__.splitlines()[0])
    ap.add_argument("--file", type=Path, default=REPO / "dvc.yaml")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 when the file is not current")
    a = ap.parse_args(argv)
    text = a.file.read_text()
    new = render(text)
    if new == text:
        print(f"{a.file}: code deps are current")
        return 0
    if a.check:
        print(f"{a.file}: code deps are not current (run `make deps`):\n  "
              + "\n  ".join(mismatches(text) or ["order or layout of the lists"]))
        return 1
    from pipelines import io

    with io.atomic_path(a.file) as tmp:
        tmp.write_text(new)
    print(f"{a.file}: code deps written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
