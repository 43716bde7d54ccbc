"""``-k`` expressions, evaluated with whole-word matching for machine names.

Plain ``-k pc`` would select every ``q35-pciehp`` test too ("pc" is a substring of "pciehp"); a
person who types ``-k pc`` means the pc machine. So the plugin applies ``-k`` itself when the
expression names a machine: machine names match whole parts of a test's parameter id, every
other word matches as pytest's own ``-k`` does (a case-insensitive substring of the test's
name, its parents' names, its extra keywords, its function's attributes and its markers).

The grammar is pytest's: ``or``, ``and``, ``not``, parentheses, identifiers.

>>> expr = parse("nic and pc and not virtio")
>>> evaluate(expr, lambda word: word in ("nic", "pc"))
True
"""

from __future__ import annotations

import re
from typing import Callable, Union
import pytest

Expr = Union[str, tuple]  # an identifier, or ("not", e) / ("and", a, b) / ("or", a, b)

_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")


class KeywordSyntaxError(ValueError):
    pass


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            break
        out.append(m.group(1))
        pos = m.end()
    return out


def parse(text: str) -> Expr:
    tokens = _tokens(text)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise KeywordSyntaxError(f"-k {text!r}: the expression ends too early")
        pos += 1
        return tokens[pos - 1]

    def or_expr() -> Expr:
        left = and_expr()
        while peek() == "or":
            take()
            left = ("or", left, and_expr())
        return left

    def and_expr() -> Expr:
        left = not_expr()
        while peek() == "and":
            take()
            left = ("and", left, not_expr())
        return left

    def not_expr() -> Expr:
        token = take()
        if token == "not":
            return ("not", not_expr())
        if token == "(":
            inner = or_expr()
            if take() != ")":
                raise KeywordSyntaxError(f"-k {text!r}: a parenthesis is not closed")
            return inner
        if token in ("and", "or", ")"):
            raise KeywordSyntaxError(f"-k {text!r}: unexpected {token!r}")
        return token

    expr = or_expr()
    if pos != len(tokens):
        raise KeywordSyntaxError(f"-k {text!r}: unexpected {tokens[pos]!r}")
    return expr


def evaluate(expr: Expr, matches: Callable[[str], bool]) -> bool:
    if isinstance(expr, str):
        return matches(expr)
    if expr[0] == "not":
        return not evaluate(expr[1], matches)
    if expr[0] == "and":
        return evaluate(expr[1], matches) and evaluate(expr[2], matches)
    return evaluate(expr[1], matches) or evaluate(expr[2], matches)


def identifiers(expr: Expr) -> set[str]:
    if isinstance(expr, str):
        return {expr}
    return set().union(*(identifiers(e) for e in expr[1:]))


def item_names(item) -> set[str]:
    """The names pytest's own ``-k`` matches against, from pytest's public node API."""
    names = set()
    for node in item.listchain():
        if isinstance(node, pytest.Session) or (isinstance(node, pytest.Directory)
                                                and isinstance(node.parent, pytest.Session)):
            continue  # the root folder's name (tmp-123) would match anything
        names.add(node.name)
    names.update(item.listextrakeywords())
    names.update(getattr(getattr(item, "function", None), "__dict__", {}))
    names.update(mark.name for mark in item.iter_markers())
    return names


def matcher(item, exact: set[str]) -> Callable[[str], bool]:
    """How ``-k`` words match ``item``: words in ``exact`` match whole parts of its parameter
    id (``emulated-q35-pciehp-e1000e``), the others as substrings of its names."""
    callspec = getattr(item, "callspec", None)
    parts = set(callspec.id.lower().split("-")) if callspec else set()
    names = [n.lower() for n in item_names(item)]

    def matches(word: str) -> bool:
        word = word.lower()
        if word in exact:
            return word in parts
        return any(word in name for name in names)
    return matches
