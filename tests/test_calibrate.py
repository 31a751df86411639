"""``stabilitybench calibrate``: the adaptive loop on a simulated responder, the dose table and its use in profiles."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tomllib

from stabilitybench.calibrate import CurveState, fit_states, load_design, run_stages, table_markdown, write_dose_table
from stabilitybench.generate.doses import curve_key
from stabilitybench.generate.errors import ProfileError
from stabilitybench.generate.matrix import load_profile
from stabilitybench.generate.spec import RunSpec

DESIGN = """
[defaults]
domain = "rl"
algo = "ppo"
env = "InvertedPendulum-v5"
total_steps = 4096
hparams = {{ n_steps = 256, batch_size = 64, n_epochs = 2, hidden = 16 }}
[design]
controls = 4
first_doses = 4
doses_per_stage = 3
seeds_per_dose = {seeds}
max_runs = {max_runs}
max_stages = {stages}
[[target]]
perturbation = "lr_spike"
duration_steps = 8
m_min = 1.5
m_max = 1000.0
[[target]]
perturbation = "weight_noise"
m_min = 0.05
m_max = 1.0
"""


def _design(tmp_path: Path, seeds: int = 6, max_runs: int = 90, stages: int = 5):
    p = tmp_path / "design.toml"
    p.write_text(DESIGN.format(seeds=seeds, max_runs=max_runs, stages=stages))
    return load_design(p)


class SimulatedCorpus:
    """Stands in for runner + collapse rule: each perturbed spec collapses with a known logistic probability."""

    def __init__(self, design, ed50: dict[str, float | None], slope: float, seed: int = 0) -> None:
        self.design, self.ed50, self.slope = design, ed50, slope
        self.rng = np.random.default_rng(seed)
        self.outcome: dict[str, tuple] = {}  # run_id -> (spec, collapsed)

    def p(self, kind: str, m: float) -> float:
        e = self.ed50[kind]
        return 0.0 if e is None else 1 / (1 + math.exp(-self.slope * (math.log(m) - math.log(e))))

    def observe(self):
        states = {curve_key(t.template): CurveState(t) for t in self.design.targets}
        for spec, collapsed in self.outcome.values():
            st = states.get(curve_key(spec))
            if st is not None:
                st.magnitude.append(spec.magnitude)
                st.collapsed.append(collapsed)
                st.seeds.setdefault(spec.magnitude, set()).add(spec.seed)
        return list(states.values()), set(self.outcome)

    def run(self, specs) -> int:
        for s in specs:
            assert s.run_id not in self.outcome, "the loop asked for a run twice"
            y = s.perturbation != "none" and self.rng.random() < self.p(s.perturbation, s.magnitude)
            self.outcome[s.run_id] = (s, bool(y))
        return len(specs)


def test_loop_recovers_a_known_ed50_within_its_ci(tmp_path: Path) -> None:
    design = _design(tmp_path)
    sim = SimulatedCorpus(design, {"lr_spike": 40.0, "weight_noise": None}, slope=2.5)
    states = run_stages(design, sim.observe, sim.run, say=lambda _m: None)
    rows = {r.target.template.perturbation: r.summary for r in fit_states(states)}
    lr = rows["lr_spike"]
    assert lr["status"] == "ok"
    assert 20.0 < lr["ed50"] < 80.0  # (CI coverage is the next test's job: one replicate misses 5% of the time)
    assert lr["ed50_ci_low"] < lr["ed50"] < lr["ed50_ci_high"]
    assert lr["n_runs"] <= design.max_runs
    # the design moved towards the transition: most runs sit within a factor 10 of the true ED50
    mags = np.array(states[0].magnitude)
    assert np.mean((mags > 4) & (mags < 400)) > 0.6
    # a kind that never collapses stops at m_max and is reported as such, not as an error
    wn = rows["weight_noise"]
    assert wn["status"] == "no_collapse" and wn["m_max"] == 1.0
    assert "none below m_max = 1" in table_markdown(fit_states(states))


def test_loop_ci_coverage_over_replicates(tmp_path: Path) -> None:
    design = _design(tmp_path, seeds=4, max_runs=60, stages=4)
    hits = n = 0
    for rep in range(30):
        sim = SimulatedCorpus(design, {"lr_spike": 25.0, "weight_noise": 0.3}, slope=2.0, seed=rep)
        for row in fit_states(run_stages(design, sim.observe, sim.run, say=lambda _m: None)):
            s = row.summary
            if s["status"] == "ok" and s["ed50_ci_low"] is not None and s["ed50_ci_high"] is not None:
                true = 25.0 if row.target.template.perturbation == "lr_spike" else 0.3
                n += 1
                hits += s["ed50_ci_low"] < true < s["ed50_ci_high"]
    assert n >= 40
    assert hits / n >= 0.8  # nominal 95%; an adaptive design on 60 runs is allowed some slack, not a collapse


def test_budget_caps_the_runs_started(tmp_path: Path) -> None:
    design = _design(tmp_path)
    sim = SimulatedCorpus(design, {"lr_spike": 40.0, "weight_noise": 0.2}, slope=2.5)
    run_stages(design, sim.observe, sim.run, budget=13, say=lambda _m: None)
    assert len(sim.outcome) == 13
    # the controls come first: the collapse rule needs them before any perturbed run can be judged
    kinds = [spec.perturbation for spec, _ in sim.outcome.values()]
    assert kinds[:4] == ["none"] * 4
    # a second invocation resumes: nothing is asked twice (SimulatedCorpus.run asserts it)
    run_stages(design, sim.observe, sim.run, budget=10, say=lambda _m: None)
    assert len(sim.outcome) == 23


def test_a_target_can_have_its_own_run_cap(tmp_path: Path) -> None:
    p = tmp_path / "design.toml"
    text = DESIGN.format(seeds=2, max_runs=6, stages=6)
    p.write_text(text.replace("m_max = 1000.0", "m_max = 1000.0\nmax_runs = 16"))
    design = load_design(p)
    sim = SimulatedCorpus(design, {"lr_spike": 40.0, "weight_noise": 0.2}, slope=2.5)
    states = run_stages(design, sim.observe, sim.run, say=lambda _m: None)
    n = {st.target.template.perturbation: st.n for st in states}
    assert n == {"lr_spike": 16, "weight_noise": 6}


def test_dose_table_round_trips_into_a_profile(tmp_path: Path) -> None:
    design = _design(tmp_path)
    sim = SimulatedCorpus(design, {"lr_spike": 40.0, "weight_noise": None}, slope=2.5)
    rows = fit_states(run_stages(design, sim.observe, sim.run, say=lambda _m: None))
    table = tmp_path / "doses" / "t.toml"
    table.parent.mkdir()
    write_dose_table(rows, table, design, "corpus")
    data = tomllib.loads(table.read_text())
    assert "code_version" in data and len(data["dose"]) == 2
    ed50 = next(d["ed50"] for d in data["dose"] if d["spec"]["perturbation"] == "lr_spike")
    ed80 = next(d["ed80"] for d in data["dose"] if d["spec"]["perturbation"] == "lr_spike")

    head = DESIGN.split("[design]")[0].replace("{{", "{").replace("}}", "}")
    profile = tmp_path / "p.toml"
    profile.write_text('doses = "doses/t.toml"\n' + head + """
