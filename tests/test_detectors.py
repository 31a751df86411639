"""The detector registry: complete, one spec per name, steppers equal to the offline scores, a new baseline in one
file, and an online monitor that reads no detector internals."""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from corpus_tools import ar1_latent

from stabilitybench.analysis import detectors
from stabilitybench.analysis.detectors import (
    DETECTORS,
    DetectorSpec,
    detector_label,
    monitor_names,
    reference_names,
    register,
    rule_names,
    saveable_names,
    spec_for,
    spec_of,
)
from stabilitybench.analysis.early_warning import EarlyWarningConfig, default_detectors, evaluate_group, make_detector
from stabilitybench.analysis.errors import InsufficientDataError, MonitorFileError, UnknownDetectorError
from stabilitybench.analysis.metastate.base import MonitorBase
from stabilitybench.analysis.monitor_file import MonitorFile

FEATURES = ["loss", "grad_norm", "grad_coherence", "entropy", "adam_update_ratio_rms"]
HAS_TORCH = importlib.util.find_spec("torch") is not None
#: Small settings: every detector fits in well under a second.
CFG = EarlyWarningConfig(kalman_iter=10, gru_hidden=8, gru_epochs=10, smooth=3, baseline_window=6, max_folds=3,
                         with_echo=False, n_jobs=1)
ANALYSIS = Path(__file__).resolve().parents[1] / "analysis"


def series(seed: int, n: int = 120, kick_at: int | None = None) -> np.ndarray:
    """Block features ``(n, 5)`` driven by an AR(1) latent; ``kick_at`` shifts the latent by 4 from there on."""
    rng = np.random.default_rng(seed)
    z = ar1_latent(rng, n, kick_at)
    return np.column_stack([0.5 * z + rng.normal(0, 0.1, n), z + rng.normal(0, 0.2, n),
                            np.tanh(0.3 * z) + rng.normal(0, 0.05, n), -0.2 * z + rng.normal(0, 0.1, n),
                            0.3 * z + rng.normal(0, 0.1, n)])


def buildable() -> list[str]:
    """Every detector the evaluation can build (the GRU only with torch)."""
    return [s.name for s in DETECTORS.values() if s.family != "reference" and (HAS_TORCH or not s.needs_torch)]


def fitted(name: str) -> MonitorBase:
    """Detector ``name`` fitted on four series; a practitioners' rule with the test's short window and smoothing
    (its registered build keeps its source's window, up to 128 blocks, and ``smooth = 1``)."""
    spec = spec_for(name)
    if name in rule_names():
        return spec.cls(list(FEATURES), window=6, smooth=CFG.smooth).fit([series(s) for s in range(4)])
    return spec.build(list(FEATURES), CFG).fit([series(s) for s in range(4)])


# ---- the registry ---------------------------------------------------------------------------------------------


def test_every_detector_the_evaluation_scores_has_one_spec() -> None:
    assert set(default_detectors()) <= set(DETECTORS)
    assert set(EarlyWarningConfig().detectors) <= set(DETECTORS)
    assert monitor_names() == ("kalman", "gru")
    assert [s.name for s in DETECTORS.values()] == list(DETECTORS)  # the key is the spec's own name
    assert {s.family for s in DETECTORS.values()} == {"monitor", "baseline", "reference"}
    classes = [s.impl for s in DETECTORS.values() if s.impl is not None]
    assert len(classes) == len(set(classes))  # one spec per class: spec_of() is unambiguous
    with pytest.raises(ValueError, match="already registered"):
        register(DETECTORS["kalman"])


@pytest.mark.parametrize("name", buildable())
def test_build_gives_the_spec_class(name: str) -> None:
    det = make_detector(name, FEATURES, CFG)
    assert type(det) is spec_for(name).cls and spec_of(det) is DETECTORS[name]
    assert det.smooth == (1 if name in rule_names() else CFG.smooth)  # a rule's score is its own statistic


def test_references_are_named_but_never_built() -> None:
    from stabilitybench.analysis.questions import REFERENCES

    assert reference_names() == tuple(REFERENCES)
    assert not set(reference_names()) & set(default_detectors())
    with pytest.raises(InsufficientDataError, match="reference"):
        make_detector("config_only", FEATURES, CFG)


def test_unknown_names_are_one_line_errors() -> None:
    with pytest.raises(UnknownDetectorError, match="unknown detector 'nope'") as err:
        spec_for("nope")
    assert "\n" not in str(err.value) and not str(err.value).startswith("'")
    assert spec_for("kalman+echo") is DETECTORS["kalman"]
    with pytest.raises(UnknownDetectorError, match="nope"):
        evaluate_group(pl.DataFrame({"run_id": [], "seed": []}), {}, FEATURES,
                       EarlyWarningConfig(detectors=("nope",)))  # refused before any fold is fitted
    with pytest.raises(UnknownDetectorError, match="not a registered detector"):
        spec_of(object())


def test_labels_come_from_the_registry() -> None:
    assert detector_label("kalman") == "Kalman monitor (MSD)" and detector_label("loss_spike") == "loss spike z"
    assert detector_label("kalman+echo") == "kalman+echo"  # variants and unknown names print as they are
    assert all(detector_label(n) == s.label for n, s in DETECTORS.items())


