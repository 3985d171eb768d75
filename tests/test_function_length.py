"""No function in engine/, export/, data/ or bench/ runs over 100 lines unless its docstring says why
(issue 20: long functions hide several ideas; the reason must be written where the next reader looks)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("engine", "export", "data", "bench")
LIMIT = 100
REASON = "long because"  # a docstring sentence that starts so: "Long because ..."


def long_functions(root: Path = ROOT, limit: int = LIMIT) -> list[str]:
    found = []
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    doc = (ast.get_docstring(node) or "").lower()
                    if n > limit and REASON not in doc:
                        found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_no_function_over_100_lines_without_a_reason():
    assert long_functions() == []


def test_the_check_sees_a_planted_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(LIMIT + 1))
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "planted.py").write_text(f"def planted():\n{body}\n")
    (tmp_path / "engine" / "excused.py").write_text(
        f'def excused():\n    """Long because one table of cases reads best in one place."""\n{body}\n')
    for layer in LAYERS[1:]:
        (tmp_path / layer).mkdir()
    assert long_functions(tmp_path) == [f"engine/planted.py:1 planted ({LIMIT + 2} lines)"]
