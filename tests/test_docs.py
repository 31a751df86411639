"""The documentation: the site builds strictly, and every ```python block of the docs and the README runs on its own.

Each block runs in a fresh interpreter (a subprocess) with an empty temporary working directory, so no block
can lean on a name, a file or an import of a block before it. A block that reads a corpus finds one at
``corpus/`` in its working directory: a copy of the smoke profile's corpus (the session fixture
``local_smoke``), which is the documented convention of the guides ("the examples read a corpus in
``corpus/``"). A block that cannot run here (it needs the results of ``make quick``, a GPU or a cluster) is
marked with an HTML comment on the line before its fence, ``<!-- norun: why -->``; it is reported as skipped
with that reason, and there may only be a few.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
#: Pages whose python blocks must run: every Markdown page of the site's source, and the README.
PAGES = [*sorted(DOCS.rglob("*.md")), README]
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.S | re.M)
NORUN = re.compile(r"<!--\s*norun\b:?\s*(.*?)\s*-->\s*$")
#: The most blocks that may be left unrun (each needs something a test machine does not have).
MAX_NORUN = 3
BLOCK_TIMEOUT_S = 300


def _load_hooks() -> ModuleType:
    """``docs/hooks.py`` (not a package: mkdocs loads it by path, and so do the tests)."""
    spec = importlib.util.spec_from_file_location("stabilitybench_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOKS = _load_hooks()


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    code: str
    norun: str | None  # the reason given in the marker, or None when the block runs

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def reads_corpus(self) -> bool:
        """The block reads ``corpus/`` (rather than only writing its own runs there with a Recorder)."""
        reads = [ln for ln in self.code.splitlines() if "corpus" in ln and "Recorder(" not in ln]
        return any(re.search(r"""["']corpus(/|["'])""", ln) for ln in reads)


def python_blocks(page: Path) -> list[Block]:
    """Every ```python block of ``page``, with the ``<!-- norun: ... -->`` marker of the line before, if any."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NORUN.search(before)
        blocks.append(Block(page, line, m.group(1), (marker.group(1) or "norun") if marker else None))
    return blocks


BLOCKS = [b for page in PAGES for b in python_blocks(page)]


def test_blocks_are_found_and_few_are_left_unrun() -> None:
    guides = [b for b in BLOCKS if b.page.parent == DOCS / "guides"]
    assert len(guides) >= 8, [b.id for b in guides]
    norun = [b for b in BLOCKS if b.norun]
    assert len(norun) <= MAX_NORUN, [b.id for b in norun]
    print(f"{len(BLOCKS)} python blocks, {len(norun)} marked norun: " + ", ".join(b.id for b in norun))


def test_norun_marker_is_recognised(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("text\n\n```python\nprint(1)\n```\n<!-- norun: needs a GPU -->\n```python title=\"x\"\n"
                    "raise SystemExit(1)\n```\n")
    first, second = python_blocks(page)
    assert (first.norun, first.code, first.line) == (None, "print(1)\n", 3)
    assert (second.norun, second.line) == ("needs a GPU", 7)


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_python_block_runs_on_its_own(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if block.norun:
        pytest.skip(f"norun: {block.norun}")
    if block.reads_corpus:
        shutil.copytree(request.getfixturevalue("local_smoke"), tmp_path / "corpus")
    script = tmp_path / "block.py"
    script.write_text(block.code, encoding="utf-8")
    env = {**os.environ, "MPLBACKEND": "Agg", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / ".hf"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=BLOCK_TIMEOUT_S)
    assert proc.returncode == 0, f"{block.id} failed on its own:\n{proc.stderr[-3000:]}"


# ---------------------------------------------------------------------------- the site
def _mkdocs_available() -> bool:
    try:
        import mkdocs  # noqa: F401
        import mkdocstrings  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not _mkdocs_available():
        pytest.skip("mkdocs / mkdocstrings are not installed (the [docs] extra; `make test` installs them)")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _text(html: Path) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html.read_text(encoding="utf-8")))


@pytest.mark.slow
def test_site_builds_strictly_with_the_generated_pages(site: Path) -> None:
    from stabilitybench.analysis import results
    from stabilitybench.data_schema.schema import SCHEMA_VERSION, SCHEMAS

    schema = _text(site / "reference/schema/index.html")
    assert f"version {SCHEMA_VERSION}" in schema
    for table, arrow in SCHEMAS.items():  # every declared column of every corpus table
        assert all(f" {field.name} " in schema for field in arrow), table
    res = _text(site / "reference/results/index.html")
    assert all(f"results/{name}.parquet" in res for name in results.TABLES)
    # the API reference is rendered from the docstrings, signatures included
    api = _text(site / "api/probe/index.html")
    assert "Probe" in api and "Recorder" in api and "perturbation" in api and "coherence_window" in api
    for page in ("adapters", "monitors", "readers"):
        assert (site / f"api/{page}/index.html").exists()
    assert "SB3Callback" in _text(site / "api/adapters/index.html")
    assert "scan_steps" in _text(site / "api/readers/index.html")
    # the repository Markdown files the hook includes, rendered from where they live
    for uri, source in HOOKS.INCLUDED.items():
        title = (ROOT / source).read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip("`")
        assert title.split("`")[0][:20] in _text(site / uri.removesuffix(".md") / "index.html"), uri
    assert not (site / "hooks.py").exists()


def test_hook_renders_the_schema_and_results_from_the_code() -> None:
    """The generated pages come from the declarations, not from a copy (works without mkdocs)."""
    from stabilitybench.analysis import results
    from stabilitybench.data_schema.schema import SCHEMA_VERSION, SCHEMAS, describe

    page = (DOCS / "reference/schema.md").read_text(encoding="utf-8")
    rendered = HOOKS.render(page)
    assert "<!-- generated:" not in rendered and f"version {SCHEMA_VERSION}." in rendered
    for table in SCHEMAS:
        for row in describe(table):
            cells = [f"`{row['name']}`", row["type"], row["unit"], row["nullable"], row["description"]]
            assert "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" in rendered, (table, row["name"])
    res = HOOKS.render((DOCS / "reference/results.md").read_text(encoding="utf-8"))
    assert all(f"`results/{name}.parquet`" in res for name in results.TABLES)
    for name, schema in getattr(results, "SCHEMAS", {}).items():
        table = (schema.metadata or {}).get(b"stabilitybench.table", b"").decode()
        corpus_table = bool(table) and not table.startswith("results/")  # e.g. runs: on the schema page
        assert f"### results/{name}" in res, name
        assert corpus_table or all(f"| `{f.name}` |" in res for f in schema), name
    with pytest.raises(ValueError, match="unknown corpus table"):
        HOOKS.render("<!-- generated: schema nosuchtable -->")


# ---------------------------------------------------------------------------- the README
def test_readme_is_short_and_links_into_the_docs() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert "make quick" in text and "make test" in text
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [ln for ln in links if "://" not in ln]
    assert len([ln for ln in local if ln.startswith("docs/")]) >= 8, local
    missing = [ln for ln in local if not (ROOT / ln).exists()]
    assert not missing, missing
    headings = re.findall(r"^## (.+)$", text, re.M)
    for want in ("Two commands", "Generate", "Analyse", "Read the corpus", "Instrument", "Live early warning",
                 "Run on a cluster", "Read more"):
        assert any(h.startswith(want) for h in headings), (want, headings)


def test_every_nav_page_exists_and_every_page_is_in_the_nav() -> None:
    nav = re.findall(r":\s+(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    sources = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")} | set(HOOKS.INCLUDED)
    assert set(nav) == sources, (set(nav) ^ sources)


#: Facts the old single-file README held; each must still be in the docs (nothing lost in the move).
KEPT = [
    "| **all** | **5,580** | | **9,615** |",  # the paper profile's CPU-hours
    "| wall time | 150 h | 38.0 h | 10.2 h | 5.1 h | 4.6 h | 2.8 h (the longest run: SAC) |",
    "| ppo Swimmer-v5 lr_spike dur=320 | 89.8 [68, 106] | 63.2 | 128 | 67 (42) | ok |",
    "| gpt2 pydoc-topics lr_spike dur=50 | 204 [unbounded, unbounded] | 199 | 209 | 14 (9) | ok |",
    "| ppo InvertedPendulum-v5 weight_noise dur=1 | 1.70 [unbounded, unbounded] | 1.26 | 2.30 | 12 (4) | ok |",
    "60 min 01 s wall, 6,581 s CPU",
    "| `lr_spike` ×89.8 (ED50) | 5 / 8 |",
    "lr_spike ×125 collapsed 4 of 5\nwithout and 1 of 5 with (Δ −0.60 [−1.00, −0.20])",
    "| `reward_flip` | reward negated with probability m per transition |",
    "| `high` | minibatch ÷4, entropy coef max(0.01, ×10) | minibatch ÷4, target entropy 0 |",
    "| `stop` | sets `guard.stopped`; `SB3Callback` then ends `learn` |",
    "**One writer per corpus.**",
    "**(b) Prediction at the landmark.**",
    "Mountpoint for S3\n   has no rename and cannot be used.",
    "x = (‖Σuᵢ‖² − K)/(K(K−1))",
    "`arch` 7.2 fails to import with pandas 3",
]


def test_nothing_of_the_old_readme_was_lost() -> None:
    docs = "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.rglob("*.md")))
    missing = [fact for fact in KEPT if fact not in docs]
    assert not missing, missing
