"""``stabilitybench export --tensorboard``: read back with TensorBoard's own event reader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_corpus_readers import build_corpus
from typer.testing import CliRunner

from stabilitybench.cli import app
from stabilitybench.data_schema import read_manifest
from stabilitybench.export import run_name

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _read(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return build_corpus(tmp_path_factory.mktemp("export") / "corpus")


def test_export_reads_back_as_tensorboard_scalars(corpus, tmp_path: Path) -> None:
    out = tmp_path / "tb"
    res = CliRunner().invoke(app, ["export", "--tensorboard", str(out), "--corpus", str(corpus.root),
                                   "--only", "algo=ppo"])
    assert res.exit_code == 0, res.output
    rows = {r["run_id"]: r for r in read_manifest(corpus.root).to_pylist()}
    ppo = sorted(rid for rid, r in rows.items() if r["algo"] == "ppo")
    written = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("events.out.tfevents.*"))
    assert written == sorted(run_name(rows[rid]) for rid in ppo)  # the filter: no SAC run
    for rid in ppo:
        scalars = _read(out / run_name(rows[rid]))
        steps = corpus.steps_where(run_id=rid)
        assert scalars["performance"] == [(r["step"], pytest.approx(r["performance"])) for r in steps]
        assert scalars["grad_norm"] == [(r["step"], pytest.approx(r["grad_norm"])) for r in steps
                                        if r["grad_norm"] is not None]  # nulls are left out
        assert [v for _, v in scalars["perturbation_active"]] == [float(r["perturbation_active"]) for r in steps]
        assert "step" not in scalars and "wall_time_s" not in scalars and "algo" not in scalars
        assert "loss" not in scalars  # a column with no value in this run writes no tag

    # exporting again replaces each run instead of appending a second copy
    assert CliRunner().invoke(app, ["export", "--tensorboard", str(out), "--corpus", str(corpus.root)]).exit_code == 0
    again = _read(out / run_name(rows[ppo[0]]))
    assert len(again["performance"]) == len(corpus.steps_where(run_id=ppo[0]))
    assert len(list(out.rglob("events.out.tfevents.*"))) == len(rows)
    assert not [p for p in out.rglob(".*")]  # no temporary folders left


@pytest.mark.parametrize(("only", "message"), [("algo=nope", "no finished run matches"),
                                               ("colour=red", "unknown axis 'colour'")])
def test_export_user_errors_are_one_line(corpus, tmp_path: Path, only: str, message: str) -> None:
    out = subprocess.run([sys.executable, "-m", "stabilitybench", "export", "--tensorboard", str(tmp_path / "tb"),
                          "--corpus", str(corpus.root), "--only", only], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
