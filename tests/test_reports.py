"""The report built end to end from the smoke corpus (generate -> analyze -> report, through the CLI).

Most analyses are "not testable" on 4 tiny runs: the report must say so in place of a plot,
and every number it does quote must equal the one in summary.json.
"""

from __future__ import annotations

import html
import json
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from stabilitybench.analysis.summary import Status
from stabilitybench.reports.figures import FIGURES
from stabilitybench.reports.text import fmt, parse, resolve


class Spans(HTMLParser):
    """Collect ``<span class="num" data-ptr=... data-kind=...>text</span>`` and every src/href."""

    def __init__(self) -> None:
        super().__init__()
        self.nums: list[tuple[str, str, int, str]] = []
        self.refs: set[str] = set()
        self._open: tuple[str, str, int] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for k in ("src", "href"):
            if a.get(k):
                self.refs.add(str(a[k]))
        if tag == "span" and a.get("class") == "num":
            self._open = (str(a["data-ptr"]), str(a.get("data-kind") or "f"), int(a.get("data-digits") or 2))
            self._text = ""

    def handle_data(self, data: str) -> None:
        if self._open:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._open:
            self.nums.append((*self._open, self._text))
            self._open = None


def check_numbers(index: Path, summary: dict) -> int:
    """Every quoted number equals its summary.json value (as displayed, and as a number); returns the count."""
    p = Spans()
    p.feed(index.read_text())
    for ptr, kind, digits, text in p.nums:
        value = resolve(summary, ptr)
        assert text == fmt(value, digits, kind), (ptr, text, value)
        if text == "n/a":
            assert value is None or value != value, (ptr, value)
        elif kind == "g":
            assert parse(text) == pytest.approx(value, rel=10 ** (1 - digits)), (ptr, text, value)
        else:
            tol = 0.5 * 10 ** -digits * (0.01 if kind == "pct" else 1) + 1e-12
            assert abs(parse(text, kind) - value) <= tol, (ptr, text, value)
    return len(p.nums)


@pytest.fixture(scope="module")
def smoke_report(smoke_analyzed: tuple[Path, Path],
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    from stabilitybench.cli import app

    _, results = smoke_analyzed  # the session's smoke corpus, analyzed once (conftest)
    out = tmp_path_factory.mktemp("report")
    from typer.testing import CliRunner

    res = CliRunner().invoke(app, ["report", "--results", str(results), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "index.html" in res.output
    return out, results, json.loads((results / "summary.json").read_text())


def test_every_figure_exists_is_nonempty_and_referenced(smoke_report) -> None:
    out, _, _ = smoke_report
    p = Spans()
    p.feed((out / "index.html").read_text())
    md = (out / "index.md").read_text()
    assert len(FIGURES) == 14
    for spec in FIGURES:
        for ext in ("png", "svg"):
            f = out / "figures" / f"{spec.stem}.{ext}"
            assert f.exists() and f.stat().st_size > 1000, f
            assert f"figures/{spec.stem}.{ext}" in p.refs
            assert f"figures/{spec.stem}.{ext}" in md
        assert (out / "figures" / f"{spec.stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_caption_and_table_numbers_equal_summary(smoke_report) -> None:
    out, _, summary = smoke_report
    n = check_numbers(out / "index.html", summary)
    assert n >= 20  # dose-response table, PCA, log-rank, the collapse rule...


def test_not_testable_analyses_say_so_instead_of_plotting(smoke_report) -> None:
    out, _, summary = smoke_report
    page = (out / "index.html").read_text()
    ew = summary["early_warning"]  # 4 runs, one seed: no early-warning fold
    assert ew["status"] == "not_testable"
    for fid in ("F7", "F8"):
        block = html.unescape(page.split(f'<figure id="{fid}">')[1].split("</figure>")[0])
        assert "too little data" in block and ew["reason"] in block
    stoch = summary["regularities"]["stochasticity_buffer"]
    assert stoch["status"] == "not_testable"
    f10 = html.unescape(page.split('<figure id="F10">')[1].split("</figure>")[0])
    assert "too little data" in f10 and stoch["reason"] in f10


def test_caveats_and_markdown_twin(smoke_report) -> None:
    out, _, summary = smoke_report
    page, md = html.unescape((out / "index.html").read_text()), (out / "index.md").read_text()
    assert "Read this first: caveats" in page and "Read this first: caveats" in md
    for c in summary["headline"]["caveats"]:
        assert c in md
    assert Status.from_json(summary["early_warning"]).text in md
    for spec in FIGURES:
        assert f"### {spec.id} · {spec.title}" in md


def test_missing_results_is_a_one_line_error(tmp_path: Path, capsys, monkeypatch) -> None:
    from stabilitybench.cli import main

    monkeypatch.setattr(sys, "argv", ["stabilitybench", "report", "--results", str(tmp_path / "nope"),
                                      "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "nope" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_output_path_that_is_a_file_is_an_error(tmp_path: Path, smoke_report) -> None:
    from stabilitybench.reports.errors import OutputPathError
    from stabilitybench.reports.report import build_report

    _, results, _ = smoke_report
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputPathError):
        build_report(results, f)



def test_f10_panels_colour_each_stochasticity_level_alike() -> None:
    """The per-level panel and the dose-response panel of F10 give a level the same colour (they once indexed the
    palette by level order in one and alphabetically in the other, so 'low' was blue on the left, green on the
    right)."""
    import polars as pl
    from matplotlib.colors import to_hex

    from stabilitybench.reports.figures.stochasticity import fig_stochasticity, fig_stochasticity_dose
    levels = ["low", "default", "high"]
    buf = {"collapse_probability": [{"level": lv, "value": 0.2 + 0.1 * i, "n": 8, "ci_low": 0.1, "ci_high": 0.5}
                                    for i, lv in enumerate(levels)],
           "cox_hazard_ratios": [], "cox_status": {"status": "ok"}}
    dose = pl.DataFrame([{"stochasticity": lv, "perturbation": "lr_spike", "algo": "ppo", "magnitude": m,
                          "collapse_probability": 0.5} for lv in reversed(levels) for m in (10.0, 100.0)])
    left = fig_stochasticity(buf)
    right = fig_stochasticity_dose(dose)
    left_colour = {levels[i]: to_hex(c.get_children()[0].get_color()) for i, c in enumerate(left.containers)}
    right_colour = {line.get_label(): to_hex(line.get_color()) for line in right.get_legend().get_lines()
                    if line.get_label() in levels}
    assert left_colour == right_colour and len(set(left_colour.values())) == 3
