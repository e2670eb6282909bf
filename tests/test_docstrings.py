"""Docstrings hold LaTeX for the API pages: one with a backslash must be a raw string, so that
``\\frac`` stays ``\\frac`` (not a form feed) and ``\\nabla`` stays ``\\nabla`` (not a new line)."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import fedunlearn

PACKAGE = Path(fedunlearn.__file__).parent


def docstring_starts(tree: ast.AST) -> set[tuple[int, int]]:
    starts = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                starts.add((first.value.lineno, first.value.col_offset))
    return starts


def test_docstrings_with_backslashes_are_raw():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        starts = docstring_starts(ast.parse(source))
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.STRING and token.start in starts and "\\" in token.string:
                prefix = token.string[: len(token.string) - len(token.string.lstrip("rRbBuUfF"))]
                if "r" not in prefix.lower():
                    offenders.append(f"{path.relative_to(PACKAGE)}:{token.start[0]}")
    assert offenders == []
