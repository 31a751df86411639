"""``summary.json``: its value types, its one writer and its one typed reader.

``summary.json`` holds every headline number of an analysis. Its leaves are made by the
frozen dataclasses of this module, so their shape is declared once:

* :class:`Estimate`: ``{"value", "n", "ci_low", "ci_high", ...extra}``, a number with its n and CI;
* :class:`Status`: ``{"status": <StatusKind value>, "reason": <why>}`` on an entry the data could
  not fully support. Code branches on :attr:`Status.kind` (an :class:`StatusKind`), never on the
  wording of the reason; :attr:`Status.text` is what a page shows;
* :class:`DetectorKey`: ``(detector, subset)``; per-detector metrics are stored as a list of records
  carrying both fields (``early_warning.by_detector``) and read back keyed by the tuple.

:func:`write_summary` is the only code that writes the file (through :func:`to_json`, the one
JSON sanitiser of the project: numpy scalars to Python, non-finite floats to null, dataclasses
through their ``to_json``). :func:`read_summary` is the only reader: it returns a
:class:`Summary` whose accessors raise :class:`SummaryFieldError` for an absent field, so a renamed
key fails loudly instead of printing "n/a". Version 1 files (composite ``"kalman|all"`` keys,
statuses as prose) are upgraded in memory on read (:func:`upgrade`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from stabilitybench.analysis.errors import AnalysisError

#: File name of the summary inside a results folder.
SUMMARY_FILE = "summary.json"
#: Version of the summary layout this module writes (1: composite keys and prose statuses; 2: this module).
SUMMARY_VERSION = 2
#: Top-level fields every summary has (a missing one is a :class:`SummaryFieldError` on read).
REQUIRED_FIELDS = ("corpus", "n_runs", "data_notes", "excluded_runs", "groups", "features", "config", "collapse",
                   "pca", "coherence_before_collapse", "early_warning", "survival", "regularities", "questions",
                   "headline")

#: The questions the analysis answers, by id: what each measures. summary.json ``questions`` gives each its n_runs
#: (:func:`stabilitybench.analysis.summary_doc.question_index`); each report figure names the id it draws.
QUESTIONS: dict[str, str] = {
    "onset_telemetry": "descriptive: telemetry around perturbation onset (no test)",
    "dose_response": "dose-response: collapse probability per magnitude and kind",
    "survival_km": "survival: time to collapse per configuration vs matched controls (log-rank)",
    "survival_cox": "survival: landmark Cox hazard ratios on perturbed runs from onset + 10 blocks (dose within "
                    "kind, early MSD and coherence from blocks before the landmark)",
    "pca_dimension": "low dimension: PCA of block features, each group's control mean trajectory removed, vs "
                     ">= 99 circular-shift surrogates",
    "pca_trajectories": "descriptive: block trajectories in PC1-PC2",
    "detection_msd": "(a) detection: MSD aligned on the offline collapse date and lead times",
    "detection_roc": "(a) detection: AUROC and its difference from perturbation_on, FPR on held-out controls (folds "
                     "with >= 19 calibration controls; the others under small_folds); (b) and its landmark "
                     "sensitivity are in summary.json early_warning.prediction / prediction_sensitivity",
    "detection_same_dose": "(a') same-dose detection: collapsed vs surviving perturbed runs of one group x kind x "
                           "magnitude x duration cell, scored over one window that ends before the cell's first "
                           "collapse (stratified AUROC, summary.json early_warning.same_dose_detection)",
    "time_to_event": "(c) time to event: regime runs (no kick) and controls, per block 'collapse within the next h "
                     "updates' (RL h = 100, 500; LM h = 50, 200): AUROC, false alarms per 10k stable updates, "
                     "collapses warned at 1 false alarm per 10k, null twins, against the no-kick reference (updates "
                     "since the regime began); summary.json early_warning.time_to_event",
    "d": "(d) held-out generalisation: monitors and thresholds fitted without any run of a perturbation kind "
         "(leave-one-kind-out) or of an env (leave-one-env-out: fitted and calibrated on the other envs' controls, "
         "scored on the held-out env's runs); (a), (a') and (b) side by side with the in-sample numbers, and the "
         "false-alarm rate on the held-out env's controls (summary.json early_warning.held_out)",
    "dissociation": "regularity 1: final performance vs stability, per domain and algorithm",
    "stochasticity_buffer": "regularity 2: dose-response shift (ED50 per level, ratio high/low), fixed-dose "
                            "rates, controls",
    "coherence_before_collapse": "coherence precedence: collapsed vs perturbed-not-collapsed runs of the same "
                                 "configuration, aligned on onset, per domain and estimator",
    "final_performance": "descriptive: final performance normalised by the matched controls (IQM, performance "
                         "profiles)",
    "intervention": "intervention: collapse and final performance with vs without acting on the live monitor's "
                    "alarm (matched pairs)",
}


class SummaryError(AnalysisError):
    """Base class of summary.json errors."""


class ResultsNotFoundError(SummaryError):
    """The results folder (or its summary.json) does not exist: run ``stabilitybench analyze`` first."""


class ResultsCorruptError(SummaryError):
    """summary.json or a results table exists but cannot be read: rerun ``stabilitybench analyze``."""


class SummaryFieldError(SummaryError, KeyError):
    """A field the reader needs is absent from summary.json (renamed, or written by another version)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