@pytest.mark.parametrize("name", [n for n in saveable_names() if HAS_TORCH or not DETECTORS[n].needs_torch])
def test_saveable_detectors_round_trip_through_a_monitor_file(name: str, tmp_path: Path) -> None:
    det = fitted(name)
    back = MonitorFile.load(MonitorFile(det, FEATURES, 4, threshold=1.5).save(tmp_path / f"{name}.monitor.npz"))
    assert back.kind == name and type(back.detector) is type(det) and back.threshold == 1.5
    X = series(9, kick_at=60)
    np.testing.assert_allclose(back.score_blocks(X), det.score(X), rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("name", [s.name for s in DETECTORS.values() if s.family == "baseline" and not s.saveable])
def test_other_detectors_are_refused_by_a_monitor_file(name: str) -> None:
    with pytest.raises(MonitorFileError, match="only the saveable detectors") as err:
        MonitorFile(fitted(name), FEATURES, 4)
    assert "\n" not in str(err.value)


# ---- each detector's own online step ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", buildable())
def test_stepper_reproduces_the_offline_scores(name: str) -> None:
    det = fitted(name)
    X = series(11, kick_at=70)
    X[[5, 33, 34], 0] = np.nan  # missing values (imputed at the training mean)
    X[50, 1] = np.inf  # a non-finite block: +inf for the next `smooth` blocks
    offline = det.score(X)
    step = det.stepper()
    online = np.array([step(x) for x in X])
    assert np.isfinite(offline).sum() > 40 and np.isinf(offline[50:53]).all()
    np.testing.assert_array_equal(np.isnan(online), np.isnan(offline))
    np.testing.assert_array_equal(np.isinf(online), np.isinf(offline))
    # the GRU computes in float32 (one cell step at a time vs one sequence call); the Kalman monitor runs its
    # predictor in F's eigenbasis offline; the others use the same arithmetic up to summation order
    rtol = {"gru": 1e-5, "kalman": 1e-8}.get(name, 1e-10)
    np.testing.assert_allclose(online, offline, rtol=rtol, atol=1e-10, equal_nan=True)
    again = det.stepper()  # a fresh stepper starts a fresh run
    assert again(X[0]) == pytest.approx(online[0], nan_ok=True)


def test_online_monitor_reads_no_detector_internals() -> None:
    """online.py calls the detector's stepper(): no private attribute of another object, no import of the
    module that builds it (that was the monitor_file <-> online import circle)."""
    tree = ast.parse((ANALYSIS / "online.py").read_text())
    private = [f"line {n.lineno}: .{n.attr}" for n in ast.walk(tree)
               if isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")
               and not (isinstance(n.value, ast.Name) and n.value.id == "self")]
    assert private == []
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m and m.endswith("monitor_file") for m in imported)


# ---- a new baseline touches one file ---------------------------------------------------------------------------


class MeanAbsZ(MonitorBase):
    """A toy baseline: the mean absolute standardised feature (no training beyond the standardisation)."""

    available = True

    def __init__(self, features: list[str], smooth: int = 5) -> None:
        self.features = list(features)
        self.smooth = smooth

    def _fit(self, sequences: list[np.ndarray]) -> None:
        return None

    def _nll(self, Z: np.ndarray) -> np.ndarray:
        return np.abs(Z).mean(axis=1)

    def _nll_stepper(self) -> Callable[[np.ndarray], float]:
        return lambda z: float(np.abs(z).mean())


@pytest.fixture
def toy_baseline() -> Iterator[DetectorSpec]:
    spec = register(DetectorSpec("toy_mean_abs_z", "mean |z|", "baseline", MeanAbsZ,
                                 lambda features, cfg: MeanAbsZ(features, smooth=cfg.smooth)))
    try:
        yield spec
    finally:
        DETECTORS.pop(spec.name)


def test_a_registered_baseline_is_scored_by_the_evaluation(toy_baseline: DetectorSpec) -> None:
    assert toy_baseline.name in default_detectors() and detector_label(toy_baseline.name) == "mean |z|"
    assert toy_baseline.name in detectors.baseline_names()
    rows, arrays = [], {}
    for seed in range(6):
        for pert in ("none", "lr_spike"):
            rid = f"{pert}-{seed}"
            X = series(300 + 2 * seed + (pert != "none"), kick_at=None if pert == "none" else 62)
            arrays[rid] = (np.arange(X.shape[0], dtype=np.int64), X, np.zeros(X.shape[0], dtype=bool))
            rows.append({"run_id": rid, "seed": seed, "perturbation": pert, "magnitude": 10.0, "duration_steps": 10,
                         "onset_step": 60, "unperturbed": pert == "none", "collapsed": False, "collapse_kind": None,
                         "collapse_step": None})
    cfg = EarlyWarningConfig(detectors=(toy_baseline.name, "loss_spike"), smooth=3, max_folds=3, with_echo=False,
                             n_jobs=1)
    table, traces, notes = evaluate_group(pl.DataFrame(rows), arrays, FEATURES, cfg)
    toy = table.filter(pl.col("detector") == toy_baseline.name)
    assert toy.height == 12 and set(table["detector"]) == {toy_baseline.name, "loss_spike"}
    assert all(toy_baseline.name in n["detectors"] for n in notes)
    kicked = toy.filter(~pl.col("unperturbed"))["prediction_excess"].mean()
    assert kicked > toy.filter(pl.col("unperturbed"))["prediction_excess"].mean()  # it sees the kick
    assert traces.filter(pl.col("detector") == toy_baseline.name).height == 12 * 120
