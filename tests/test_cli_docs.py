"""The CLI and its documentation agree: every flag the docs use exists, every flag is in the CLI reference's
synopsis (docs/reference/cli.md), --version, help texts, and the generated results tables render."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib
import typer.main
from typer.testing import CliRunner

from stabilitybench.cli import app
from stabilitybench.docs import update
from stabilitybench.generate.matrix import available_profiles

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
#: The CLI reference page, whose first ```bash block is the synopsis of every command and flag.
CLI_PAGE = (ROOT / "docs/reference/cli.md").read_text()
#: Every page a user reads: the README and the documentation site's sources.
DOC_TEXTS = [README, *(p.read_text() for p in sorted((ROOT / "docs").rglob("*.md")))]
COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _flags(command: str) -> set[str]:
    return {o for p in COMMANDS[command].params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}


def _cli_block() -> dict[str, set[str]]:
    """Flags per command in the CLI reference's synopsis (a continuation line belongs to the command above)."""
    block = re.search(r"```bash\n(.*?)```", CLI_PAGE, re.S).group(1)
    found: dict[str, set[str]] = {}
    current = None
    for line in block.splitlines():
        m = re.match(r"stabilitybench\s+(\S+)", line)
        if m:
            current = m.group(1)
        code = line.split("  # ")[0]
        found.setdefault(current, set()).update(FLAG.findall(code.removeprefix(f"stabilitybench {current}")
                                                              if current != "--version" else ""))
    return found


def test_every_command_and_flag_is_in_the_cli_reference_synopsis() -> None:
    block = _cli_block()
    assert "--version" in block  # `stabilitybench --version`
    assert set(COMMANDS) <= set(block), set(COMMANDS) - set(block)
    for name in COMMANDS:
        assert _flags(name) - {"--help"} == block[name], name


def test_every_flag_the_docs_use_exists() -> None:
    uses: list[tuple[str, str]] = []
    for line in (line for text in DOC_TEXTS for line in text.splitlines()):
        for m in re.finditer(r"stabilitybench\s+([a-z][a-z-]*)([^`#]*)", line):
            uses += [(m.group(1), f) for f in FLAG.findall(m.group(2))]
        for m in re.finditer(r"`(generate|status|analyze|report|query|export)((?: [^`]*)?)`", line):
            uses += [(m.group(1), f) for f in FLAG.findall(m.group(2))]
    assert len(uses) > 20
    wrong = sorted({(cmd, f) for cmd, f in uses if cmd in COMMANDS and f not in _flags(cmd)})
    assert not wrong, wrong
    assert all(cmd in COMMANDS for cmd, _ in uses), {cmd for cmd, _ in uses} - set(COMMANDS)


def test_version() -> None:
    out = CliRunner().invoke(app, ["--version"])
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert out.exit_code == 0 and out.output.startswith("stabilitybench ")
    # the installed metadata's version, or the marker for an uninstalled tree (PYTHONPATH checkouts)
    assert version in out.output or "0+unknown" in out.output
    assert "corpus schema" in out.output


def test_profile_help_lists_every_shipped_profile() -> None:
    shipped = available_profiles()
    assert {"smoke", "quick", "paper", "lm_quick", "lm_paper"} <= set(shipped)
    for command in ("generate", "status"):
        text = next(p.help for p in COMMANDS[command].params if p.name == "profile")
        assert all(p in text for p in shipped), (command, text)
    rendered = CliRunner().invoke(app, ["generate", "--help"], env={"COLUMNS": "250"}).output
    assert all(p in rendered for p in shipped)


def test_workers_help_has_no_contradictory_default() -> None:
    workers = next(p for p in COMMANDS["generate"].params if p.name == "workers")
    assert workers.default is None and "every core" in workers.help
    rendered = CliRunner().invoke(app, ["generate", "--help"], env={"COLUMNS": "250"}).output
    line = next(x for x in rendered.splitlines() if "--workers" in x)
    assert "default: 0" not in line and "[default" not in line


def test_readme_order() -> None:
    headings = [h for h in re.findall(r"^## (.+)$", README, re.M)]
    want = ["Two commands", "Generate", "Analyse", "Read the corpus", "Instrument", "Live", "Run on a cluster"]
    at = [next(i for i, h in enumerate(headings) if h.startswith(w)) for w in want]
    assert at == sorted(at) and at[0] == 0, headings
    assert README.index("# StabilityBench") < README.index("## Two commands")


def test_results_tables_page_renders_the_generated_block() -> None:
    """docs/reference/results.md holds the results-tables block, filled from the declarations at build time."""
    page = (ROOT / "docs/reference/results.md").read_text()
    rendered = update(page)
    assert "<!-- BEGIN results-tables -->" in page and rendered != page
    assert "| `results/runs.parquet` |" in rendered and "#### results/dose_response" in rendered