[[matrix]]
seed = [0, 1]
perturbation = "lr_spike"
duration_steps = 8
dose = ["ED50", "ED80"]
""")
    specs = load_profile(str(profile))
    assert sorted({s.magnitude for s in specs}) == sorted({float(f"{ed50:.3g}"), float(f"{ed80:.3g}")})
    assert len(specs) == 4

    # the stochasticity-buffer experiment: the default level's ED50 at every level
    profile.write_text('doses = "doses/t.toml"\n' + head + """
[[matrix]]
seed = 0
perturbation = "lr_spike"
duration_steps = 8
stochasticity = ["low", "default", "high"]
dose = "ED50"
dose_stochasticity = "default"
""")
    specs = load_profile(str(profile))
    assert {s.stochasticity for s in specs} == {"low", "default", "high"}
    assert {s.magnitude for s in specs} == {float(f"{ed50:.3g}")}

    # an ED outside the magnitudes tried is an extrapolation, refused
    text = table.read_text()
    table.write_text(text.replace("m_max = 1000.0", "m_max = 20.0", 1))
    profile.write_text('doses = "doses/t.toml"\n' + head + """
[[matrix]]
seed = 0
perturbation = "lr_spike"
duration_steps = 8
dose = "ED50"
""")
    with pytest.raises(ProfileError, match="extrapolation"):
        load_profile(str(profile))
    table.write_text(text)

    # a dose that the calibration could not establish is a one-line error naming the status
    profile.write_text('doses = "doses/t.toml"\n' + head + """
