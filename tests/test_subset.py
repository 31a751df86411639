"""``stabilitybench subset``: a corpus of some runs of another, by hard links; the source is never written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from corpus_tools import corpus_contents, data_files
from typer.testing import CliRunner

from stabilitybench.cli import app
from stabilitybench.data_schema import events_path, read_manifest, steps_path
from stabilitybench.data_schema.subset import MARKER, SubsetError, link_subset
from stabilitybench.data_schema.verify import verify_corpus


def snapshot(corpus: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(corpus)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in corpus.rglob("*")
            if p.is_file()}


def test_a_subset_holds_exactly_the_chosen_runs_as_links(local_smoke: Path, tmp_path: Path) -> None:
    before = snapshot(local_smoke)
    rows = read_manifest(local_smoke).to_pylist()
    chosen = {r["run_id"] for r in rows if r["algo"] == "ppo"}
    assert 0 < len(chosen) < len(rows)
    out = tmp_path / "sub"
    report = link_subset(local_smoke, out, chosen)
    assert report.runs == len(chosen) and report.linked == 2 * len(chosen) and report.removed == 0
    assert {r["run_id"] for r in read_manifest(out).to_pylist()} == chosen
    reference = corpus_contents(local_smoke)
    assert corpus_contents(out) == {k: v for k, v in reference.items() if k in chosen}
    for r in read_manifest(out).to_pylist():
        assert os.path.samefile(steps_path(out, r), steps_path(local_smoke, r))
        assert os.path.samefile(events_path(out, r["run_id"]), events_path(local_smoke, r["run_id"]))
    assert not verify_corpus(out, deep=True).problems
    assert snapshot(local_smoke) == before  # the source is never written

    # again, another selection: the files of runs no longer chosen go, the new ones come
    other = {r["run_id"] for r in rows} - chosen
    report = link_subset(local_smoke, out, other)
    assert report.removed == 2 * len(chosen) and set(corpus_contents(out)) == other
    assert len(data_files(out)) == 2 * len(other)
    assert snapshot(local_smoke) == before


def test_a_subset_never_overwrites_what_is_not_one(local_smoke: Path, tmp_path: Path) -> None:
    with pytest.raises(SubsetError, match="the source corpus"):
        link_subset(local_smoke, local_smoke, [])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(SubsetError, match="not a subset"):
        link_subset(local_smoke, busy, [])
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]


def test_the_cli_selects_by_profile_and_column(local_smoke: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub"
    res = CliRunner().invoke(app, ["subset", "--corpus", str(local_smoke), "--out", str(out), "--profile", "smoke",
                                   "--only", "algo=sac|td3"])
    assert res.exit_code == 0, res.output
    rows = read_manifest(out).to_pylist()
    assert rows and {r["algo"] for r in rows} <= {"sac", "td3"} and (out / MARKER).exists()
    assert f"subset of {len(rows)} run(s)" in res.output
    res = CliRunner().invoke(app, ["subset", "--corpus", str(local_smoke), "--out", str(out), "--profile", "quick"])
    assert res.exit_code == 0 and "of the profile(s) are not in" in res.output
    res = CliRunner().invoke(app, ["subset", "--corpus", str(local_smoke), "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "say which runs" in res.output