# --------------------------------------------------------------------------- value types
class StatusKind(str, Enum):
    """Why an entry has no (or only a qualified) estimate. Branch on this, never on a reason's words."""

    OK = "ok"
    NOT_TESTABLE = "not_testable"  #: the data cannot support the analysis (too few runs, seeds, events)
    SEPARATED = "separated"  #: monotone likelihood: estimates diverge, only penalised ones are given
    SKIPPED = "skipped"  #: one fold or unit left out (no training, calibration or test run)
    REFUSED = "refused"  #: a claim (e.g. an FPR guarantee) is withheld: too few calibration runs
    NOT_APPLICABLE = "not_applicable"  #: the quantity has no meaning for this entry (e.g. a reference)
    SAME_AS = "same_as"  #: identical to another entry (e.g. pooled PCA over one group)

    @property
    def label(self) -> str:
        """The words a page shows before the reason."""
        return _LABELS[self]


_LABELS = {
    StatusKind.OK: "ok", StatusKind.NOT_TESTABLE: "not testable",
    StatusKind.SEPARATED: "monotone likelihood (separation)", StatusKind.SKIPPED: "skipped",
    StatusKind.REFUSED: "refused", StatusKind.NOT_APPLICABLE: "not applicable", StatusKind.SAME_AS: "same as",
}
#: Version-1 prose prefixes, for reading old files only.
_LEGACY_PREFIXES = (("not testable", StatusKind.NOT_TESTABLE), ("monotone likelihood (separation)",
                    StatusKind.SEPARATED), ("skipped", StatusKind.SKIPPED), ("refused", StatusKind.REFUSED),
                    ("no calibration", StatusKind.NOT_APPLICABLE), ("same as", StatusKind.SAME_AS),
                    ("ok", StatusKind.OK))


