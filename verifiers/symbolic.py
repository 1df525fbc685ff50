"""Symbolic answers to a canonical key with sympy, without ``eval``.

sympy's own ``parse_expr`` evaluates Python, so it must never see candidate text. This module
parses a small arithmetic grammar itself and builds sympy objects directly:

    expr   := term (("+" | "-") term)*
    term   := unary (("*" | "/" | implicit) unary)*       # "2x", "2(x+1)"
    unary  := ("+" | "-") unary | power
    power  := atom (("^" | "**") unary)?
    atom   := number | name | function "(" expr ")" | "(" expr ")"

Names are single letters (symbols), ``pi`` and ``e``; functions are listed in ``_FUNCTIONS``.
A little LaTeX (``\\frac``, ``\\sqrt``, ``\\cdot``, ``\\times``, ``\\pi``, braces) is rewritten
first, since boxed answers use it. Inputs are short and exponents bounded, so nothing here can
run away (``9^9^9^9`` is refused, not computed). Equal keys mean sympy found the expressions
equal after expansion (``2x+1`` = ``1+2*x``, ``1/2`` = ``0.5``, ``(x+1)^2`` = ``x^2+2x+1``).
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal
from typing import Any

MAX_CHARS = 100
MAX_EXPONENT = 64
MAX_SYMBOLIC_GROWTH = 16
"""Bound on the product of nested exponents over symbols, so expansion stays small."""
MAX_EXPAND_ATOMS = 3
"""Expanding a power of a sum of many symbols explodes; with more names than this, skip it."""
MAX_KEY_CHARS = 200
MAX_DIGITS = 2000
"""A numeric power may not produce more digits than this."""

_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|([A-Za-z]+)|(\*\*|[-+*/^()]))")
_ALLOWED = re.compile(r"^[0-9A-Za-z.+\-*/^()\s]+$")
_LATEX = (
    (re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}"), r"((\1)/(\2))"),
    (re.compile(r"\\sqrt\{([^{}]*)\}"), r"sqrt(\1)"),
    (re.compile(r"\\(?:cdot|times)"), "*"),
    (re.compile(r"\\(?:left|right|,|!|;)"), ""),
    (re.compile(r"\\pi\b"), "pi"),
)


class _Unparsable(ValueError):
    """Not an expression this grammar reads, or one too big to canonicalise safely."""


def _sympy() -> Any:
    # Imported on first use: it takes a moment, and most answers never need it.
    import sympy  # type: ignore[import-untyped]

    return sympy


def _from_latex(text: str) -> str:
    for _ in range(4):  # nested \frac{\frac{..}{..}}{..} unwraps from the inside out
        before = text
        for pattern, replacement in _LATEX:
            text = pattern.sub(replacement, text)
        if text == before:
            break
    return text.replace("{", "(").replace("}", ")")


class _Parser:
    """Recursive descent over the tokens; builds sympy objects, tracking exponent growth."""

    def __init__(self, text: str) -> None:
        self.sp = _sympy()
        self.tokens = self._tokenize(text)
        self.pos = 0

    @staticmethod
    def _tokenize(text: str) -> list[str]:
        tokens, pos = [], 0
        text = text.strip()
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None or match.end() == pos:
                raise _Unparsable(text[pos:])
            tokens.append(match.group(match.lastindex or 0))
            pos = match.end()
            while pos < len(text) and text[pos].isspace():
                pos += 1
        return tokens

    def parse(self) -> Any:
        expr, _ = self._expr()
        if self.pos != len(self.tokens):
            raise _Unparsable(f"unexpected {self.tokens[self.pos]!r}")
        return expr

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self) -> str:
        token = self._peek()
        if token is None:
            raise _Unparsable("unexpected end")
        self.pos += 1
        return token

    def _expr(self) -> tuple[Any, int]:
        left, growth = self._term()
        while self._peek() in ("+", "-"):
            op = self._take()
            right, g = self._term()
            left = left + right if op == "+" else left - right
            growth = max(growth, g)
        return left, growth

    def _term(self) -> tuple[Any, int]:
        left, growth = self._unary()
        while (token := self._peek()) is not None and token not in ("+", "-", ")", "^", "**"):
            if token in ("*", "/"):
                self._take()
            right, g = self._unary()
            if token == "/":
                if right == 0:
                    raise _Unparsable("division by zero")
                left = left / right
            else:
                left = left * right
            growth = max(growth, g)
        return left, growth

    def _unary(self) -> tuple[Any, int]:
        if self._peek() in ("+", "-"):
            sign = self._take()
            value, growth = self._unary()
            return (-value if sign == "-" else value), growth
        return self._power()

    def _power(self) -> tuple[Any, int]:
        base, growth = self._atom()
        if self._peek() not in ("^", "**"):
            return base, growth
        self._take()
        exponent, exp_growth = self._unary()
        if exponent.is_Number:
            if abs(exponent) > MAX_EXPONENT:
                raise _Unparsable("exponent too large")
            if base.free_symbols:
                growth *= max(1, int(abs(exponent)))
                if growth > MAX_SYMBOLIC_GROWTH:
                    raise _Unparsable("power too large to expand")
            elif base.is_Number and base != 0:
                digits = float(abs(exponent)) * abs(float(self.sp.log(abs(base), 10)))
                if digits > MAX_DIGITS:
                    raise _Unparsable("power too large")
        return base**exponent, max(growth, exp_growth)

    def _atom(self) -> tuple[Any, int]:
        token = self._take()
        sp = self.sp
        if token == "(":
            value = self._expr()
            if self._take() != ")":
                raise _Unparsable("unbalanced parentheses")
            return value
        if token[0].isdigit() or token[0] == ".":
            return sp.Rational(token), 1  # exact: 0.5 is 1/2, never a float
        if token in _FUNCTIONS:
            if self._take() != "(":
                raise _Unparsable(f"{token} needs parentheses")
            arg, growth = self._expr()
            if self._take() != ")":
                raise _Unparsable("unbalanced parentheses")
            return getattr(sp, _FUNCTIONS[token])(arg), growth
        if token == "pi":
            return sp.pi, 1
        if token == "e":
            return sp.E, 1
        if len(token) == 1 and token.isalpha():
            return sp.Symbol(token), 1
        raise _Unparsable(f"unknown name {token!r}")


_FUNCTIONS = {
    "sqrt": "sqrt",
    "exp": "exp",
    "log": "log",
    "ln": "log",
    "sin": "sin",
    "cos": "cos",
    "tan": "tan",
}


def _format_number(value: Any) -> str | None:
    """A rational as ``normalise`` writes numbers (``0.5``, ``120``), else None."""
    if not value.is_Rational:
        return None
    p, q = int(value.p), int(value.q)
    stripped = q
    for factor in (2, 5):
        while stripped % factor == 0:
            stripped //= factor
    if stripped != 1:
        return None  # 1/3 has no finite decimal: keep sympy's "1/3"
    number = (Decimal(p) / Decimal(q)).normalize()
    return format(number, "f")


def looks_symbolic(answer: str) -> bool:
    """Worth handing to sympy: an operator or digit in plain math characters (not a word)."""
    if len(answer) > 4 * MAX_CHARS:  # LaTeX rewriting never shrinks text this much
        return False
    text = _from_latex(answer) if "\\" in answer or "{" in answer else answer
    return (
        len(text) <= MAX_CHARS
        and _ALLOWED.match(text) is not None
        and any(c.isdigit() or c in "+-*/^()" for c in text)
    )


@functools.lru_cache(maxsize=4096)
def canonical(answer: str) -> str | None:
    """A key equal for sympy-equal expressions, or None when ``answer`` does not parse."""
    if not looks_symbolic(answer):
        return None
    text = _from_latex(answer) if "\\" in answer or "{" in answer else answer
    sp = _sympy()
    try:
        expr = _Parser(text).parse()
        if len(expr.atoms(sp.Symbol, sp.NumberSymbol)) <= MAX_EXPAND_ATOMS:
            expr = sp.expand(expr)
    except (_Unparsable, ArithmeticError, TypeError, ValueError, RecursionError):
        return None
    if expr.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
        return None
    number = _format_number(expr)
    key = number if number is not None else str(sp.sstr(expr, order="lex"))
    return key if len(key) <= MAX_KEY_CHARS else None
