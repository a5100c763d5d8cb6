"""The package's layers: lower packages never import higher ones (issue 23's back-edges)."""

import ast
from pathlib import Path

import cloc_mllm

PACKAGE = Path(cloc_mllm.__file__).parent
# package -> packages it must never import (directly or via a lazy import inside a function)
FORBIDDEN = {
    "data": ("mllm", "eval", "training", "pipeline", "vesl", "demo"),
    "training": ("eval", "mllm", "pipeline", "demo"),
    "mllm": ("eval", "pipeline", "demo"),
}


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, relative imports resolved."""
    package = ".".join(("cloc_mllm", *path.relative_to(PACKAGE).parent.parts))
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(filter(None, (base, node.module)))
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


def test_no_back_edges_between_packages():
    offenders = []
    for layer, above in FORBIDDEN.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for name in imported_modules(path):
                if any(name == f"cloc_mllm.{p}" or name.startswith(f"cloc_mllm.{p}.") for p in above):
                    offenders.append(f"{path.relative_to(PACKAGE)} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_the_checker_sees_relative_and_lazy_imports():
    module = PACKAGE / "data" / "synthetic.py"
    assert "cloc_mllm.box_text.format_box" in imported_modules(module)  # `from ..box_text import format_box`
    runner = imported_modules(PACKAGE / "eval" / "runner.py")
    assert "cloc_mllm.mllm.inference" in runner  # imported inside a function
