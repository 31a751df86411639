"""Dose finding: where does each perturbation kind collapse about half of the seeds?

``stabilitybench calibrate DESIGN.toml`` runs an adaptive dose-response design on the ordinary
runner and corpus (resumable: a rerun continues where the last one stopped), decides collapse
with the analysis rule (:func:`stabilitybench.analysis.outcomes.collapse_outcomes`), fits a logistic
dose-response on log magnitude (:class:`stabilitybench.analysis.dose_response.DoseResponseModel`) and writes
ED20 / ED50 / ED80 with their CIs to a *dose table* (TOML) that profiles include
(``doses = "..."`` and ``dose = "ED50"`` in :mod:`stabilitybench.generate.matrix`).

The design file
---------------
::

    description = "..."
    [defaults]              # exactly a profile's [defaults]: domain, algo, env, total_steps, hparams, ...
    [design]
    controls = 12           # unperturbed control seeds 0..controls-1 (the collapse rule's envelope)
    first_doses = 4         # stage 1: a log grid of this many magnitudes over [m_min, m_max]
    doses_per_stage = 3     # later stages: ED20..ED80 of the current fit, or inside the bracket, ...
    seeds_per_dose = 2      # new seeds at each dose of a stage
    max_runs = 20           # perturbed runs per target, all stages together
    max_stages = 4
    [[target]]              # one dose-response curve: a kind with its fixed settings
    perturbation = "lr_spike"
    duration_steps = 320
    m_min = 2.0
    m_max = 1000.0
    max_runs = 40           # optional: this target's own cap (more seeds where the curve is uncertain)

Stage ``s`` asks :func:`stabilitybench.analysis.dose_response.next_doses` where to look next. A target is done
when it has used ``max_runs`` runs, when the design has nothing left to try (e.g. no collapse
up to ``m_max``: "no ED50 below m_max", a finding) or after ``max_stages``. ``--budget`` caps the
runs one invocation may start; the stage's cost is planned from the corpus' measured seconds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import tomllib

from stabilitybench.analysis.dose_response import DoseResponseModel, next_doses
from stabilitybench.analysis.outcomes import collapse_outcomes
from stabilitybench.data_schema import read_manifest
from stabilitybench.data_schema.io import atomic_path
from stabilitybench.data_schema.keys import NO_PERTURBATION, ConfigKey
from stabilitybench.data_schema.progress import ProgressReporter
from stabilitybench.generate.costs import estimate
from stabilitybench.generate.doses import acts_on_alarms, curve_key
from stabilitybench.generate.errors import ProfileError
from stabilitybench.generate.matrix import expand
from stabilitybench.generate.runner import Plan, run_matrix
from stabilitybench.generate.spec import RunSpec
from stabilitybench.generate.version import code_version

DESIGN_KEYS = {"controls", "first_doses", "doses_per_stage", "seeds_per_dose", "max_runs", "max_stages"}
TARGET_KEYS = {"m_min", "m_max"}
OPTIONAL_TARGET_KEYS = {"max_runs"}  # per target, overrides design.max_runs


@dataclass(frozen=True)
class Target:
    """One dose-response curve: a template spec (magnitude and seed are the design's) and its range."""

    template: RunSpec
    m_min: float
    m_max: float
    max_runs: int | None = None  # None: the design's

    @property
    def label(self) -> str:
        t = self.template
        return f"{t.algo} {t.env} {t.perturbation} dur={t.duration_steps}"

    def spec(self, magnitude: float, seed: int) -> RunSpec:
        d = self.template.to_dict()
        return RunSpec.from_dict({**d, "magnitude": magnitude, "seed": seed})


@dataclass(frozen=True)
class Design:
    """A parsed design file (module docstring)."""

    path: str
    controls: list[RunSpec]
    targets: list[Target]
    first_doses: int = 4
    doses_per_stage: int = 3
    seeds_per_dose: int = 2
    max_runs: int = 20
    max_stages: int = 4
    description: str = ""


def load_design(path: str | os.PathLike[str]) -> Design:
    """Parse and validate a design file; a bad one raises :class:`ProfileError` (one line)."""
    where = str(path)
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{where}: no such design file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{where}: invalid TOML ({exc})") from None
    unknown = set(data) - {"description", "defaults", "design", "target"}
    if unknown:
        raise ProfileError(f"{where}: unknown top-level key(s) {sorted(unknown)} "
                           "(expected description, defaults, design, target)")
    settings = data.get("design", {})
    bad = set(settings) - DESIGN_KEYS
    if bad:
        raise ProfileError(f"{where}: design: unknown key(s) {sorted(bad)} (expected one of {sorted(DESIGN_KEYS)})")
    for k, v in settings.items():
        if not isinstance(v, int) or v < (0 if k == "controls" else 1):
            raise ProfileError(f"{where}: design.{k} must be a positive integer, got {v!r}")
    defaults = {k: v for k, v in data.get("defaults", {}).items() if k != "seed"}
    n_controls = int(settings.get("controls", 12))
    controls = expand({"defaults": defaults, "matrix": [{"perturbation": "none", "seed": list(range(n_controls))}]},
                      where) if n_controls else []
    targets = []
    for i, t in enumerate(data.get("target", [])):
        label = f"{where}: target[{i}]"
        if not isinstance(t, dict) or not TARGET_KEYS <= set(t):
            raise ProfileError(f"{label}: needs m_min and m_max")
        m_min, m_max = t["m_min"], t["m_max"]
        if not (isinstance(m_min, int | float) and isinstance(m_max, int | float) and 0 < m_min < m_max):
            raise ProfileError(f"{label}: need 0 < m_min < m_max, got {m_min!r}, {m_max!r}")
        block = {k: v for k, v in t.items() if k not in TARGET_KEYS | OPTIONAL_TARGET_KEYS}
        max_runs = t.get("max_runs")
        if max_runs is not None and (not isinstance(max_runs, int) or max_runs < 1):
            raise ProfileError(f"{label}: max_runs must be a positive integer, got {max_runs!r}")
        if "magnitude" in block or "seed" in block:
            raise ProfileError(f"{label}: magnitude and seed are chosen by the design; remove them")
        if ConfigKey(str(block.get("perturbation", NO_PERTURBATION))).is_control:
            raise ProfileError(f"{label}: a target needs a perturbation kind")
        (template,) = expand({"defaults": defaults, "matrix": [{**block, "seed": 0, "magnitude": m_max}]}, label)
        targets.append(Target(template, float(m_min), float(m_max), max_runs))
    if not targets:
        raise ProfileError(f"{where}: needs at least one [[target]]")
    extra = {k: int(settings[k]) for k in DESIGN_KEYS - {"controls"} if k in settings}
    return Design(where, controls, targets, description=str(data.get("description", "")), **extra)


@dataclass
class CurveState:
    """A target's runs so far: magnitudes and collapse outcomes (from the corpus)."""

    target: Target
    magnitude: list[float] = field(default_factory=list)
    collapsed: list[bool] = field(default_factory=list)
    seeds: dict[float, set[int]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.magnitude)


def curve_states(design: Design, outcomes: pl.DataFrame, manifest: pl.DataFrame) -> list[CurveState]:
    """Each target's finished runs in the corpus, with their collapse outcomes.

    ``manifest`` supplies every row's spec (``config_json``) so runs are matched on the whole
    curve (kind, duration, onset, hparams, ...), not on the kind's name alone.
    """
    keyed = {curve_key(t.template): CurveState(t) for t in design.targets}
    if manifest.height == 0:
        return list(keyed.values())
    spec_of = {r["run_id"]: json.loads(r["config_json"])["spec"] for r in manifest.iter_rows(named=True)}
    for row in outcomes.iter_rows(named=True):
        spec = spec_of.get(row["run_id"])
        state = keyed.get(curve_key(spec)) if spec and not acts_on_alarms(spec) else None
        if state is None:
            continue
        m = float(spec["magnitude"])
        state.magnitude.append(m)
        state.collapsed.append(bool(row["collapsed"]))
        state.seeds.setdefault(m, set()).add(int(spec["seed"]))
    for r in manifest.iter_rows(named=True):  # failed or unfinished runs still hold their seed
        spec = spec_of[r["run_id"]]
        state = keyed.get(curve_key(spec))
        if state is not None:
            state.seeds.setdefault(float(spec["magnitude"]), set()).add(int(spec["seed"]))
    return list(keyed.values())


def next_specs(design: Design, states: list[CurveState], stage: int) -> list[RunSpec]:
    """The runs of the next stage (pure): new seeds at the doses :func:`next_doses` proposes."""
    specs = []
    for st in states:
        room = (st.target.max_runs or design.max_runs) - st.n
        if room <= 0 or stage >= design.max_stages:
            continue
        k = design.first_doses if st.n == 0 else design.doses_per_stage
        doses = next_doses(st.magnitude, st.collapsed, st.target.m_min, st.target.m_max, k=k)
        for dose in doses:
            used = st.seeds.get(dose, set())
            seeds = [s for s in range(len(used) + design.seeds_per_dose + 64) if s not in used][:design.seeds_per_dose]
            for seed in seeds:
                if room <= 0:
                    break
                specs.append(st.target.spec(dose, seed))
                room -= 1
    return specs


@dataclass(frozen=True)
class DoseRow:
    """One line of the dose table."""

    target: Target
    summary: dict[str, Any]  # DoseResponseModel.summary() (or status "no_runs")

    def to_toml(self) -> str:
        t = self.target.template
        spec = {k: v for k, v in t.to_dict().items() if k not in ("magnitude", "seed")}
        lines = ["[[dose]]", f"spec = {_toml_inline(spec)}",
                 f"m_range = [{self.target.m_min!r}, {self.target.m_max!r}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in self.summary.items() if v is not None]
        return "\n".join(lines)


def fit_states(states: list[CurveState]) -> list[DoseRow]:
    rows = []
    for st in states:
        if st.n == 0:
            rows.append(DoseRow(st.target, {"status": "no_runs", "n_runs": 0, "n_collapsed": 0}))
            continue
        rows.append(DoseRow(st.target, DoseResponseModel().fit(st.magnitude, st.collapsed).summary()))
    return rows


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(float(v)) if isinstance(v, float) else str(v)
    if isinstance(v, dict):
        return _toml_inline(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def _toml_inline(d: dict[str, Any]) -> str:
    return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in d.items()) + " }"


def write_dose_table(rows: list[DoseRow], path: str | os.PathLike[str], design: Design, corpus: str) -> None:
    """Write the dose table (TOML a profile includes) atomically, with its provenance."""
    head = [
        "# Dose table written by `stabilitybench calibrate`; profiles include it with",
        '# `doses = "<this file>"` and pick a dose with `dose = "ED50"` (generate/matrix.py).',
        f"design = {json.dumps(design.path)}",
        f"corpus = {json.dumps(str(corpus))}",
        f"code_version = {json.dumps(code_version())}",
        f"written_at = {json.dumps(datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ'))}",
        "",
    ]
    text = "\n".join(head) + "\n\n".join(r.to_toml() for r in rows) + "\n"
    tomllib.loads(text)  # never write a table the profile loader cannot read
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def table_markdown(rows: list[DoseRow]) -> str:
    """kind | ED50 [95% CI] | ED20 | ED80 | runs (collapsed) | status: the committed human-readable table."""
    out = ["| curve | ED50 [95% CI] | ED20 | ED80 | runs (collapsed) | status |", "|---|---|---|---|---|---|"]
    for r in rows:
        s = r.summary
        out.append(f"| {r.target.label} | {ed_text(s, 'ed50', r.target.m_max)} | {_num(s.get('ed20'))} | "
                   f"{_num(s.get('ed80'))} | {s.get('n_runs', 0)} ({s.get('n_collapsed', 0)}) | {s['status']} |")
    return "\n".join(out)


def ed_text(s: dict[str, Any], tag: str, m_max: float) -> str:
    status = s["status"]
    if status == "no_collapse":
        return f"none below m_max = {m_max:g}"
    if status == "all_collapse":
        return f"below the smallest dose tried ({s['m_min']:g})"
    if status == "separated":
        return f"between {s['bracket_low']:g} and {s['bracket_high']:g} (separated)"
    if s.get(tag) is None:
        return status.replace("_", " ")
    return f"{_num(s[tag])} [{_num(s.get(tag + '_ci_low'))}, {_num(s.get(tag + '_ci_high'))}]"


def _num(v: float | None) -> str:
    return "unbounded" if v is None else f"{v:.3g}"


def calibrate(
    design: Design,
    corpus: str | os.PathLike[str],
    budget: int | None = None,
    workers: int | None = None,
    say: Callable[[str], None] = print,
    on_result: Callable[[dict[str, Any]], None] | None = None,
    progress: Callable[[int], ProgressReporter] | None = None,
) -> list[DoseRow]:
    """Run the design's stages into ``corpus`` until every target is done or ``budget`` runs were started.

    Returns the fitted dose table. Controls run in the first stage. Each stage is planned from the
    corpus' measured seconds per run (:func:`stabilitybench.generate.costs.estimate`). ``progress(n)``, if given, makes
    the :class:`~stabilitybench.data_schema.progress.ProgressReporter` of a stage of ``n`` runs (the CLI's: a live bar
    in a terminal, one line per finished run in a log).
    """
    corpus = Path(corpus)

    def observe() -> tuple[list[CurveState], set[str]]:
        manifest, outcomes = _read(corpus)
        return curve_states(design, outcomes, manifest), set(manifest["run_id"].to_list()) if manifest.height else set()

    def run(specs: list[RunSpec]) -> int:
        manifest, _ = _read(corpus, outcomes=False)
        est = estimate(specs, manifest.to_dicts() if manifest.height else [])
        slots = workers or os.cpu_count() or 1
        say(f"{len(specs)} runs, ~{est.cpu_hours * 60:.0f} CPU-min, ~{est.makespan_hours(slots) * 60:.0f} min on "
            f"{slots} worker(s) (seconds per run from: {', '.join(sorted(set(est.sources.values())))})")
        bars: list[ProgressReporter] = []

        def started(p: Plan) -> None:
            if progress is not None and p.todo:
                bars.append(progress(len(p.todo)).start())

        def finished(row: dict[str, Any]) -> None:
            for bar in bars:
                bar.result(row)
            if on_result is not None:
                on_result(row)

        try:
            report = run_matrix(specs, corpus, workers=workers, on_start=started, on_result=finished)
        finally:
            for bar in bars:
                bar.stop()
        if report.failed:
            say(f"{report.failed} run(s) failed this stage (see {corpus}/logs); they have no outcome")
        return report.ran

    states = run_stages(design, observe, run, budget, say)
    return fit_states(states)


def run_stages(
    design: Design,
    observe: Callable[[], tuple[list[CurveState], set[str]]],
    run: Callable[[list[RunSpec]], int],
    budget: int | None = None,
    say: Callable[[str], None] = print,
) -> list[CurveState]:
    """The adaptive loop, independent of how runs are executed and judged (tests drive it with a
    simulated responder): ``observe()`` returns the curves' states and the run_ids already in the
    corpus; ``run(specs)`` executes specs and returns how many it started. Returns the final states."""
    started = 0
    for stage in range(design.max_stages):
        states, done_ids = observe()
        todo = [s for s in design.controls if s.run_id not in done_ids]
        todo += [s for s in next_specs(design, states, stage) if s.run_id not in done_ids]
        if budget is not None:
            todo = todo[:max(0, budget - started)]
        if not todo:
            break
        say(f"stage {stage + 1}/{design.max_stages}: " + ", ".join(
            f"{st.target.template.perturbation} {st.n} done" for st in states))
        started += run(todo)
    return observe()[0]


def _read(corpus: Path, outcomes: bool = True) -> tuple[pl.DataFrame, pl.DataFrame]:
    if not (corpus / "manifest.parquet").exists():
        return pl.DataFrame(), pl.DataFrame()
    manifest = pl.from_arrow(read_manifest(corpus))
    if not outcomes or manifest.filter(pl.col("status") == "ok").height == 0:
        return manifest, pl.DataFrame(schema={"run_id": pl.String, "collapsed": pl.Boolean})
    return manifest, collapse_outcomes(corpus)


def figure_frames(states: list[CurveState]) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Points (collapsed / runs per dose), fitted curves and ED50s of each curve, for the figure."""
    import numpy as np

    pts, curves, eds = [], [], []
    for st in states:
        label = st.target.label
        by_dose: dict[float, list[bool]] = {}
        for m, c in zip(st.magnitude, st.collapsed, strict=True):
            by_dose.setdefault(m, []).append(c)
        pts += [{"label": label, "magnitude": m, "n": len(c), "collapsed": sum(c)} for m, c in sorted(by_dose.items())]
        ed = {"label": label, "ed50": None, "ci_low": None, "ci_high": None, "status": "no runs"}
        if st.n:
            model = DoseResponseModel().fit(st.magnitude, st.collapsed)
            ed["status"] = model.status_.value.replace("_", " ")
            if model.status_.value == "ok":
                grid = np.geomspace(st.target.m_min, st.target.m_max, 120)
                curves += [{"label": label, "magnitude": float(m), "p": float(p)}
                           for m, p in zip(grid, model.predict_proba(grid), strict=True)]
                e = model.effective_dose(0.5)
                ed.update(ed50=e.value, ci_low=e.ci_low, ci_high=e.ci_high)
        eds.append(ed)
    schema_p = {"label": pl.String, "magnitude": pl.Float64, "n": pl.Int64, "collapsed": pl.Int64}
    schema_c = {"label": pl.String, "magnitude": pl.Float64, "p": pl.Float64}
    schema_e = {"label": pl.String, "ed50": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
                "status": pl.String}
    return (pl.DataFrame(pts, schema=schema_p), pl.DataFrame(curves, schema=schema_c),
            pl.DataFrame(eds, schema=schema_e))


def current_states(design: Design, corpus: str | os.PathLike[str]) -> list[CurveState]:
    """Each target's runs in ``corpus`` now (no runs started)."""
    manifest, outcomes = _read(Path(corpus))
    return curve_states(design, outcomes, manifest)
