"""summary.json's contract (analysis.summary): value types, the one writer, the typed strict reader, version 1."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from stabilitybench.analysis.summary import (
    REQUIRED_FIELDS,
    DetectorKey,
    Estimate,
    ResultsCorruptError,
    Status,
    StatusKind,
    SummaryError,
    SummaryFieldError,
    from_document,
    not_testable,
    number,
    read_summary,
    to_json,
    upgrade,
    write_summary,
)


def _doc(**over: object) -> dict:
    doc: dict = {k: {} for k in REQUIRED_FIELDS}
    doc.update(corpus="/c", n_runs=3, data_notes=[], excluded_runs={"n": 0}, groups=[], headline={"caveats": []})
    doc.update(over)
    return doc


def test_status_is_a_kind_and_a_reason_and_reads_version_1_prose() -> None:
    st = Status(StatusKind.NOT_TESTABLE, "fewer than 3 seeds")
    assert st.to_json() == {"status": "not_testable", "reason": "fewer than 3 seeds"}
    assert st.text == "not testable: fewer than 3 seeds" and not st.ok
    assert Status.from_json(st.to_json()) == st
    assert Status(StatusKind.OK).to_json() == {"status": "ok"} and Status.from_json({"status": "ok"}).ok
    assert Status.from_json({"status": "not testable: no collapses"}) == Status(StatusKind.NOT_TESTABLE,
                                                                                "no collapses")
    sep = Status.from_json({"status": "monotone likelihood (separation): the ratios diverge"})
    assert sep.kind is StatusKind.SEPARATED and sep.reason == "the ratios diverge"
    same = Status.from_json({"status": "same as rl/ppo: one group"})
    assert same.kind is StatusKind.SAME_AS and same.text == "same as rl/ppo: one group"
    assert Status.of({"value": 1.0}) is None
    with pytest.raises(SummaryFieldError, match="unknown status"):
        Status.from_json({"status": "perhaps"})
    assert not_testable("why", levels=("a",)) == {"status": "not_testable", "reason": "why", "levels": ("a",)}


def test_estimate_round_trip_and_json_safety() -> None:
    e = number(np.float64(0.5), np.int64(4), (0.1, float("nan")), interval="BCa")
    assert e == {"value": 0.5, "n": 4, "ci_low": 0.1, "ci_high": None, "interval": "BCa"}
    assert type(e["n"]) is int
    assert Estimate.from_json(e) == Estimate(0.5, 4, 0.1, None, {"interval": "BCa"})
    with pytest.raises(SummaryFieldError, match="ci_high"):
        Estimate.from_json({"value": 1, "n": 2, "ci_low": None})
    safe = to_json({"a": [np.float32(1.5), math.inf], ("k"): np.array([1, 2]), "s": Status(StatusKind.OK)})
    assert safe == {"a": [1.5, None], "k": [1, 2], "s": {"status": "ok"}}
    json.dumps(safe, allow_nan=False)


def test_reader_is_strict_and_typed(tmp_path: Path) -> None:
    doc = _doc(early_warning={"by_detector": [{"detector": "kalman", "subset": "all", "auroc": {"value": 0.9}}]},
               pca={"rl/ppo": not_testable("fewer than 3 rows")})
    written = write_summary(doc, tmp_path)
    assert written["summary_version"] == 2
    s = read_summary(tmp_path)
    assert s.n_runs == 3 and s.corpus == "/c" and s.early_warning_status is None
    assert s.by_detector() == {DetectorKey("kalman", "all"): ("early_warning", "by_detector", 0)}
    assert s.get(*s.detector("kalman"), "auroc", "value") == 0.9 and s.detector("gru") is None
    assert s.status("pca", "rl/ppo") == Status(StatusKind.NOT_TESTABLE, "fewer than 3 rows")
    with pytest.raises(SummaryFieldError, match=r"no field /early_warning/by_detector/0/auroc/n \(needed at"):
        s.get("early_warning", "by_detector", 0, "auroc", "n")
    assert s.optional("early_warning", "detection") is None
    with pytest.raises(SummaryError, match="lacks required fields: headline"):
        write_summary({k: v for k, v in doc.items() if k != "headline"}, tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({**written, "summary_version": 99}))
    with pytest.raises(ResultsCorruptError, match="newer than this reader"):
        read_summary(tmp_path)


def test_version_1_documents_are_upgraded_in_memory() -> None:
    v1 = _doc(
        early_warning={"by_detector": {"kalman|all": {"auroc": {"value": 0.9}}},
                       "detection": {"perturbation_on": {"fpr_held_out_controls": {
                           "value": 0.0, "claim": "no calibration: never alarms on a control"}},
                           "kalman": {"fpr_held_out_controls": {"claim": "refused: 1 run < 19"}}},
                       "prediction": {"kalman": {"delta_auroc": {"kick_size|pooled": {"value": 0.1},
                                                                 "kick_size|stratified": {"value": 0.0}}}}},
        coherence_before_collapse={"rl|rolling": {"domain": "rl", "estimator": "rolling"}},
        survival={"cox": {"status": "monotone likelihood (separation): diverge"}},
        regularities={"stochasticity_buffer": {"status": "ok", "cox_status": "not testable: one level"}},
    )
    s = from_document(v1)
    assert s.get("summary_version") == 2
    assert s.by_detector() == {DetectorKey("kalman"): ("early_warning", "by_detector", 0)}
    assert s.get("early_warning", "prediction", "kalman", "delta_auroc", "kick_size", "stratified") == {"value": 0.0}
    assert s.status("survival", "cox").kind is StatusKind.SEPARATED
    assert Status.from_json(s.get("early_warning", "detection", "kalman", "fpr_held_out_controls", "claim")).kind \
        is StatusKind.REFUSED
    fpr = s.get("early_warning", "detection", "perturbation_on", "fpr_held_out_controls")
    assert Status.from_json(fpr["claim"]).kind is StatusKind.NOT_APPLICABLE and fpr["guaranteed_fpr_bound"] is None
    assert Status.from_json(s.get("regularities", "stochasticity_buffer", "cox_status")).reason == "one level"
    assert s.get("coherence_before_collapse", "by_estimator") == [{"domain": "rl", "estimator": "rolling"}]
    assert upgrade(v1)["early_warning"]["by_detector"][0]["detector"] == "kalman"
    with pytest.raises(SummaryFieldError, match="missing top-level field"):
        from_document({"n_runs": 1})
