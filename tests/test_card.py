"""The dataset card: written by generate, completed by analyze, schema rendered from data_schema."""

from __future__ import annotations

from pathlib import Path

from stabilitybench.data_schema import EVENTS_SCHEMA, describe, read_table, write_manifest, write_table
from stabilitybench.data_schema.card import ANALYSIS_MARK, summary_lines, write_card
from stabilitybench.generate.perturbations import REGISTRY, definitions
from stabilitybench.generate.spec import RunSpec
from stabilitybench.generate.worker import base_row


def _corpus(tmp_path: Path) -> Path:
    rows = []
    for kind, mag in (("none", 1.0), ("lr_spike", 100.0)):
        row = base_row(RunSpec(domain="rl", algo="ppo", env="HalfCheetah-v5", seed=0, perturbation=kind,
                               magnitude=mag, duration_steps=8))
        row.update(status="ok", n_updates=32, stop_reason="completed")
        rows.append(row)
    write_manifest(tmp_path, rows)
    return tmp_path


def test_card_lists_runs_schema_perturbations_licence_and_citation(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    text = write_card(corpus, definitions(), profile="smoke").read_text()
    assert text.startswith("---\nlicense: mit")
    assert "runs: 2 (2 ok, 0 failed)" in text and "profile: smoke" in text
    for row in describe("steps"):  # every column with its unit, straight from the schema
        assert f"| `{row['name']}` | {row['type']} | {row['unit']} |" in text
    for kind in REGISTRY:
        assert f"| `{kind}` |" in text
    assert "arXiv 2601.13160" in text and "@article" in text
    assert not list(corpus.glob(".README.md.*"))  # atomic write left no temp file


def test_analysis_section_is_added_and_kept(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    write_card(corpus, definitions(), profile="smoke")
    outcomes = [{"algo": "ppo", "perturbation": "lr_spike", "magnitude": 100.0, "duration_steps": 8, "collapsed": True},
                {"algo": "ppo", "perturbation": "none", "magnitude": 1.0, "duration_steps": 1, "collapsed": False}]
    write_card(corpus, analysis_section="## Collapse rule\n" + "\n".join(summary_lines(outcomes)))
    text = (corpus / "README.md").read_text()
    assert "| `lr_spike` |" in text  # generate's part kept as written
    assert text.index(ANALYSIS_MARK) < text.index("| ppo | lr_spike | 100 | 8 | 1/1 |")
    write_card(corpus, definitions(), profile="quick")  # a later generate keeps the analysis section
    text = (corpus / "README.md").read_text()
    assert "profile: quick" in text and "| ppo | none | 1 | 1 | 0/1 |" in text


def test_card_header_is_a_hugging_face_dataset_card(tmp_path: Path) -> None:
    """configs per table, features from the schemas, size in rows; `datasets` loads each table through it."""
    import yaml
    from test_corpus_readers import build_corpus

    from stabilitybench.data_schema import SCHEMAS
    from stabilitybench.data_schema.card import hf_dtype, size_category

    corpus = tmp_path / "corpus"
    built = build_corpus(corpus, litter=False)
    import shutil

    shutil.copy(corpus / "manifest.parquet", corpus / "runs.parquet")  # stands in for analyze's runs table
    # Hugging Face `datasets` cannot read a zero-row Parquet file ("BatchSize must be greater than 0"): give the
    # control's empty events file the eval event a generated control has
    import pyarrow as pa

    for path in (corpus / "events").glob("*.parquet"):
        if read_table(path, "events").num_rows == 0:
            rid = path.stem
            write_table(pa.Table.from_pylist([{"run_id": rid, "step": 1, "event": "eval"}], schema=EVENTS_SCHEMA),
                        path, EVENTS_SCHEMA)
            built.events.append({"run_id": rid, "step": 1, "event": "eval"})
    text = write_card(corpus, definitions(), profile="smoke").read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    assert [c["config_name"] for c in header["configs"]] == ["steps", "manifest", "events", "runs"]
    info = {c["config_name"]: c for c in header["dataset_info"]}
    for name in ("steps", "manifest", "events"):
        assert [(f["name"], f["dtype"]) for f in info[name]["features"]] == [
            (f.name, hf_dtype(f.type)) for f in SCHEMAS[name]]
    rows = {"steps": len(built.steps), "manifest": len(built.manifest), "events": len(built.events)}
    for name, n in rows.items():
        assert info[name]["splits"][0]["num_examples"] == n
    assert header["size_categories"] == [size_category(len(built.steps))] == ["n<1K"]
    assert (size_category(999), size_category(1000), size_category(25_000_000)) == ("n<1K", "1K<n<10K", "10M<n<100M")
    assert header["license"] == "mit"

    datasets = __import__("pytest").importorskip("datasets")
    for name, n in rows.items():
        ds = datasets.load_dataset(str(corpus), name, split="train", cache_dir=str(tmp_path / "hf"))
        assert ds.num_rows == n and ds.column_names == SCHEMAS[name].names


def test_card_licences_name_the_lm_text(tmp_path: Path) -> None:
    import yaml

    row = base_row(RunSpec(domain="lm", algo="gpt2", env="pydoc-topics", seed=0))
    row.update(status="ok", n_updates=4, stop_reason="completed")
    user = base_row(RunSpec(domain="lm", algo="gpt2", env="my-text", seed=0))
    user.update(status="ok", n_updates=4, stop_reason="completed")
    write_manifest(tmp_path, [row, user])
    text = write_card(tmp_path, definitions()).read_text()
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["license"] == "other" and header["license_name"] == "mit+psf-2.0+unknown"
    assert "Python Software Foundation License" in text and "`my-text`: licence not recorded" in text