@dataclass(frozen=True)
class Status:
    """The status of a summary entry: ``kind`` (what a program branches on) and ``reason`` (for people)."""

    kind: StatusKind
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.kind is StatusKind.OK

    @property
    def text(self) -> str:
        """Display text, e.g. ``"not testable: fewer than 3 seeds"`` (``"same as rl/ppo: ..."`` for SAME_AS)."""
        if not self.reason:
            return self.kind.label
        sep = " " if self.kind is StatusKind.SAME_AS else ": "
        return f"{self.kind.label}{sep}{self.reason}"

    def __str__(self) -> str:
        return self.text

    def to_json(self) -> dict[str, Any]:
        return {"status": self.kind.value, **({"reason": self.reason} if self.reason else {})}

    @classmethod
    def from_json(cls, node: Mapping[str, Any] | str) -> Status:
        """From an entry ``{"status": kind, "reason": ...}`` (or a bare kind / version-1 prose string)."""
        if isinstance(node, Mapping):
            if "status" not in node:
                raise SummaryFieldError("summary.json: an entry has no 'status' field")
            raw, reason = node["status"], node.get("reason")
        else:
            raw, reason = node, None
        if isinstance(raw, Mapping):  # a nested status record (e.g. cox_status)
            return cls.from_json(raw)
        raw = str(raw)
        try:
            return cls(StatusKind(raw), str(reason or ""))
        except ValueError:
            return _legacy_status(raw)

    @classmethod
    def of(cls, node: Any) -> Status | None:
        """The status of a summary entry, or None when ``node`` carries no ``status`` field."""
        if isinstance(node, Mapping) and "status" in node:
            return cls.from_json(node)
        return None


def _legacy_status(text: str) -> Status:
    for prefix, kind in _LEGACY_PREFIXES:
        if text == prefix or text.startswith(prefix + ":") or (kind is StatusKind.SAME_AS and text.startswith(prefix)):
            return Status(kind, text[len(prefix):].lstrip(": ").strip())
    raise SummaryFieldError(f"summary.json: unknown status {text!r} (known: {', '.join(k.value for k in StatusKind)})")


def not_testable(reason: str, **extra: Any) -> dict[str, Any]:
    """The summary entry of an analysis that the data cannot support: a NOT_TESTABLE status plus ``extra``."""
    return {**Status(StatusKind.NOT_TESTABLE, reason).to_json(), **{k: plain(v) for k, v in extra.items()}}


@dataclass(frozen=True)
class Estimate:
    """A headline number: ``value`` with its ``n`` and two-sided 95% CI (``None`` where there is none).

    ``extra`` holds the entry's other fields (``interval``, ``note``, ``target``, ...), written beside them.
    """

    value: float | None
    n: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {"value": plain(self.value), "n": plain(self.n), "ci_low": plain(self.ci_low),
               "ci_high": plain(self.ci_high)}
        out.update({k: plain(v) for k, v in self.extra.items()})
        return out

    @classmethod
    def from_json(cls, node: Mapping[str, Any]) -> Estimate:
        missing = [k for k in ("value", "n", "ci_low", "ci_high") if k not in node]
        if missing:
            raise SummaryFieldError(f"summary.json: an estimate lacks {', '.join(missing)}")
        return cls(node["value"], node["n"], node["ci_low"], node["ci_high"],
                   {k: v for k, v in node.items() if k not in ("value", "n", "ci_low", "ci_high")})


