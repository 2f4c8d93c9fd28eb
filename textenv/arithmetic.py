"""Arithmetic for the calculator tool: a bounded evaluator over a whitelist of :mod:`ast` nodes (never
``eval``), the number format its answers use, and :func:`calculate`, the tool function itself
(:class:`textenv.chat_tasks.CalculatorTask` gives it to the agent through :mod:`textenv.tools`)."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_EXPRESSION_CHARS = 200
MAX_MAGNITUDE = 1e15


def safe_arithmetic(expression: str) -> float:
    """The value of an arithmetic expression: numbers, ``+ - * / // % **``, unary signs and parentheses.

    Parsed with :mod:`ast` and evaluated node by node over a whitelist (never ``eval``); names, calls,
    attributes and everything else raise ``ValueError``, as do division by zero, exponents above 64, and
    numbers or results that are not finite or beyond 1e15 in magnitude: whatever text it gets, it returns a
    bounded finite number or raises ``ValueError`` saying what was wrong.

    >>> safe_arithmetic("12 * (3 + 4)")
    84
    >>> safe_arithmetic("__import__('os')")
    Traceback (most recent call last):
    ValueError: not allowed in a calculation: Call
    >>> safe_arithmetic("0 ** -1")
    Traceback (most recent call last):
    ValueError: division by zero
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as error:
        raise ValueError(f"not an arithmetic expression: {error.msg}") from None
    except (RecursionError, MemoryError, ValueError):  # nesting too deep, a NUL byte
        raise ValueError("not an arithmetic expression") from None

    def bounded(number: Any) -> Any:
        if isinstance(number, complex) or not math.isfinite(number) or abs(number) > MAX_MAGNITUDE:
            raise ValueError(f"number out of range (the calculator works within +-{MAX_MAGNITUDE:.0e})")
        return number

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return bounded(node.value)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ValueError("exponent above 64")
            if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
                raise ValueError("division by zero")
            if isinstance(node.op, ast.Pow) and left == 0 and right < 0:
                raise ValueError("division by zero")
            try:
                return bounded(_BINARY[type(node.op)](left, right))
            except (ArithmeticError, OverflowError):  # a float power beyond the float range
                raise ValueError(
                    f"number out of range (the calculator works within +-{MAX_MAGNITUDE:.0e})"
                ) from None
        raise ValueError(f"not allowed in a calculation: {type(node).__name__}")

    try:
        return value(tree.body)
    except RecursionError:
        raise ValueError("expression nested too deeply") from None


def format_number(number: float) -> str:
    """``84.0`` -> ``"84"``, ``0.5`` -> ``"0.5"`` (at most 6 decimals)."""
    return str(int(number)) if float(number).is_integer() else f"{number:.6f}".rstrip("0")


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: numbers with + - * / // % ** and parentheses, e.g. "12*7"
    """
    return format_number(safe_arithmetic(expression))
