"""One-way layers, read from the source: cli -> bench -> export -> data -> engine, no import cycles.

Every module under engine/, data/, export/, bench/ and lightcl/ is parsed (``ast``; nothing is imported
or executed, so this runs in well under a second). An import counts wherever it is written: at module
level, inside a function (the usual way to hide a cycle), under ``if TYPE_CHECKING``, and as a string
handed to ``importlib.import_module`` / ``__import__`` (a module name written as a string constant in a
module that imports dynamically, e.g. the method and verb registries).

Rules (issue 11):

* a module imports only its own layer or lower ones: engine (0) < data (1) < export (2) < bench (3)
  < cli (4: ``lightcl.cli``, ``lightcl.commands``, ``lightcl.__main__``). The package root
  ``lightcl/__init__.py`` is loaded on the device, so it imports only the engine and ``lightcl.data.errors``
  (to re-export ``DatasetNotFoundError``); anyone may import it (``__version__``);
* no import cycle between modules (each reported with the file:line of every edge);
* the device side (``lightcl predict``, ``examples/robot_loop.py``) imports only ``lightcl.engine`` at module
  level. Inside a function it may also import the data layer (the host-only ``--dataset`` branch, never
  export/bench; the device path does not reach it, which tests/test_device_floor.py checks at run time) and
  the CLI's shared argument checks ``lightcl.commands._safety``, whose own module-level imports must be
  ``lightcl.engine`` only;
* every ``lightcl.*`` module that is imported exists (a stale path after a move fails here, not at run time).
"""
from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# import name -> source folder (pyproject's [tool.setuptools] package-dir, checked below)
PACKAGE_DIRS = {"lightcl": "lightcl", "lightcl.engine": "engine", "lightcl.data": "data", "lightcl.export": "export",
                "lightcl.bench": "bench"}
# (prefix, rank, layer name); the longest matching prefix wins
LAYERS = [("lightcl", 0, "package root"), ("lightcl.engine", 0, "engine"), ("lightcl.data", 1, "data"),
          ("lightcl.export", 2, "export"), ("lightcl.bench", 3, "bench"), ("lightcl.cli", 4, "cli"),
          ("lightcl.commands", 4, "cli"), ("lightcl.__main__", 4, "cli")]
DEVICE_SIDE = {"lightcl.commands.predict": "lightcl/commands/predict.py", "examples.robot_loop": "examples/robot_loop.py"}
# modules the device side may import besides the engine (inside a function); their module-level imports: engine only
DEVICE_HELPERS = {"lightcl.commands._safety": "lightcl/commands/_safety.py",
                  "lightcl.commands._args": "lightcl/commands/_args.py"}  # engine-only CLI helpers
DEVICE_OK = "lightcl.engine"
ROOT_OK = ("lightcl.engine", "lightcl.data.errors")
HOST_BRANCH_OK = "lightcl.data"  # function-local only
DYNAMIC_CALLS = {"import_module", "__import__"}
# Cycles known and owned elsewhere, each with why and what ends it. An entry whose cycle is gone fails the test
# (delete it then), and any other cycle fails as usual.
KNOWN_CYCLES: dict = {}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    file: str
    line: int
    local: bool  # inside a function or class body
    how: str  # "import" | "string"

    def where(self) -> str:
        kind = "string import" if self.how == "string" else "import"
        return f"{self.file}:{self.line} ({kind}{', inside a function' if self.local else ''})"


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def discover(root: Path = ROOT, package_dirs: dict[str, str] = PACKAGE_DIRS) -> dict[str, Path]:
    """module name -> file, for every .py under the package folders."""
    mods: dict[str, Path] = {}
    for pkg, folder in package_dirs.items():
        base = root / folder
        for f in sorted(base.rglob("*.py")):
            rel = f.relative_to(base).with_suffix("").parts
            if "__pycache__" in rel:
                continue
            if rel[-1] == "__init__":
                rel = rel[:-1]
            name = ".".join((pkg, *rel))
            # lightcl/commands/x.py is reached from "lightcl" and is also its own package-dir entry: same name
            mods.setdefault(name, f)
    return mods


def _is_package(name: str, file: Path) -> bool:
    return file.name == "__init__.py"


def _resolve_relative(module: str, is_pkg: bool, level: int, target: str | None) -> str:
    parts = module.split(".") if is_pkg else module.split(".")[:-1]
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts + ([target] if target else []))


def _nearest(name: str, known) -> str | None:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in known:
            return cand
    return None


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def _walk(tree: ast.AST) -> list[tuple[ast.AST, bool]]:
    """Every node with whether it sits inside a function or class body (one iterative pass)."""
    out: list[tuple[ast.AST, bool]] = []
    stack = [(tree, False)]
    while stack:
        node, local = stack.pop()
        inner = local or isinstance(node, _SCOPES)
        for child in ast.iter_child_nodes(node):
            out.append((child, inner))
            stack.append((child, inner))
    return out


