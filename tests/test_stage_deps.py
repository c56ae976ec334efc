"""Every dvc.yaml stage lists as deps exactly the project modules its command imports,
transitively: a module left out would let DVC serve a stale result as up to date, one listed
but never imported would rerun stages for nothing.

The import closure is computed from the source (ast), starting at the stage's entry module (the
`python -m stages.<name>` of its cmd) and following only the project's packages, pipelines/ and
stages/. Every import statement counts, also those inside functions (a lazy import runs when its
function does), except those under `if TYPE_CHECKING:`. Importing `pipelines.data.x` runs
pipelines/data/__init__.py too, so a package's __init__.py is in the closure when it holds code.
A module that names a sibling source file in a string ("model.py": code it ships or runs
by path, as a logged MLflow model's code) depends on that file as if it imported it.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "stages")


def _module_file(name: str) -> Path | None:
    """The file of a project module (dotted name), or None for anything outside pipelines/ and stages/."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*name.split("."))
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


def _imported_names(f: Path, module: str) -> list[str]:
    """Dotted names of every module an import statement of file f may run (packages first)."""
    is_pkg = f.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
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
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(f.read_text(), str(f)))
    out = []
    for n in names:  # `import a.b.c` runs a/__init__.py and a/b/__init__.py first
        parts = n.split(".")
        out.extend(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def import_closure(entry: str) -> dict[str, str]:
    """{repository path of every project file that `python -m <entry>` can run: the module it was
    imported from}; the entry module's own file maps to ''."""
    first = _module_file(entry)
    assert first is not None, f"no project module {entry}"
    seen: dict[Path, str] = {}
    todo = [(entry, first, "")]
    for pkg in (".".join(entry.split(".")[:i]) for i in range(1, entry.count(".") + 1)):
        todo.append((pkg, _module_file(pkg), entry))
    while todo:
        name, f, parent = todo.pop()
        if f is None or f in seen:
            continue
        seen[f] = parent
        for dep in _imported_names(f, name):
            g = _module_file(dep)
            if g is not None and g not in seen:
                todo.append((dep, g, name))
    return {str(f.relative_to(REPO)): parent for f, parent in seen.items()
            if f.name != "__init__.py" or _has_code(f)}


def _stage_defs(dvc_yaml: Path) -> dict[str, dict]:
    """Top-level stages of dvc.yaml, with foreach/matrix bodies unwrapped (code deps hold no ${...})."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {name: (d["do"] if "do" in d else d) for name, d in stages.items()}


def _entry(cmd: str) -> str:
    m = re.search(r"\bpython3?\s+-m\s+(stages\.\w+)", cmd)
    assert m, f"cmd runs no `python -m stages.<name>`: {cmd!r}"
    return m[1]


def _code_deps(deps: list[str]) -> set[str]:
    return {d for d in deps if d.split("/")[0] in PACKAGES}


def dep_mismatches(dvc_yaml: Path = REPO / "dvc.yaml") -> list[str]:
    """One line per stage whose code deps differ from its import closure, saying what to add/remove."""
    problems = []
    for name, d in _stage_defs(dvc_yaml).items():
        entry = _entry(d["cmd"])
        closure = import_closure(entry)
        declared = _code_deps(d.get("deps") or [])
        missing = sorted(set(closure) - declared)
        extra = sorted(declared - set(closure))
        if missing or extra:
            why = "; ".join(
                [f"add {m} (imported by {closure[m] or entry})" for m in missing]
                + [f"remove {e} (not imported by {entry}, transitively)" for e in extra])
            problems.append(f"dvc.yaml stage '{name}' deps: {why}")
    return problems


def test_every_stage_depends_on_exactly_the_modules_it_imports():
    problems = dep_mismatches()
    assert not problems, "\n".join(problems)


def test_train_and_replicate_run_the_same_code_with_the_same_deps():
    defs = _stage_defs(REPO / "dvc.yaml")
    assert _entry(defs["train"]["cmd"]) == _entry(defs["replicate"]["cmd"]) == "stages.train"
    assert _code_deps(defs["train"]["deps"]) == _code_deps(defs["replicate"]["deps"])
