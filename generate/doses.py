"""Dose tables: calibrated magnitudes (ED20 / ED50 / ED80) that profiles include by name.

``stabilitybench calibrate`` writes a dose table (TOML, one ``[[dose]]`` per dose-response
curve). A profile includes one with a top-level ``doses = "doses/ppo_swimmer.toml"`` (relative
to the profile file) and then names a dose instead of a magnitude::

    doses = "doses/ppo_swimmer.toml"
    [[matrix]]
    perturbation = "lr_spike"
    duration_steps = 320
    dose = ["ED50", "ED80"]     # instead of magnitude = [...]

A block's runs are matched to the table's curves on every spec field but the magnitude and the
seed (:data:`CURVE_FIELDS`: kind, env, duration, onset, total steps, hyperparameters, ...), so a
dose calibrated for one setting is never silently used for another. The hyperparameters of a live
intervention (:data:`stabilitybench.generate.intervention.INTERVENTION_HPARAMS`: an action on a monitor's alarm) are
not part of the curve: a dose is a property of natural training, and the intervention experiment
applies its actions at the natural ED50 (``calibrate`` fits natural runs only). The magnitude used is the
table's value rounded to 3 significant digits. A curve without that ED (e.g. "no ED50 below
m_max", or a ``quasi_separated`` curve whose outcomes switch at one mixed dose), whose status is
``extrapolated`` (its ED50 lies outside the magnitudes the calibration tried), or whose requested ED lies
outside those magnitudes (an extrapolation of the fit), is a :class:`ProfileError` naming the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tomllib

from stabilitybench.generate.errors import ProfileError
from stabilitybench.generate.intervention import INTERVENTION_HPARAMS
from stabilitybench.generate.spec import RunSpec

_ACTION_KEYS = frozenset(name for name, _ in INTERVENTION_HPARAMS)

#: Spec fields that identify a dose-response curve: everything but the magnitude and the seed.
CURVE_FIELDS = ("domain", "algo", "env", "perturbation", "onset_frac", "duration_steps", "stochasticity",
                "total_steps", "coherence_window", "perf_window", "hparams")
#: Dose names a profile may use, and the dose table key each reads.
DOSE_TAGS = {"ED20": "ed20", "ED50": "ed50", "ED80": "ed80"}


def curve_key(spec: RunSpec | dict[str, Any]) -> str:
    """JSON of a spec's :data:`CURVE_FIELDS` (intervention hparams left out): the runs of one dose-response
    curve share it."""
    d = spec.to_dict() if isinstance(spec, RunSpec) else dict(spec)
    hp = d.get("hparams")
    if isinstance(hp, dict):
        d["hparams"] = {k: v for k, v in hp.items() if k not in _ACTION_KEYS}
    return json.dumps({k: _canonical(d.get(k)) for k in CURVE_FIELDS}, sort_keys=True)


def acts_on_alarms(spec: RunSpec | dict[str, Any]) -> bool:
    """Whether a run acts on a live monitor's alarm (``hparams.intervention`` set): not natural training."""
    d = spec.to_dict() if isinstance(spec, RunSpec) else dict(spec)
    return bool((d.get("hparams") or {}).get("intervention"))


def _canonical(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _canonical(x) for k, x in sorted(v.items())}
    if isinstance(v, int | float) and not isinstance(v, bool):
        return float(v)
    return v


def load_dose_table(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{curve_key: [[dose]] entry}`` of a dose table; a bad file raises :class:`ProfileError`."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such dose table (written by `stabilitybench calibrate`)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: invalid dose table ({exc})") from None
    out = {}
    for i, entry in enumerate(data.get("dose", [])):
        if not isinstance(entry, dict) or not isinstance(entry.get("spec"), dict) or "status" not in entry:
            raise ProfileError(f"{path}: dose[{i}] needs a spec table and a status")
        out[curve_key(entry["spec"])] = entry
    return out


def dose_magnitude(table: dict[str, dict[str, Any]], spec: RunSpec, tag: str, where: str) -> float:
    """The magnitude named ``tag`` (ED20 | ED50 | ED80) for ``spec``'s curve, 3 significant digits."""
    if tag not in DOSE_TAGS:
        raise ProfileError(f"{where}.dose: {tag!r} is not one of {', '.join(DOSE_TAGS)}")
    entry = table.get(curve_key(spec))
    label = f"{spec.algo} {spec.env} {spec.perturbation} dur={spec.duration_steps} total_steps={spec.total_steps}"
    if entry is None:
        raise ProfileError(f"{where}.dose: the dose table has no curve for {label} with these settings "
                           "(kind, duration, onset, steps and hparams must match the calibration)")
    value = entry.get(DOSE_TAGS[tag])
    status = entry["status"]
    if status == "extrapolated":
        raise ProfileError(f"{where}.dose: the calibration of {label} is 'extrapolated': its ED50 "
                           f"({_g(entry.get('ed50'))}) lies {entry.get('extrapolation', 'outside')} the magnitudes "
                           f"tried ({_g(entry.get('m_min'))}..{_g(entry.get('m_max'))}), an extrapolation, not a "
                           "calibrated dose; rerun `stabilitybench calibrate` (it plans doses towards it)")
    if status == "quasi_separated":
        raise ProfileError(f"{where}.dose: no {tag} for {label}: the calibration's status is 'quasi_separated' "
                           f"(every run collapsed above and survived below the one mixed dose "
                           f"{_g(entry.get('mixed_dose'))}; the slope is unbounded); rerun `stabilitybench calibrate` "
                           "(it plans doses around the mixed dose)")
    if value is None:
        raise ProfileError(f"{where}.dose: no {tag} for {label}: the calibration's status is {entry['status']!r}"
                           + (f" (none below m_max = {entry['m_range'][1]:g})"
                              if entry["status"] == "no_collapse" and "m_range" in entry else ""))
    lo, hi = entry.get("m_min"), entry.get("m_max")
    if lo is not None and hi is not None and not lo <= float(value) <= hi:
        raise ProfileError(f"{where}.dose: {tag} of {label} = {float(value):.3g} lies outside the magnitudes the "
                           f"calibration tried ({lo:g}..{hi:g}): an extrapolation, not a calibrated dose")
    return float(f"{float(value):.3g}")


def _g(v: Any) -> str:
    return "?" if v is None else f"{float(v):g}"