def imports_of(module: str, source: str, file: str, known, is_pkg: bool) -> tuple[list[Edge], list[str]]:
    """(edges to known modules, problems such as an import of a lightcl module that does not exist)."""
    tree = ast.parse(source, filename=file)
    nodes = _walk(tree)
    edges: list[Edge] = []
    problems: list[str] = []
    local = False

    def add(dst: str, node: ast.AST, how: str = "import", exact: bool = False) -> None:
        hit = dst if dst in known else (None if exact else _nearest(dst, known))
        if hit is None:
            if _within(dst, "lightcl") and how == "import":
                problems.append(f"{file}:{node.lineno}: imports {dst}, which is no module of this repository")
            return
        edges.append(Edge(module, hit, file, node.lineno, local, how))

    dynamic = False
    for node, local in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                if _within(a.name, "lightcl") and a.name not in known:  # import lightcl.x.missing
                    problems.append(f"{file}:{node.lineno}: imports {a.name}, which is no module of this repository")
                else:
                    add(a.name, node)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(module, is_pkg, node.level, node.module) if node.level else node.module or ""
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in known:  # from pkg import submodule
                    add(sub, node)
                elif base in known or not _within(base, "lightcl"):
                    add(base, node)
                else:  # from lightcl.x.missing import y
                    problems.append(f"{file}:{node.lineno}: imports {base}, which is no module of this repository")
                    break
        elif isinstance(node, ast.Call):
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if fname in DYNAMIC_CALLS:
                dynamic = True
                if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                    name = node.args[0].value
                    if name.startswith("."):
                        lvl = len(name) - len(name.lstrip("."))
                        name = _resolve_relative(module, is_pkg, lvl, name.lstrip(".") or None)
                    add(name, node, "string", exact=False)
                elif node.args and isinstance(node.args[0], ast.JoinedStr) and node.args[0].values \
                        and isinstance(node.args[0].values[0], ast.Constant):
                    add(str(node.args[0].values[0].value).rstrip("."), node, "string")  # f"lightcl.x.{name}"
    if dynamic:  # registries: module names as string constants, imported by name
        for node, local in nodes:
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known \
                    and node.value != module and _within(node.value, "lightcl"):
                add(node.value, node, "string", exact=True)
    return edges, problems


def build_graph(root: Path = ROOT, package_dirs: dict[str, str] = PACKAGE_DIRS,
                extra: dict[str, str] | None = None) -> tuple[dict[str, Path], list[Edge], list[str]]:
    """Every module, every edge between them, and every import of a missing lightcl module."""
    mods = discover(root, package_dirs)
    files = dict(mods)
    for name, rel in (extra or {}).items():
        if (root / rel).is_file():
            files[name] = root / rel
    edges: list[Edge] = []
    problems: list[str] = []
    for name, f in files.items():
        e, p = imports_of(name, f.read_text(encoding="utf-8"), str(f.relative_to(root)), mods,
                          _is_package(name, f))
        edges += e
        problems += p
    return mods, edges, problems


def layer(name: str) -> tuple[int, str] | None:
    best = None
    for prefix, rank, label in LAYERS:
        if _within(name, prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, rank, label)
    return None if best is None else (best[1], best[2])


def layer_violations(edges: list[Edge]) -> list[str]:
    out = []
    for e in edges:
        a, b = layer(e.src), layer(e.dst)
        if a is None or b is None:
            continue
        if e.src == "lightcl":  # the package root: loaded on the device
            if not any(_within(e.dst, ok) for ok in ROOT_OK):
                out.append(f"the package root imports {e.dst} ({b[1]}) at {e.where()}; it may import only "
                           f"{', '.join(ROOT_OK)}")
        elif b[0] > a[0]:
            out.append(f"{a[1]} imports {b[1]}: {e.src} -> {e.dst} at {e.where()}")
    return out