[[matrix]]
seed = 0
perturbation = "weight_noise"
dose = "ED50"
""")
    with pytest.raises(ProfileError, match=r"no_collapse.*none below m_max"):
        load_profile(str(profile))
    # settings that differ from the calibration's (here the duration) find no curve
    profile.write_text('doses = "doses/t.toml"\n' + head + """
[[matrix]]
seed = 0
perturbation = "lr_spike"
duration_steps = 9
dose = "ED50"
""")
    with pytest.raises(ProfileError, match="no curve"):
        load_profile(str(profile))


@pytest.mark.parametrize("text, match", [
    ("[design]\ncontrols = 2\n", "at least one"),
    ("[design]\nbogus = 1\n[[target]]\nperturbation='lr_spike'\nm_min=1.0\nm_max=2.0\n", "unknown key"),
    ("[[target]]\nperturbation='lr_spike'\nm_min=5.0\nm_max=2.0\n", "m_min < m_max"),
    ("[[target]]\nperturbation='lr_spike'\nmagnitude=3.0\nm_min=1.0\nm_max=2.0\n", "chosen by the design"),
    ("[[target]\n", "invalid TOML"),
    ("[[target]]\nperturbation='lr_spike'\nm_min=1.0\nm_max=2.0\nmax_runs=0\n", "max_runs must be"),
])
def test_bad_design_is_one_line(tmp_path: Path, text: str, match: str) -> None:
    head = DESIGN.split("[design]")[0].replace("{{", "{").replace("}}", "}")
    p = tmp_path / "d.toml"
    p.write_text(head + text)
    with pytest.raises(ProfileError, match=match):
        load_design(p)


def test_curve_states_match_runs_by_their_recorded_spec(tmp_path: Path) -> None:
    """The corpus path: runs are matched to curves through the manifest's config_json (a JSON round trip)."""
    import json

    import polars as pl

    from stabilitybench.calibrate import curve_states, next_specs
    from stabilitybench.generate.worker import base_row

    design = _design(tmp_path)
    lr, wn = design.targets
    specs = [*design.controls, lr.spec(10.0, 0), lr.spec(10.0, 1), lr.spec(100.0, 0), wn.spec(0.5, 0),
             lr.spec(100.0, 1)]
    other = RunSpec.from_dict({**lr.template.to_dict(), "duration_steps": 9, "magnitude": 10.0, "seed": 0})
    specs.append(other)  # same kind, other duration: another curve
    rows = [base_row(s) for s in specs]
    assert json.loads(rows[0]["config_json"])["spec"]["hparams"] == dict(design.controls[0].hparams)
    manifest = pl.DataFrame(rows[:-2] + rows[-1:]).with_columns(pl.lit("ok").alias("status"))
    manifest = pl.concat([manifest, pl.DataFrame([rows[-2]]).with_columns(pl.lit("running").alias("status"))],
                         how="diagonal_relaxed")  # lr x100 seed 1 is still running: no outcome, but its seed is taken
    collapsed = {lr.spec(100.0, 0).run_id: True}
    outcomes = pl.DataFrame({"run_id": [r["run_id"] for r in rows[:-2] + rows[-1:]],
                             "collapsed": [collapsed.get(r["run_id"], False) for r in rows[:-2] + rows[-1:]]})
    st_lr, st_wn = curve_states(design, outcomes, manifest)
    assert sorted(zip(st_lr.magnitude, st_lr.collapsed, strict=True)) == [(10.0, False), (10.0, False), (100.0, True)]
    assert st_lr.seeds[100.0] == {0, 1}
    assert (st_wn.magnitude, st_wn.collapsed) == ([0.5], [False])
    new = next_specs(design, [st_lr, st_wn], stage=1)
    assert not {s.run_id for s in new} & {r["run_id"] for r in rows}  # never a run the corpus already has


