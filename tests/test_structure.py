"""The package's shape, drawn from its own source with `ast`: no import cycles, no private name
used across modules, modules and functions of a readable size, and entry points apart from the
library. Each failure names the file and what to change."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("pipelines", "stages", "benchmarks")
MAX_MODULE_LINES = 400   # params.yaml's schema (config.py) is one idea at about 350 lines
MAX_FUNCTION_LINES = 60
# A longer function says why in the comment block right above its `def` (or first decorator),
# starting "# long: <why>".
LONG_MARK = "# long:"


def _modules() -> dict[str, Path]:
    out = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    return skip


def _package(name: str) -> str:
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def _imports(name: str) -> list[tuple[str, str, int]]:
    """(imported project module, imported name or "", line) for every import in module `name`."""
    tree, out = _tree(MODULES[name]), []
    skip = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names if a.name in MODULES]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = _package(name).split(".")
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in MODULES:
                    out.append((sub, "", node.lineno))
                elif base in MODULES:
                    out.append((base, a.name, node.lineno))
    return out


def test_no_import_cycles():
    graph = {m: sorted({t for t, _, _ in _imports(m) if t != m}) for m in MODULES}
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:   # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in MODULES:
        if m not in index:
            visit(m)
    assert not cycles, f"import cycles (break each one): {cycles}"


def test_no_private_name_used_across_modules():
    bad = []
    for m in MODULES:
        tree = _tree(MODULES[m])
        aliases = {}
        for target, name, line in _imports(m):
            if name.startswith("_") and not name.startswith("__"):
                bad.append(f"{MODULES[m].relative_to(REPO)}:{line} imports {target}.{name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for a in node.names:
                    if f"{node.module}.{a.name}" in MODULES:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in MODULES and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{MODULES[m].relative_to(REPO)}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not bad, "private names used outside their module (make them public or move the code):\n" + "\n".join(bad)


def test_modules_are_at_most_350_lines():
    big = {str(p.relative_to(REPO)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not big, f"modules over {MAX_MODULE_LINES} lines (split them by concern): {big}"


def test_long_functions_say_why():
    bad = []
    for p in MODULES.values():
        lines = p.read_text().splitlines()
        for node in ast.walk(_tree(p)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                above, i = [], first - 2
                while i >= 0 and lines[i].strip().startswith("#"):   # the comment block right above
                    above.append(lines[i].strip())
                    i -= 1
                if length > MAX_FUNCTION_LINES and not any(c.startswith(LONG_MARK) for c in above):
                    bad.append(f"{p.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)")
    assert not bad, (f"functions over {MAX_FUNCTION_LINES} lines without a '{LONG_MARK} <why>' comment above "
                     "them:\n" + "\n".join(bad))


def test_entry_points_sit_apart_from_the_library():
    # Library modules never run as programs: `python -m` targets are stages/, pipelines/cli/, benchmarks/.
    mains = [str(p.relative_to(REPO)) for m, p in MODULES.items()
             if m.startswith("pipelines.") and not m.startswith("pipelines.cli")
             and '__name__ == "__main__"' in p.read_text()]
    assert not mains, f"entry points inside the library (move them to pipelines/cli/): {mains}"


@pytest.mark.parametrize("mark", [LONG_MARK])
def test_the_checks_see_the_package(mark):
    # The walk found the library, the stages and the benchmarks, so the checks above are not vacuous.
    assert {"pipelines.io", "stages.train", "benchmarks.roofline"} <= set(MODULES)
    assert any(t == "pipelines.io" for m in MODULES for t, _, _ in _imports(m))
