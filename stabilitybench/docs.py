"""Documentation blocks generated from the code.

Each generated block sits between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` in a page of the
documentation site (``docs/reference/results.md``); the site's build hook (``docs/hooks.py``) fills it
with what :func:`blocks` renders, so the documentation cannot drift from the declarations it is made
from. ``python -m stabilitybench.docs PAGE.md`` also rewrites the blocks of a page in place.

* ``results-tables``: the ``results/`` tables that ``analyze`` writes, from
  :data:`stabilitybench.analysis.results.TABLES` and, for each table that declares one, its Arrow schema
  (``stabilitybench.analysis.results.SCHEMAS``: column, type, unit, description).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pyarrow as pa


def _meta(field: pa.Field, key: bytes) -> str:
    return (field.metadata or {}).get(key, b"").decode() or "-"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def results_tables() -> str:
    """Markdown for the ``results/`` tables: what one row is, then each declared schema's columns."""
    from stabilitybench.analysis import results

    schemas: dict[str, pa.Schema] = getattr(results, "SCHEMAS", {})
    lines = ["| file | one row is |", "|---|---|"]
    lines += [f"| `results/{name}.parquet` | {_cell(what)} |" for name, what in results.TABLES.items()]
    lines += ["", "`results/summary.json` holds every headline number with its n and CI "
              "(`stabilitybench.analysis.summary`: "
              "estimates, statuses with a kind and a reason, per-detector records keyed by (detector, subset))."]
    for name, schema in schemas.items():
        table = (schema.metadata or {}).get(b"stabilitybench.table", b"").decode()
        if table and not table.startswith("results/"):  # a corpus table (runs): documented with the corpus
            lines += ["", f"#### results/{name}", "", f"The corpus `{table}` schema (see the dataset card)."]
            continue
        lines += ["", f"#### results/{name}", "", "| column | type | unit | description |", "|---|---|---|---|"]
        lines += [f"| `{f.name}` | {f.type} | {_cell(_meta(f, b'unit'))} | {_cell(_meta(f, b'description'))} |"
                  for f in schema]
    return "\n".join(lines)


#: Generated block name -> renderer.
BLOCKS = {"results-tables": results_tables}


def blocks() -> dict[str, str]:
    return {name: render() for name, render in BLOCKS.items()}


def update(text: str) -> str:
    """``text`` with every generated block replaced by its current rendering."""
    for name, body in blocks().items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"the page has no <!-- BEGIN {name} --> ... <!-- END {name} --> block")
        text = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(2), text)
    return text


def main(argv: list[str]) -> None:
    from stabilitybench.data_schema.io import atomic_path

    path = Path(argv[0] if argv else "docs/reference/results.md")
    new = update(path.read_text())
    with atomic_path(path) as tmp:
        tmp.write_text(new)
    print(f"{path}: generated blocks updated ({', '.join(BLOCKS)})")


if __name__ == "__main__":
    main(sys.argv[1:])