def test_an_extrapolated_or_quasi_separated_curve_is_not_ok_and_plans_the_next_stage(tmp_path: Path) -> None:
    """weight_noise with an ED50 beyond the target's m_max = 1: the fit says 'extrapolated' (not ok), the next stage
    tries doses above m_max (up to 2 x m_max), and a profile cannot take a dose from it."""
    from stabilitybench.calibrate import next_specs

    design = _design(tmp_path)
    lr, wn = design.targets
    st = CurveState(wn)
    for dose, k in ((0.05, 0), (0.1357, 1), (0.3684, 2), (1.0, 6)):  # 6 of 20 collapse at m_max
        for seed in range(20):
            st.magnitude.append(dose)
            st.collapsed.append(seed < k)
            st.seeds.setdefault(dose, set()).add(seed)
    quasi = CurveState(lr)  # survived at 10, both outcomes at 100, collapsed at 1000
    for dose, outcomes in ((10.0, (False, False)), (100.0, (False, True)), (1000.0, (True, True))):
        for seed, y in enumerate(outcomes):
            quasi.magnitude.append(dose)
            quasi.collapsed.append(y)
            quasi.seeds.setdefault(dose, set()).add(seed)
    rows = {r.target.template.perturbation: r.summary for r in fit_states([quasi, st])}
    assert rows["weight_noise"]["status"] == "extrapolated" and rows["weight_noise"]["ed50"] > 1.0
    assert rows["lr_spike"]["status"] == "quasi_separated" and rows["lr_spike"]["mixed_dose"] == 100.0
    specs = next_specs(design, [quasi, st], stage=1)
    wn_doses = {s.magnitude for s in specs if s.perturbation == "weight_noise"}
    lr_doses = {s.magnitude for s in specs if s.perturbation == "lr_spike"}
    assert wn_doses and min(wn_doses) > 1.0 and max(wn_doses) <= 2.0
    assert 100.0 in lr_doses and 10.0 < min(lr_doses) < 100.0 < max(lr_doses) < 1000.0
    # the dose table keeps the statuses; a profile asking for their ED50 gets a one-line refusal naming them
    table = tmp_path / "doses" / "t.toml"
    table.parent.mkdir()
    write_dose_table(fit_states([quasi, st]), table, design, "corpus")
    head = DESIGN.split("[design]")[0].replace("{{", "{").replace("}}", "}")
    profile = tmp_path / "p.toml"
    for block, match in (('perturbation = "weight_noise"', "extrapolated"),
                         ('perturbation = "lr_spike"\nduration_steps = 8', "quasi_separated")):
        profile.write_text('doses = "doses/t.toml"\n' + head + f"[[matrix]]\nseed = 0\n{block}\ndose = \"ED50\"\n")
        with pytest.raises(ProfileError, match=match):
            load_profile(str(profile))


def test_a_stopped_calibrate_says_so_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT/SIGTERM stop the runner with Interrupted; calibrate printed its traceback (generate printed one line)."""
    from typer.testing import CliRunner

    from stabilitybench import calibrate as cal
    from stabilitybench.cli import app
    from stabilitybench.generate.errors import Interrupted

    def stopped(*args: object, **kwargs: object) -> None:
        raise Interrupted(1, 5)

    monkeypatch.setattr(cal, "calibrate", stopped)
    design = Path(__file__).resolve().parents[1] / "calibration" / "ppo_swimmer.toml"
    res = CliRunner().invoke(app, ["calibrate", str(design), "--corpus", str(tmp_path / "c"),
                                   "--doses", str(tmp_path / "d.toml")])
    assert res.exit_code == 130 and not isinstance(res.exception, Interrupted), res.output
    assert "interrupted: 1 done, 5 left; rerun to resume" in res.output and not (tmp_path / "d.toml").exists()