def number(value: Any, n: int | None = None, ci: tuple[Any, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A headline number for ``summary.json`` (an :class:`Estimate` as JSON)."""
    lo, hi = ci if ci is not None else (None, None)
    return Estimate(value, n, lo, hi, extra).to_json()


class DetectorKey(NamedTuple):
    """Key of the per-detector metrics: the detector (``kalman``, ``grad_norm_z``, ...) and the run subset."""

    detector: str
    subset: str = "all"


# --------------------------------------------------------------------------- the one JSON sanitiser
def plain(v: Any) -> Any:
    """JSON-safe scalar: numpy types to Python, non-finite floats to None, enums to their value."""
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


def to_json(o: Any) -> Any:
    """Recursively make ``o`` JSON-safe (the project's one sanitiser for summary.json and JSON cells).

    Dicts get string keys; tuples, lists and arrays become lists; dataclasses with ``to_json`` use
    it; numpy scalars become Python; non-finite floats become None.
    """
    if hasattr(o, "to_json") and dataclasses.is_dataclass(o):
        return to_json(o.to_json())
    if isinstance(o, Mapping):
        return {str(k): to_json(v) for k, v in o.items()}
    if isinstance(o, np.ndarray):
        return to_json(o.tolist())
    if isinstance(o, (list, tuple)):
        return [to_json(v) for v in o]
    return plain(o)


def dumps(o: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`to_json` (strict: no NaN, no unknown types)."""
    return json.dumps(to_json(o), allow_nan=False, **kwargs)


# --------------------------------------------------------------------------- the typed document
def _pointer(path: tuple[str | int, ...]) -> str:
    return "/" + "/".join(str(p) for p in path) if path else "/"


@dataclass(frozen=True)
class Summary:
    """summary.json read back: typed top-level accessors and strict lookups into the document.

    ``doc`` is the (version-2) JSON document. :meth:`get` raises :class:`SummaryFieldError` for an
    absent path; :meth:`optional` returns None, and is for fields that are absent by design (a not
    testable analysis has no estimates). ``source`` is the file it came from (for messages).
    """

    doc: Mapping[str, Any]
    source: str = "summary.json"

    # ----------------------------------------------------------------- generic, strict
    def get(self, *path: str | int) -> Any:
        node: Any = self.doc
        for i, key in enumerate(path):
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                raise SummaryFieldError(
                    f"{self.source}: no field {_pointer(path[: i + 1])} (needed at {_pointer(path)}); it was renamed "
                    "or removed: rerun `stabilitybench analyze`, or update the reader in analysis/summary.py"
                ) from None
        return node

    def has(self, *path: str | int) -> bool:
        try:
            self.get(*path)
        except SummaryFieldError:
            return False
        return True

    def optional(self, *path: str | int) -> Any:
        """The value at ``path``, or None where the path is absent (by design, e.g. a not testable analysis)."""
        return self.get(*path) if self.has(*path) else None

    def status(self, *path: str | int) -> Status | None:
        """The :class:`Status` of the entry at ``path`` (which must exist), or None when it has none."""
        return Status.of(self.get(*path))

    def estimate(self, *path: str | int) -> Estimate:
        return Estimate.from_json(self.get(*path))

    # ----------------------------------------------------------------- typed top level
    @property
    def corpus(self) -> str:
        return str(self.get("corpus"))

    @property
    def n_runs(self) -> int:
        return int(self.get("n_runs"))

    @property
    def n_excluded(self) -> int:
        return int(self.get("excluded_runs", "n"))

    @property
    def data_notes(self) -> tuple[str, ...]:
        return tuple(str(n) for n in self.get("data_notes"))

    @property
    def caveats(self) -> tuple[str, ...]:
        return tuple(str(c) for c in self.get("headline", "caveats"))

    @property
    def early_warning_status(self) -> Status | None:
        """None when the early-warning evaluation ran, else why not."""
        return self.status("early_warning")

    def by_detector(self) -> dict[DetectorKey, tuple[str | int, ...]]:
        """Path of each detector's metrics record, keyed by ``(detector, subset)`` (empty when not evaluated)."""
        if self.early_warning_status is not None:
            return {}
        return {DetectorKey(r["detector"], r["subset"]): ("early_warning", "by_detector", i)
                for i, r in enumerate(self.get("early_warning", "by_detector"))}

    def detector(self, detector: str, subset: str = "all") -> tuple[str | int, ...] | None:
        """Path of one detector's metrics record, or None when that detector was not evaluated."""
        return self.by_detector().get(DetectorKey(detector, subset))

    def __iter__(self) -> Iterator[str]:
        return iter(self.doc)


def write_summary(summary: Mapping[str, Any], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Write ``out/summary.json`` atomically (the only writer); returns the JSON-safe document written."""
    from stabilitybench.data_schema.io import atomic_path

    doc = to_json({"summary_version": SUMMARY_VERSION, **summary})
    missing = [k for k in REQUIRED_FIELDS if k not in doc]
    if missing:
        raise SummaryError(f"summary lacks required fields: {', '.join(missing)}")
    with atomic_path(Path(out, SUMMARY_FILE)) as tmp:
        tmp.write_text(json.dumps(doc, indent=2, allow_nan=False), encoding="utf-8")
    return doc


def read_summary(results: str | os.PathLike[str]) -> Summary:
    """The typed summary of a results folder (version-1 files are upgraded in memory)."""
    path = Path(results, SUMMARY_FILE)
    if not path.exists():
        raise ResultsNotFoundError(f"{path.parent}: no summary.json here (run `stabilitybench analyze` first)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ResultsCorruptError(f"{path}: not valid JSON ({exc}); rerun `stabilitybench analyze`") from None
    if not isinstance(doc, dict):
        raise ResultsCorruptError(f"{path}: not an analysis summary (a JSON object); rerun `stabilitybench analyze`")
    return from_document(doc, str(path))


def from_document(doc: Mapping[str, Any], source: str = "summary.json") -> Summary:
    """A :class:`Summary` of an in-memory document; checks the version and the required fields."""
    version = doc.get("summary_version", 1)
    if version not in (1, SUMMARY_VERSION):
        raise ResultsCorruptError(f"{source}: summary_version {version} is newer than this reader "
                                  f"({SUMMARY_VERSION}); upgrade stabilitybench")
    if version == 1:
        doc = upgrade(doc)
    missing = [k for k in REQUIRED_FIELDS if k not in doc]
    if missing:
        raise SummaryFieldError(f"{source}: missing top-level field(s) {', '.join(missing)}; rerun "
                                "`stabilitybench analyze`")
    return Summary(doc, source)


# --------------------------------------------------------------------------- version 1 -> 2
def upgrade(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A version-1 document in the version-2 layout: prose statuses become kinds, composite keys records."""
    new = _statuses(doc)
    ew = new.get("early_warning")
    if isinstance(ew, dict) and isinstance(ew.get("by_detector"), dict):
        records = []
        for key, metrics in ew["by_detector"].items():
            det, _, subset = str(key).partition("|")
            records.append({"detector": det, "subset": subset or "all", **metrics})
        ew["by_detector"] = records
    for holder in (ew, new.get("headline")):  # version 1 wrote no bound for the perturbation-on reference
        fpr = ((holder or {}).get("detection") or {}).get("perturbation_on", {}).get("fpr_held_out_controls")
        if isinstance(fpr, dict):
            fpr.setdefault("guaranteed_fpr_bound", None)
            fpr.setdefault("alpha_used", None)
    for holder in (ew, new.get("headline")):  # the headline repeats these sections
        if not isinstance(holder, dict):
            continue
        for section in ("prediction", "prediction_references"):
            for entry in (holder.get(section) or {}).values():
                if isinstance(entry, dict) and isinstance(entry.get("delta_auroc"), dict):
                    entry["delta_auroc"] = _nest_deltas(entry["delta_auroc"])
        coh = holder.get("coherence_before_collapse") if holder is not ew else new.get("coherence_before_collapse")
        if isinstance(coh, dict) and "status" not in coh and not isinstance(coh.get("by_estimator"), list):
            (holder if holder is not ew else new)["coherence_before_collapse"] = {"by_estimator": list(coh.values())}
    new["summary_version"] = SUMMARY_VERSION
    return new


def _nest_deltas(flat: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"config_only|pooled": d}`` (version 1) -> ``{"config_only": {"pooled": d}}``."""
    nested: dict[str, dict[str, Any]] = {}
    for key, v in flat.items():
        ref, _, kind = str(key).partition("|")
        nested.setdefault(ref, {})[kind or "pooled"] = v
    return nested


def _statuses(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _statuses(v) for k, v in node.items()}
        for key in ("status", "cox_status", "claim"):
            if isinstance(out.get(key), str):
                st = _legacy_status(out[key]) if key != "status" else Status.from_json(out[key])
                if key == "status":
                    out.update(st.to_json())
                else:
                    out[key] = st.to_json()
        return out
    if isinstance(node, list):
        return [_statuses(v) for v in node]
    return node
