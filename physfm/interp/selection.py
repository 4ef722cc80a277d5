"""Select windows by their simulation parameters: ``"nu<0.003"``, ``"F==0.018 and k==0.051"``.

A small recursive-descent parser (never ``eval``)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" expr ")" | comparison
    comparison := operand (OP operand)+          chained like Python: 1e-3 <= nu < 3e-3
    operand    := NAME | NUMBER | 'string' | "string"
    OP         := < <= > >= == != (= is read as ==)

A NAME is looked up in the window's ``meta["params"]`` (the simulation parameters), then in the meta
itself (``dataset``, ``source_file``, ``trajectory``, ``start``, ``split``). A window lacking a name
the expression reads is not selected (so ``"nu<0.003"`` on a shard set mixing Navier–Stokes and
Gray–Scott picks Navier–Stokes windows); :func:`physfm.interp.activations.iter_windows` reports a
name that no window has. Numbers compare with a relative tolerance of 1e-6 for ``==``/``!=`` (file
names keep 6 significant digits).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from data_pipelines.errors import PhysfmError

OPERATORS = {"<", "<=", ">", ">=", "==", "!="}
_TOKEN = re.compile(
    r"""\s*(?:
    (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![A-Za-z_]) |
    (?P<string>'[^']*'|"[^"]*") |
    (?P<name>[A-Za-z_][A-Za-z0-9_]*) |
    (?P<op><=|>=|==|!=|<|>|=) |
    (?P<paren>[()])
)""",
    re.VERBOSE,
)
KEYWORDS = {"and", "or", "not"}


class SelectionError(PhysfmError, ValueError):
    """A selection expression that does not parse, or names a parameter a window does not have."""


def _tokenize(text: str) -> list[tuple[str, Any]]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise SelectionError(
                f"selection {text!r}: cannot read {text[pos:].strip()!r} (at character {pos})"
            )
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "number":
            tokens.append(("value", float(value)))
        elif kind == "string":
            tokens.append(("value", value[1:-1]))
        elif kind == "name":
            tokens.append(("kw", value) if value in KEYWORDS else ("name", value))
        elif kind == "op":
            tokens.append(("op", "==" if value == "=" else value))
        else:
            tokens.append(("paren", value))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, text: str):
        self.text, self.tokens, self.i = text, _tokenize(text), 0

    def peek(self) -> tuple[str, Any] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, Any]:
        token = self.peek()
        if token is None:
            raise SelectionError(f"selection {self.text!r}: ends too early")
        self.i += 1
        return token

    def parse(self):
        if not self.tokens:
            raise SelectionError("selection: empty expression")
        node = self.expr()
        if self.peek() is not None:
            raise SelectionError(f"selection {self.text!r}: unexpected {self.peek()[1]!r}")
        return node

    def expr(self):
        return self.left_assoc("or", self.and_expr)

    def and_expr(self):
        return self.left_assoc("and", self.not_expr)

    def left_assoc(self, keyword: str, operand):
        """``operand (keyword operand)*``, grouped from the left: ``a or b or c`` → ((a or b) or
        c)."""
        node = operand()
        while self.peek() == ("kw", keyword):
            self.take()
            node = (keyword, node, operand())
        return node

    def not_expr(self):
        token = self.peek()
        if token == ("kw", "not"):
            self.take()
            return ("not", self.not_expr())
        if token == ("paren", "("):
            self.take()
            node = self.expr()
            if self.take() != ("paren", ")"):
                raise SelectionError(f"selection {self.text!r}: missing ')'")
            return node
        return self.comparison()

    def operand(self):
        kind, value = self.take()
        if kind not in ("name", "value"):
            raise SelectionError(
                f"selection {self.text!r}: expected a name or a value, got {value!r}"
            )
        return (kind, value)

    def comparison(self):
        operands, ops = [self.operand()], []
        while self.peek() is not None and self.peek()[0] == "op":
            ops.append(self.take()[1])
            operands.append(self.operand())
        if not ops:
            raise SelectionError(
                f"selection {self.text!r}: {operands[0][1]!r} is not compared to anything (write e.g. nu<0.003)"
            )
        return ("cmp", operands, ops)


def _compare(a: Any, op: str, b: Any) -> bool:
    if isinstance(a, str) != isinstance(b, str):
        return op == "!="  # a string never equals a number
    if op in ("==", "!="):
        equal = math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0) if not isinstance(a, str) else a == b
        return equal if op == "==" else not equal
    if isinstance(a, str):
        raise SelectionError(f"selection: cannot order strings ({a!r} {op} {b!r})")
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


@dataclass(frozen=True)
class Selection:
    """A parsed selection; call it on a window's meta. ``Selection.everything()`` keeps all
    windows."""

    text: str
    tree: tuple | None

    @classmethod
    def everything(cls) -> Selection:
        return cls("", None)

    @property
    def names(self) -> set[str]:
        """Parameter/meta names the expression reads."""
        found: set[str] = set()

        def walk(node):
            if node[0] == "cmp":
                found.update(v for k, v in node[1] if k == "name")
            else:
                for child in node[1:]:
                    walk(child)

        if self.tree is not None:
            walk(self.tree)
        return found

    def __call__(self, meta: dict[str, Any]) -> bool:
        if self.tree is None:
            return True
        return not self.missing(meta) and self._eval(self.tree, meta)

    def missing(self, meta: dict[str, Any]) -> list[str]:
        """Names the expression reads that this window lacks."""
        params = meta.get("params") or {}
        return sorted(n for n in self.names if n not in params and (n not in meta or n == "params"))

    def _value(self, operand: tuple[str, Any], meta: dict[str, Any]) -> Any:
        kind, value = operand
        if kind == "value":
            return value
        params = meta.get("params") or {}
        if value in params:
            return params[value]
        if value in meta and value != "params":
            return meta[value]
        known = sorted(params) + [
            k for k in ("dataset", "source_file", "trajectory", "start", "split") if k in meta
        ]
        raise SelectionError(
            f"selection {self.text!r}: window of {meta.get('dataset', '?')!r} has no parameter "
            f"{value!r} (has: {', '.join(known)}); quote string values, e.g. dataset=='ns'"
        )

    def _eval(self, node: tuple, meta: dict[str, Any]) -> bool:
        kind = node[0]
        if kind == "or":
            return self._eval(node[1], meta) or self._eval(node[2], meta)
        if kind == "and":
            return self._eval(node[1], meta) and self._eval(node[2], meta)
        if kind == "not":
            return not self._eval(node[1], meta)
        operands, ops = node[1], node[2]
        values = [self._value(o, meta) for o in operands]
        return all(_compare(values[i], op, values[i + 1]) for i, op in enumerate(ops))

    def __str__(self) -> str:
        return self.text or "(all)"


def parse_selection(text: str | None) -> Selection:
    """Parse a selection expression; None or blank selects everything."""
    if text is None or not text.strip():
        return Selection.everything()
    return Selection(text.strip(), _Parser(text.strip()).parse())