def find_cycles(nodes, edges: list[Edge]) -> list[list[Edge]]:
    """Cycles between modules, as lists of edges: for every edge inside a strongly connected component
    (Tarjan, iterative) the shortest cycle through it, each cycle once. A module importing itself
    (``bench/update.py`` does, for its subprocess entry) is no cycle between modules and is skipped."""
    adj: dict[str, dict[str, Edge]] = {n: {} for n in nodes}
    for e in edges:
        adj.setdefault(e.dst, {})
        if e.src != e.dst:
            adj.setdefault(e.src, {}).setdefault(e.dst, e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    comps: list[set[str]] = []
    counter = 0
    for start in sorted(adj):
        if start in index:
            continue
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        work = [(start, iter(sorted(adj[start])))]
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(adj[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(comp)

    def shortest(a: str, b: str, members: set[str]) -> list[str]:
        prev = {a: a}
        queue = [a]
        while queue:
            v = queue.pop(0)
            if v == b:
                break
            for w in sorted(adj[v]):
                if w in members and w not in prev:
                    prev[w] = v
                    queue.append(w)
        path = [b]
        while path[-1] != a:
            path.append(prev[path[-1]])
        return path[::-1]

    cycles: dict[tuple[str, ...], list[Edge]] = {}
    for comp in sorted(comps, key=min):
        for u in sorted(comp):
            for v in sorted(w for w in adj[u] if w in comp):
                path = [u] + shortest(v, u, comp)  # u -> v -> ... -> u
                nodes_ = path[:-1]
                k = nodes_.index(min(nodes_))
                key = tuple(nodes_[k:] + nodes_[:k])
                if key not in cycles:
                    rot = list(key) + [key[0]]
                    cycles[key] = [adj[a][b] for a, b in zip(rot, rot[1:])]
    return list(cycles.values())


def describe_cycle(cyc: list[Edge]) -> str:
    return "import cycle: " + " -> ".join([cyc[0].src] + [f"{e.dst} [{e.where()}]" for e in cyc])


def device_violations(edges: list[Edge]) -> list[str]:
    out = []
    for e in edges:
        if _within(e.dst, DEVICE_OK) or e.dst == "lightcl":
            continue
        if e.src in DEVICE_SIDE:
            if e.dst in DEVICE_HELPERS or (e.local and _within(e.dst, HOST_BRANCH_OK)):
                continue  # the CLI's engine-only helpers, or the host-only --dataset branch (data layer, loaded lazily)
            out.append(f"device-side {e.src} imports {e.dst} at {e.where()}: the device imports only {DEVICE_OK} "
                       f"and {', '.join(DEVICE_HELPERS)} (inside a function also {HOST_BRANCH_OK} for a host-only branch)")
        elif e.src in DEVICE_HELPERS and not e.local:
            out.append(f"{e.src}, imported by the device side, imports {e.dst} at module level at {e.where()}: "
                       f"only {DEVICE_OK} may be (anything else inside the function that needs it)")
    return out


# --------------------------------------------------------------------------------------------- the repository
@pytest.fixture(scope="module")
def graph():
    return build_graph(extra={k: v for k, v in DEVICE_SIDE.items() if not v.startswith(("lightcl/",))})


def test_package_dirs_match_pyproject():
    """The folders scanned here are the packages pyproject installs: a new top-level package cannot slip past."""
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = cfg["package-dir"]
    for name, folder in mapped.items():
        top = next((p for p in PACKAGE_DIRS if _within(name, p) and PACKAGE_DIRS[p] == folder.split("/")[0]), None)
        assert top is not None, f"pyproject maps {name} -> {folder}, which tests/test_layering.py does not scan"
    for name, folder in PACKAGE_DIRS.items():
        assert mapped.get(name) == folder, f"tests/test_layering.py scans {folder}/ as {name}; pyproject says {mapped.get(name)}"
    assert set(cfg["packages"]) >= {n for n in PACKAGE_DIRS}, f"pyproject's packages list misses some of {list(PACKAGE_DIRS)}"


def test_every_package_folder_is_listed_in_pyproject(graph):
    """A sub-folder with an __init__.py is a package setuptools must be told about, or it is not installed."""
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    mods, _, _ = graph
    pkgs = {n for n, f in mods.items() if f.name == "__init__.py"}
    assert pkgs <= listed, f"packages not in pyproject's packages list: {sorted(pkgs - listed)}"


def test_imported_lightcl_modules_exist(graph):
    _, _, problems = graph
    assert not problems, "\n".join(problems)


def test_layers_point_one_way(graph):
    _, edges, _ = graph
    bad = layer_violations(edges)
    assert not bad, "imports against the layering cli -> bench -> export -> data -> engine:\n" + "\n".join(bad)


def test_no_import_cycles(graph):
    mods, edges, _ = graph
    cycles = find_cycles(mods, edges)
    seen = {frozenset(e.src for e in c) for c in cycles}
    new = [c for c in cycles if frozenset(e.src for e in c) not in KNOWN_CYCLES]
    assert not new, "\n".join(describe_cycle(c) for c in new)
    gone = [" <-> ".join(sorted(k)) for k in KNOWN_CYCLES if k not in seen]
    assert not gone, f"cycles listed in KNOWN_CYCLES no longer exist; delete their entries: {gone}"


def test_device_side_imports_engine_only(graph):
    _, edges, _ = graph
    for name, rel in {**DEVICE_SIDE, **DEVICE_HELPERS}.items():
        assert (ROOT / rel).is_file(), f"device-side file {rel} is gone: update DEVICE_SIDE"
    bad = device_violations(edges)
    assert not bad, "\n".join(bad)


# --------------------------------------------------------------------------------------------- the scanner itself
def _fake_repo(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def test_scanner_sees_every_kind_of_import(tmp_path):
    """Hidden imports are found: function-local, relative (one and two levels), ``from pkg import submodule``,
    importlib strings (literal, f-string, registry), and a stale path is reported."""
    root = _fake_repo(tmp_path, {
        "engine/__init__.py": "", "engine/errors.py": "", "engine/util.py": "",
        "data/__init__.py": "", "data/datasets.py": "from lightcl.engine.errors import X\n",
        "export/__init__.py": "", "export/a.py": "def f():\n    from .b import g\n",
        "export/b.py": "from . import a\n",
        "bench/__init__.py": "", "bench/sub/__init__.py": "", "bench/sub/m.py": "from ..report import x\n",
        "bench/report.py": "import importlib\nREG = {'k': 'lightcl.bench.sub.m'}\n"
                           "def h(n):\n    importlib.import_module(f'lightcl.export.{n}')\n",
        "lightcl/__init__.py": "", "lightcl/cli.py": "import importlib\nimportlib.import_module('lightcl.data.datasets')\n",
        "lightcl/commands/__init__.py": "",
        "lightcl/commands/predict.py": "def run():\n    from lightcl.bench.data import load\n",
        "lightcl/commands/learn.py": "import lightcl.bench.tasks\n",
    })
    mods, edges, problems = build_graph(root)
    got = {(e.src, e.dst, e.local, e.how) for e in edges}
    assert ("lightcl.data.datasets", "lightcl.engine.errors", False, "import") in got
    assert ("lightcl.export.a", "lightcl.export.b", True, "import") in got
    assert ("lightcl.export.b", "lightcl.export.a", False, "import") in got
    assert ("lightcl.bench.sub.m", "lightcl.bench.report", False, "import") in got
    assert ("lightcl.bench.report", "lightcl.bench.sub.m", False, "string") in got
    assert ("lightcl.bench.report", "lightcl.export", True, "string") in got
    assert ("lightcl.cli", "lightcl.data.datasets", False, "string") in got
    assert any("lightcl.bench.data" in p and "predict.py:2" in p for p in problems), problems
    assert any("lightcl.bench.tasks" in p and "learn.py:1" in p for p in problems) and len(problems) == 2, problems
    cycles = find_cycles(mods, edges)
    assert len(cycles) == 2, [describe_cycle(c) for c in cycles]
    text = "\n".join(describe_cycle(c) for c in cycles)
    assert "export/a.py:2 (import, inside a function)" in text and "export/b.py:1" in text, text
    assert "lightcl.bench.report -> lightcl.bench.sub.m" in text or "lightcl.bench.sub.m -> lightcl.bench.report" in text


def test_rules_flag_each_kind_of_violation():
    e = lambda s, d, local=False: Edge(s, d, "f.py", 1, local, "import")  # noqa: E731
    bad = layer_violations([e("lightcl.engine.head", "lightcl.data.datasets"), e("lightcl.data.tasks", "lightcl.export.zoo"),
                            e("lightcl.export.pretrain", "lightcl.bench.data"), e("lightcl.bench.suite", "lightcl.commands.x"),
                            e("lightcl", "lightcl.export.zoo")])
    assert len(bad) == 5, bad
    assert layer_violations([e("lightcl.bench.suite", "lightcl.export.zoo"), e("lightcl.export.zoo", "lightcl"),
                             e("lightcl.data.tasks", "lightcl.engine.preprocess"), e("lightcl.commands.x", "lightcl.bench.suite"),
                             e("lightcl", "lightcl.engine.head")]) == []
    dev = device_violations([e("lightcl.commands.predict", "lightcl.data.datasets"),  # module level: refused
                             e("examples.robot_loop", "lightcl.bench.data", local=True),
                             e("examples.robot_loop", "lightcl.commands._safety"),  # an engine-only helper: fine
                             e("lightcl.commands._safety", "lightcl.export.zoo"),  # helper, module level: refused
                             e("lightcl.commands._safety", "lightcl.export.zoo", local=True),  # helper, lazily: fine
                             e("lightcl.commands.predict", "lightcl.commands._safety", local=True),
                             e("lightcl.commands.predict", "lightcl.data.datasets", local=True),  # host branch: fine
                             e("examples.robot_loop", "lightcl.engine.learner")])
    assert len(dev) == 3 and all(re.search(r"imports lightcl\.(data|bench|export|commands)", d) for d in dev), dev
