"""The package's shape: layers import downward only, no import cycles, no module over ~600 lines,
and imports inside functions only for optional heavy dependencies (marked ``# lazy: ...``)."""
from __future__ import annotations

import ast
from pathlib import Path


PKG = Path(__file__).resolve().parents[1] / "mstools"

#: Layers, lowest first; a module may import its own layer and the layers below it.
LAYERS = ["core", "testbed", "model", "data", "analysis", "steering", "evaluation", "ui", "apps"]
MAX_LINES = 600


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _imports(path: Path) -> list[tuple[str, int, bool, str]]:
    """(imported module, line, inside a function, source line) for every import in a file."""
    source = path.read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    out = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            func = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    out.append((a.name, child.lineno, in_func, lines[child.lineno - 1]))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    raise AssertionError(f"{path}:{child.lineno}: relative import; use absolute imports")
                mod = child.module or ""
                for a in child.names:
                    full = f"{mod}.{a.name}"
                    out.append((full if _is_module(full) else mod, child.lineno, in_func,
                                lines[child.lineno - 1]))
            elif isinstance(child, ast.If) and _is_type_checking(child):
                continue  # imports for type checkers only
            visit(child, func)

    visit(tree, False)
    return out


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _is_module(dotted: str) -> bool:
    if not dotted.startswith("mstools"):
        return False
    rel = Path(*dotted.split("."))
    return (PKG.parent / rel).with_suffix(".py").exists() or (PKG.parent / rel / "__init__.py").exists()


def _files() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for p in _files():
        mod = _module(p)
        deps = graph.setdefault(mod, set())
        for target, *_ in _imports(p):
            if target.startswith("mstools") and target != mod:
                # importing a.b.c runs a/__init__ and a/b/__init__ too
                parts = target.split(".")
                for i in range(2, len(parts) + 1):
                    t = ".".join(parts[:i])
                    if _is_module(t) and t != mod and not mod.startswith(t + "."):
                        deps.add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
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
                out.append(sorted(comp))

    import sys
    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_cycle_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_import_downward_only():
    bad = []
    for p in _files():
        mod = _module(p)
        mine = _layer(mod)
        if mine is None:
            continue
        for target, line, _, _ in _imports(p):
            theirs = _layer(target) if target.startswith("mstools") else None
            if theirs is not None and LAYERS.index(theirs) > LAYERS.index(mine):
                bad.append(f"{p.relative_to(PKG.parent)}:{line} ({mine}) imports {target} ({theirs})")
    assert bad == []


def _marked_lazy(lines: list[str], line: int) -> bool:
    """The import at ``line`` (1-based) or a comment in the block of imports and comments just above
    it says ``# lazy: <why>``."""
    i = line - 1
    while i >= 0:
        text = lines[i].strip()
        if "# lazy:" in text:
            return True
        if i != line - 1 and not (text.startswith(("import ", "from ", "#")) or text.endswith((",", "("))
                                  or text.startswith(")")):
            return False
        i -= 1
    return False


def test_imports_inside_functions_are_marked_lazy():
    bad = []
    for p in _files():
        lines = p.read_text().splitlines()
        for target, line, in_func, text in _imports(p):
            if in_func and not _marked_lazy(lines, line):
                bad.append(f"{p.relative_to(PKG.parent)}:{line}: {text.strip()}")
    assert bad == []


def test_modules_are_small():
    big = [f"{p.relative_to(PKG.parent)}: {n}" for p in _files()
           if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert big == []
