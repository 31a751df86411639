"""Numbers, captions and tables of the report, every number read from ``summary.json``.

A quoted number is a :class:`Num`: the value, its JSON pointer into summary.json (RFC 6901)
and its format. The HTML renders it as ``<span class="num" data-ptr="...">`` so a test (or
a reader) can trace every number back to its source; the Markdown renders the text alone.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stabilitybench.analysis.summary import Status, Summary
from stabilitybench.reports.data import finite

Fragment = "str | Num"


@dataclass(frozen=True)
class Num:
    """A number quoted from summary.json: ``ptr`` (JSON pointer), ``value``, format ``kind`` and ``digits``.

    ``kind``: ``"f"`` fixed decimals, ``"g"`` significant digits, ``"pct"`` a fraction shown in percent.
    """

    ptr: str
    value: Any
    digits: int = 2
    kind: str = "f"

    @property
    def text(self) -> str:
        return fmt(self.value, self.digits, self.kind)


def fmt(value: Any, digits: int = 2, kind: str = "f") -> str:
    """Display text of a summary number (``n/a`` for null / non-finite)."""
    if not finite(value):
        return "n/a"
    v = float(value)
    if kind == "pct":
        return f"{100 * v:.{digits}f}%"
    if kind == "g":
        return f"{v:.{digits}g}"
    return f"{v:.{digits}f}"


def parse(text: str, kind: str = "f") -> float | None:
    """Inverse of :func:`fmt` (for tests): the number a displayed text stands for."""
    if text == "n/a":
        return None
    return float(text.rstrip("%")) / 100 if kind == "pct" else float(text)


def escape_ptr(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def resolve(doc: Any, ptr: str) -> Any:
    """The value at JSON pointer ``ptr`` in ``doc`` (KeyError / IndexError when absent)."""
    node = doc
    for raw in ptr.split("/")[1:]:
        key = raw.replace("~1", "/").replace("~0", "~")
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node


class Source:
    """Numbers out of the typed summary (:class:`stabilitybench.analysis.summary.Summary`) as :class:`Num`.

    Strict: :meth:`get` and :meth:`num` raise :class:`~stabilitybench.analysis.summary.SummaryFieldError` for an
    absent field, so a renamed summary key stops the report instead of printing "n/a" (a field
    that is present but null still shows as "n/a"). :meth:`optional` is for fields absent by design.
    """

    def __init__(self, summary: Summary) -> None:
        self.summary = summary

    def get(self, *path: str | int) -> Any:
        return self.summary.get(*path)

    def has(self, *path: str | int) -> bool:
        return self.summary.has(*path)

    def optional(self, *path: str | int) -> Any:
        return self.summary.optional(*path)

    def status(self, *path: str | int) -> Status | None:
        """The status of the entry at ``path`` (which must exist), or None when it has none."""
        return self.summary.status(*path)

    def ran(self, *path: str | int) -> bool:
        """Whether the entry at ``path`` exists and did not fail: no status, or an ok one (a stage that ran writes
        ``status: ok``; one that could not run, its reason)."""
        if not self.has(*path):
            return False
        st = self.status(*path)
        return st is None or st.ok

    def num(self, *path: str | int, digits: int = 2, kind: str = "f") -> Num:
        """The number at ``path`` (which must exist) with its JSON pointer."""
        value = self.get(*path)
        return Num("".join(f"/{escape_ptr(str(k))}" for k in path), value, digits, kind)


# --------------------------------------------------------------------------- rendering
def render_html(parts: Sequence[Any]) -> str:
    out = []
    for p in parts:
        if isinstance(p, Num):  # every quoted number has its pointer (Source.num is strict)
            ptr = html.escape(p.ptr)
            out.append(f'<span class="num" data-ptr="{ptr}" data-kind="{p.kind}" data-digits="{p.digits}" '
                       f'title="summary.json {ptr}">{html.escape(p.text)}</span>')
        else:
            out.append(html.escape(str(p)))
    return "".join(out)


def render_md(parts: Sequence[Any]) -> str:
    return "".join(p.text if isinstance(p, Num) else str(p) for p in parts).replace("|", "\\|")


def cell(*parts: Any) -> list[Any]:
    """A table cell made of fragments."""
    return list(parts)


def ci(src: Source, *path: str | int, digits: int = 2, kind: str = "f") -> list[Any]:
    """``v [lo, hi]`` of a summary number ``{value, ci_low, ci_high}`` (just ``v`` without a CI)."""
    v = src.num(*path, "value", digits=digits, kind=kind)
    lo, hi = src.num(*path, "ci_low", digits=digits, kind=kind), src.num(*path, "ci_high", digits=digits, kind=kind)
    if finite(lo.value) and finite(hi.value):
        return [v, " [", lo, ", ", hi, "]"]
    return [v]


@dataclass
class Table:
    """A headline table: a caption, a header and rows of cells (each a list of fragments)."""

    title: str
    header: list[str]
    rows: list[list[list[Any]]]
    note: list[Any] | None = None

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{render_html(c)}</td>" for c in r) + "</tr>" for r in self.rows)
        note = f'<p class="note">{render_html(self.note)}</p>' if self.note else ""
        return (f'<div class="table"><h3>{html.escape(self.title)}</h3><table><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table>{note}</div>")

    def md(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" for _ in self.header) + "|"]
        lines += ["| " + " | ".join(render_md(c) for c in r) + " |" for r in self.rows]
        if self.note:
            lines += ["", render_md(self.note)]
        return "\n".join(lines) + "\n"
