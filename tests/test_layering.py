"""One-way layers, read from the source: cli -> bench -> export -> data -> engine, no import cycles.

Every module under engine/, data/, export/, bench/ and lightcl/ is parsed (``ast``; nothing is imported
or executed, so this runs in well under a second). An import counts wherever it is written: at module
level, inside a function (the usual way to hide a cycle), under ``if TYPE_CHECKING``, and as a string
handed to ``importlib.import_module`` / ``__import__`` (a module name written as a string constant in a
module that imports dynamically, e.g. the method and verb registries), and any ``"module:attr"`` string
(absolute or relative: the worker harness's targets such as ``"lightcl.bench.suite:run_one"``, the extractor
registry's ``".ort_backend:OrtExtractor"``) wherever it is written.

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
* the whole CLI path the device runs (``lightcl.cli``, ``lightcl.__main__``, ``lightcl.commands`` and what they,
  predict and the robot example load at module level, transitively, with every parent package's ``__init__``)
  stays inside the engine, the package roots and the CLI's engine-only helpers;
* ``from lightcl import Name`` counts as an import of the module the root re-exports ``Name`` from (its lazy
  ``_EXPORTS`` table), so the root ranking with the engine hides no data-layer import;
* no private name (``_x``: a function, class or module) of one package is used from another, imported or as
  ``module._x``: a shared name is made public (``KNOWN_PRIVATE`` lists what is owned elsewhere);
* every ``lightcl.*`` module that is imported exists (a stale path after a move fails here, not at run time).

Each rule is shown failing on a planted violation in a temporary tree (the ``test_plant_*`` tests).
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
# the CLI that `lightcl predict` runs through on the device (module level: engine only; verbs by registry string)
DEVICE_ENTRY = {"lightcl.cli": "lightcl/cli.py", "lightcl.__main__": "lightcl/__main__.py",
                "lightcl.commands": "lightcl/commands/__init__.py"}
# package __init__s the device runs on the way (tests/test_device_floor.py lists the same files)
DEVICE_PACKAGES = ("lightcl", "lightcl.commands", "lightcl.data", "lightcl.data.errors")
# cross-package private names still owned elsewhere: (importing module, name) -> why, and what ends it
KNOWN_PRIVATE: dict[tuple[str, str], str] = {
}
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
    names: tuple = ()  # what is taken from dst: ``from dst import a, b`` or ``alias.attr`` (cross-package privates)

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


# a "module:attr" target as the worker harness and the registries write it: absolute or relative module
_TARGET = re.compile(r"^(\.*[A-Za-z_][\w.]*):[A-Za-z_][\w.]*$")


def reexports(source: str) -> dict[str, str]:
    """name -> defining module, from a package's lazy re-export table (the root's ``_EXPORTS = {"Name":
    "module"}``, resolved by PEP 562 ``__getattr__``): ``from lightcl import Name`` imports that module."""
    out: dict[str, str] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Dict):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets):
                for k, v in zip(node.value.keys, node.value.values):
                    if isinstance(k, ast.Constant) and isinstance(v, ast.Constant) and isinstance(v.value, str):
                        out[str(k.value)] = v.value
    return out


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


def imports_of(module: str, source: str, file: str, known, is_pkg: bool,
               exported: dict[str, dict[str, str]] | None = None) -> tuple[list[Edge], list[str]]:
    """(edges to known modules, problems such as an import of a lightcl module that does not exist).

    ``exported``: package -> its lazy re-export table (:func:`reexports`); ``from pkg import Name`` then counts
    as an import of the module that defines ``Name``, not of the package (whose own rank says nothing)."""
    tree = ast.parse(source, filename=file)
    nodes = _walk(tree)
    edges: list[Edge] = []
    problems: list[str] = []
    local = False
    aliases: dict[str, str] = {}  # local name -> lightcl module it is bound to (for ``alias._private``)
    exported = exported or {}

    def add(dst: str, node: ast.AST, how: str = "import", exact: bool = False, names: tuple = ()) -> None:
        hit = dst if dst in known else (None if exact else _nearest(dst, known))
        if hit is None:
            if _within(dst, "lightcl") and how == "import":
                problems.append(f"{file}:{node.lineno}: imports {dst}, which is no module of this repository")
            return
        edges.append(Edge(module, hit, file, node.lineno, local, how, names))

    dynamic = False
    for node, local in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                if _within(a.name, "lightcl") and a.name not in known:  # import lightcl.x.missing
                    problems.append(f"{file}:{node.lineno}: imports {a.name}, which is no module of this repository")
                else:
                    add(a.name, node)
                    if a.asname and a.name in known:
                        aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(module, is_pkg, node.level, node.module) if node.level else node.module or ""
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in known:  # from pkg import submodule
                    add(sub, node, names=(a.name,) if a.name.startswith("_") else ())
                    aliases[a.asname or a.name] = sub
                elif a.name in exported.get(base, {}):  # a lazily re-exported name: its defining module
                    add(exported[base][a.name], node, names=(a.name,))
                elif base in known or not _within(base, "lightcl"):
                    add(base, node, names=(a.name,))
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
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _TARGET.match(node.value):
            # "module:attr": the worker harness's and the registries' targets, imported by name at run time
            target = _TARGET.match(node.value).group(1)
            if target.startswith("."):
                lvl = len(target) - len(target.lstrip("."))
                target = _resolve_relative(module, is_pkg, lvl, target.lstrip(".") or None)
            if _within(target, "lightcl"):
                if target in known:
                    add(target, node, "string", exact=True, names=(node.value.split(":", 1)[1].split(".")[0],))
                else:
                    problems.append(f"{file}:{node.lineno}: names {node.value!r}, but {target} is no module of "
                                    "this repository")
    for node, local in nodes:  # alias._private: a private attribute of an imported lightcl module
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            add(aliases[node.value.id], node, names=(node.attr,))
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
    exported = {n: t for n, f in mods.items() if _is_package(n, f) and (t := reexports(f.read_text(encoding="utf-8")))}
    for name, f in files.items():
        e, p = imports_of(name, f.read_text(encoding="utf-8"), str(f.relative_to(root)), mods,
                          _is_package(name, f), exported)
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


def package_of(name: str) -> str:
    """The package a module belongs to for the private-name rule: its layer (engine, data, export, bench, cli;
    the root is its own), else its top-level name (examples)."""
    found = layer(name)
    if found is None:
        return name.split(".")[0]
    return "package root" if name == "lightcl" else found[1]


def private_violations(edges: list[Edge], known: dict[tuple[str, str], str] | None = None) -> list[str]:
    """A private name (``_x``, module or attribute) of one package used from another: make it public where it
    is shared. ``known``: ``(importing module, name) -> why`` entries still owned elsewhere."""
    out = []
    for e in edges:
        private = [n for n in e.names if n.startswith("_") and not n.startswith("__")]
        if not private or package_of(e.src) == package_of(e.dst):
            continue
        for n in private:
            if (known or {}).get((e.src, n)):
                continue
            out.append(f"{e.src} uses {e.dst}'s private name {n} at {e.where()}: make it public where it is shared "
                       f"({package_of(e.src)} -> {package_of(e.dst)})")
    return out


def device_closure(edges: list[Edge], mods, entries) -> dict[str, Edge | None]:
    """Every module the device loads from ``entries``: their module-level imports, transitively, plus each
    module's parent packages (Python runs every ``__init__`` on the way). Function-local imports and registry
    strings are not followed (they run only on the branch that needs them; :func:`device_violations` checks
    the device files' own). Returns module -> the edge that first reached it (None: an entry or a parent)."""
    by_src: dict[str, list[Edge]] = {}
    for e in edges:
        if not e.local and e.how == "import":
            by_src.setdefault(e.src, []).append(e)
    reached: dict[str, Edge | None] = {}
    todo: list[tuple[str, Edge | None]] = [(m, None) for m in entries]
    while todo:
        m, via = todo.pop()
        if m in reached:
            continue
        reached[m] = via
        parts = m.split(".")
        todo += [(".".join(parts[:i]), via) for i in range(1, len(parts)) if ".".join(parts[:i]) in mods]
        todo += [(e.dst, e) for e in by_src.get(m, [])]
    return reached


def device_load_violations(edges: list[Edge], mods, entries=None) -> list[str]:
    """What ``lightcl predict`` (through ``lightcl.cli``) and the robot example load at module level must be the
    engine, the package roots on the way, the CLI's engine-only helpers and the device files themselves."""
    entries = list(entries if entries is not None else (*DEVICE_SIDE, *DEVICE_ENTRY))
    allowed = set(DEVICE_SIDE) | set(DEVICE_HELPERS) | set(DEVICE_ENTRY) | set(DEVICE_PACKAGES)
    out = []
    for m, via in sorted(device_closure(edges, mods, entries).items()):
        if _within(m, DEVICE_OK) or m in allowed:
            continue
        how = f"reached by {via.src} -> {m} at {via.where()}" if via else "a parent package of a device file"
        out.append(f"the device loads {m} ({how}); at module level the device side may load only {DEVICE_OK}, "
                   f"the CLI entry ({', '.join(sorted(DEVICE_ENTRY))}) and its engine-only helpers")
    return out


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
    mods, edges, _ = graph
    for name, rel in {**DEVICE_SIDE, **DEVICE_HELPERS, **DEVICE_ENTRY}.items():
        assert (ROOT / rel).is_file(), f"device-side file {rel} is gone: update DEVICE_SIDE"
    bad = device_violations(edges) + device_load_violations(edges, mods)
    assert not bad, "\n".join(bad)


def test_no_private_names_across_packages(graph):
    _, edges, _ = graph
    bad = private_violations(edges, KNOWN_PRIVATE)
    assert not bad, "\n".join(bad)
    used = {(e.src, n) for e in edges for n in e.names}
    gone = [k for k in KNOWN_PRIVATE if k not in used]
    assert not gone, f"KNOWN_PRIVATE entries no longer used; delete them: {gone}"


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


# --------------------------------------------------------------------------- each gap, shown failing on a plant
_CLEAN = {
    "engine/__init__.py": "", "engine/errors.py": "", "engine/learner.py": "from .errors import E\n",
    "data/__init__.py": "", "data/errors.py": "from lightcl.engine.errors import E\n",
    "export/__init__.py": "", "export/zoo.py": "def split_index(m, s):\n    return 0\n_split_index = split_index\n",
    "bench/__init__.py": "",
    "bench/suite.py": "RUN_ONE = 'lightcl.bench.suite:run_one'\ndef run_one(spec):\n    pass\n"
                      "def run(jobs):\n    from lightcl.bench.executors import run_local\n",
    "bench/executors.py": "def run_local(jobs, target):\n    from lightcl.bench.worker import run_worker\n",
    "bench/worker.py": "", "bench/methods/__init__.py": "",
    "bench/methods/ref.py": "from lightcl.export.zoo import split_index\n",
    "lightcl/__init__.py": "import importlib\n_EXPORTS = {'LightCL': 'lightcl.engine.learner', "
                           "'DatasetNotFoundError': 'lightcl.data.errors'}\n"
                           "def __getattr__(n):\n    return importlib.import_module(_EXPORTS[n])\n",
    "lightcl/cli.py": "import importlib\nVERBS = {'predict': 'lightcl.commands.predict', 'bench': 'lightcl.commands.bench'}\n"
                      "from lightcl.engine.errors import E\n",
    "lightcl/__main__.py": "from lightcl.cli import main\n",
    "lightcl/commands/__init__.py": "", "lightcl/commands/_args.py": "from lightcl.engine.errors import E\n",
    "lightcl/commands/_safety.py": "", "lightcl/commands/bench.py": "from lightcl.bench.suite import run\n",
    "lightcl/commands/predict.py": "from lightcl.commands import _args\n"
                                  "def run():\n    from lightcl.engine.learner import L\n",
}


def _check(root: Path) -> dict[str, list[str]]:
    mods, edges, problems = build_graph(root)
    return {"problems": problems, "layers": layer_violations(edges),
            "cycles": [describe_cycle(c) for c in find_cycles(mods, edges)],
            "private": private_violations(edges), "device": device_violations(edges) + device_load_violations(edges, mods)}


def _plant(tmp_path: Path, files: dict[str, str]) -> dict[str, list[str]]:
    return _check(_fake_repo(tmp_path, {**_CLEAN, **files}))


def test_the_clean_plant_passes(tmp_path):
    assert _plant(tmp_path, {}) == {"problems": [], "layers": [], "cycles": [], "private": [], "device": []}


def test_plant_module_attr_string_closes_a_cycle(tmp_path):
    """The executors naming ``"lightcl.bench.suite:run_one"`` while the suite imports the executors: a cycle the
    scanner sees only because it reads ``"module:attr"`` strings (the suite <-> executors cycle of issue 20)."""
    got = _plant(tmp_path, {"bench/executors.py": "TARGET = 'lightcl.bench.suite:run_one'\n"})
    assert len(got["cycles"]) == 1, got
    assert "lightcl.bench.executors -> lightcl.bench.suite [bench/executors.py:1 (string import)]" in got["cycles"][0]
    # a stale target is reported; a relative one resolves against the package
    got = _plant(tmp_path, {"bench/worker.py": "T = 'lightcl.bench.gone:f'\n",
                            "bench/methods/__init__.py": "T = '.ref:thing'\n",
                            "bench/methods/ref.py": "from lightcl.bench.methods import x\n"})
    assert any("'lightcl.bench.gone:f'" in p for p in got["problems"]), got
    assert any("lightcl.bench.methods -> lightcl.bench.methods.ref" in c for c in got["cycles"]), got


def test_plant_root_reexport_is_not_rank_zero(tmp_path):
    """``from lightcl import DatasetNotFoundError`` imports lightcl.data.errors (the root's lazy re-export):
    from the engine that is engine -> data, though the root itself ranks with the engine."""
    got = _plant(tmp_path, {"engine/learner.py": "from lightcl import DatasetNotFoundError\n"})
    assert len(got["layers"]) == 1 and "lightcl.engine.learner -> lightcl.data.errors" in got["layers"][0], got
    ok = _plant(tmp_path, {"engine/learner.py": "from lightcl import LightCL, __version__\n"})
    assert ok["layers"] == [], ok
    # the root itself may re-export only the engine and lightcl.data.errors
    got = _plant(tmp_path, {"lightcl/__init__.py": _CLEAN["lightcl/__init__.py"].replace(
        "'lightcl.data.errors'", "'lightcl.export.zoo'")})
    assert any("package root imports lightcl.export.zoo" in v for v in got["layers"]), got


def test_plant_private_names_across_packages(tmp_path):
    """``from lightcl.export.zoo import _split_index`` and ``zoo._split_index`` from bench are refused; the same
    name inside its own package, or a public one, is fine."""
    got = _plant(tmp_path, {
        "bench/methods/ref.py": "from lightcl.export.zoo import _split_index\n",
        "bench/worker.py": "from lightcl.export import zoo\ndef k(m):\n    return zoo._split_index(m, 'x')\n",
        "export/other.py": "from lightcl.export.zoo import _split_index\n",  # same package: fine
        "bench/executors.py": "from lightcl.bench.suite import RUN_ONE\nfrom lightcl.bench.worker import _x\n"})
    assert len(got["private"]) == 2, got["private"]
    assert all("private name _split_index" in v and "bench -> export" in v for v in got["private"])
    assert {v.split(" uses ")[0] for v in got["private"]} == {"lightcl.bench.methods.ref", "lightcl.bench.worker"}
    # a private module of another package counts too (the CLI's helpers are the CLI's own)
    got = _plant(tmp_path, {"bench/worker.py": "from lightcl.commands import _args\n"})
    assert len(got["private"]) == 1 and "_args" in got["private"][0], got


def test_plant_cli_device_files(tmp_path):
    """The CLI the device runs through: module-level imports of cli.py / commands/__init__.py, and anything
    predict.py imports (even lazily, even through a helper), must stay off export/ and bench/."""
    got = _plant(tmp_path, {"lightcl/commands/predict.py": "def run():\n    from lightcl.export.zoo import split_index\n"})
    assert len(got["device"]) == 1 and "device-side lightcl.commands.predict imports lightcl.export.zoo" in got["device"][0]
    got = _plant(tmp_path, {"lightcl/cli.py": "from lightcl.export.zoo import split_index\n"})
    assert any("the device loads lightcl.export.zoo (reached by lightcl.cli" in v for v in got["device"]), got
    got = _plant(tmp_path, {"lightcl/commands/__init__.py": "import lightcl.bench.suite\n"})
    assert any("the device loads lightcl.bench.suite (reached by lightcl.commands" in v for v in got["device"]), got
    # transitively: predict -> an engine-only helper -> the engine -> bench would load bench on the device
    got = _plant(tmp_path, {"engine/errors.py": "from lightcl.bench.worker import w\n"})
    assert any("the device loads lightcl.bench.worker (reached by lightcl.engine.errors" in v for v in got["device"]), got
    assert got["layers"]  # (and it is a layer violation, too)
