"""MkDocs hooks: the pages that are generated from the code, so that the site cannot drift from it.

* ``<!-- generated: schema TABLE -->`` in a page becomes the declared Arrow schema of ``TABLE``
  (``steps``, ``manifest``, ``runs``, ``events``) from :mod:`stabilitybench.data_schema.schema`: column, type, unit,
  nullability and description, the same declaration the writer passes at write time.
* ``<!-- BEGIN name --> ... <!-- END name -->`` blocks are re-rendered by :func:`stabilitybench.docs.update`
  (the ``results/`` tables from :mod:`stabilitybench.analysis.results`), whatever the source page holds between them.
* ``<!-- generated: schema-version -->`` becomes the corpus schema version.
* Three Markdown files that live beside the code they describe are added to the site as pages:
  ``BENCHMARKS.md``, ``analysis/README.md`` and ``generate/lm/README.md`` (see :data:`INCLUDED`).

Registered in ``mkdocs.yml`` under ``hooks:``; ``make docs`` runs ``mkdocs build --strict``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: Site page -> repository file it is rendered from (the file stays where it is, next to its code).
INCLUDED = {
    "reference/benchmarks.md": "BENCHMARKS.md",
    "reference/methods.md": "analysis/README.md",
    "reference/lm.md": "generate/lm/README.md",
}

SCHEMA_MARK = re.compile(r"<!-- generated: schema (\w+) -->")
VERSION_MARK = "<!-- generated: schema-version -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def schema_table(table: str) -> str:
    """Markdown table of one corpus table's declared columns (name, type, unit, nullable, description)."""
    from stabilitybench.data_schema.schema import SCHEMAS, describe

    if table not in SCHEMAS:
        raise ValueError(f"docs: unknown corpus table {table!r} in a schema marker (one of {', '.join(SCHEMAS)})")
    lines = ["| column | type | unit | nullable | description |", "|---|---|---|---|---|"]
    for r in describe(table):
        cells = [f"`{r['name']}`", r["type"], r["unit"], r["nullable"], r["description"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def render(markdown: str) -> str:
    """``markdown`` with every generated marker and block filled from the code."""
    from stabilitybench.data_schema.schema import SCHEMA_VERSION
    from stabilitybench.docs import BLOCKS, update

    markdown = SCHEMA_MARK.sub(lambda m: schema_table(m.group(1)), markdown)
    markdown = markdown.replace(VERSION_MARK, SCHEMA_VERSION)
    if any(f"<!-- BEGIN {name} -->" in markdown for name in BLOCKS):
        markdown = update(markdown)
    return markdown


#: Where :func:`namespace_tree` lays out the installed package for mkdocstrings (gitignored ``build/``).
NAMESPACE_TREE = Path(__file__).resolve().parent.parent / "build" / "docs_namespace"
SUBSYSTEMS = ("data_schema", "generate", "analysis", "reports")


def namespace_tree(root: Path = NAMESPACE_TREE) -> Path:
    """Lay out ``stabilitybench/`` as the wheel installs it, with symlinks, for mkdocstrings' static reader.

    The repository keeps the subsystems at the top level and pyproject's ``package-dir`` maps them to
    ``stabilitybench.generate`` and so on; griffe reads folders and does not follow that mapping. The tree
    is ``stabilitybench/<each file of stabilitybench/>`` plus ``stabilitybench/<subsystem>`` -> ``<subsystem>/``;
    ``mkdocs.yml`` points the handler's ``paths`` at it.
    """
    repo = Path(__file__).resolve().parent.parent
    pkg = root / "stabilitybench"
    pkg.mkdir(parents=True, exist_ok=True)
    want = {p.name: p for p in (repo / "stabilitybench").iterdir() if p.name != "__pycache__"}
    want.update({name: repo / name for name in SUBSYSTEMS})
    for link in pkg.iterdir():
        if link.name not in want or not link.is_symlink() or link.resolve() != want[link.name].resolve():
            link.unlink() if link.is_symlink() or link.is_file() else None
    for name, target in want.items():
        if not (pkg / name).exists():
            (pkg / name).symlink_to(target)
    return root


def on_startup(command: str, dirty: bool) -> None:
    """Lay out the tree before any plugin reads its config: mkdocstrings drops a ``paths`` entry that does not
    exist yet when it configures itself, which is before this file's ``on_config`` runs."""
    namespace_tree()


def on_files(files: Any, config: Any) -> Any:
    """Add the repository Markdown files of :data:`INCLUDED` to the site."""
    from mkdocs.structure.files import File

    for uri, source in INCLUDED.items():
        files.append(File.generated(config, uri, abs_src_path=str(ROOT / source)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return render(markdown)
