"""The keys of a run: which runs are comparable, what configuration a run has, which runs are controls, and
where a run's perturbation starts. The project's one owner of each of these concepts (issue 28).

* :data:`GROUP_KEYS`: the columns that make runs comparable; a run's matched unperturbed runs (its
  controls) share them.
* :class:`ConfigKey`: a run's perturbation configuration (kind, magnitude, duration) and its one label
  format, ``"lr_spike x10 (320 upd)"`` (``"none"`` for no perturbation). :data:`CONFIG_COLUMNS` are the
  manifest columns it is read from; :func:`config_label_expr` is the label as a polars column. Tables carry
  the columns themselves, so joins use columns and the label is for display only.
* :func:`control_mask`: the one definition of a control run: no perturbation, and no action taken on a
  live monitor's alarm (a run whose LR was backed off or that was rolled back is not natural training).
* :data:`SUSTAINED_KINDS` and :func:`sustained_mask`: the perturbation kinds that define a regime (held from
  update 0 for the whole run) rather than a kick.
* :func:`control_onset` and :func:`onset_step`: the one rule for a run's onset update. The generators
  write ``onset_step = round(onset_frac x planned_updates)`` into the manifest for every run, controls
  included (a control's "onset" is the update at which its perturbed twins are kicked). A row without
  ``onset_step`` is resolved by the same rule from ``onset_frac`` and ``planned_updates`` when it has
  them, else it is 0: a :class:`~stabilitybench.generate.recorder.Recorder` control has no onset fraction,
  so its whole run counts as after onset.

It lives in ``data_schema`` because generate (a control's onset), analysis and reports all need it and
``data_schema`` is the floor they share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

#: Keys that make runs comparable: a run's matched unperturbed runs share them.
GROUP_KEYS: tuple[str, ...] = ("domain", "algo", "env", "stochasticity")
#: The manifest columns of a run's configuration (:class:`ConfigKey`), in the order of its fields.
CONFIG_COLUMNS: tuple[str, ...] = ("perturbation", "magnitude", "duration_steps")
#: The perturbation kind (and ``dimension``) of a run without a perturbation; also its configuration label.
NO_PERTURBATION = "none"
#: Perturbation kinds that define a *regime*, not a kick: the setting holds from update 0 for the whole run (e.g.
#: ``lr_regime``, training throughout at an elevated base LR; issue 26). A collapse in such a run comes at a time
#: nobody chose: the collapse rule has no perturbation window to outlast, and question (c) (time to event) is
#: asked of these runs and the controls.
SUSTAINED_KINDS: frozenset[str] = frozenset({"lr_regime"})
#: Where a run's live-monitor action is recorded (``stabilitybench.generate.intervention``): its spec's hparams.
INTERVENTION_PATH = "$.spec.hparams.intervention"


@dataclass(frozen=True)
class ConfigKey:
    """A run's perturbation configuration: ``perturbation`` kind, ``magnitude`` and ``duration`` in updates.

    ``magnitude``/``duration`` may be None (left out of the label), e.g. to label a kind x magnitude
    without its duration.
    """

    perturbation: str
    magnitude: float | None = None
    duration: int | None = None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> ConfigKey:
        """The configuration of a runs/manifest row (its :data:`CONFIG_COLUMNS`; absent or null ones are None)."""
        if row.get("perturbation") is None:
            raise ValueError("ConfigKey.of: the row has no 'perturbation'")
        mag, dur = row.get("magnitude"), row.get("duration_steps")
        return cls(str(row["perturbation"]), None if mag is None else float(mag), None if dur is None else int(dur))

    @property
    def is_control(self) -> bool:
        """Whether this is the configuration of no perturbation. A run with it is a control only if it also took
        no action on an alarm (:func:`control_mask`)."""
        return self.perturbation == NO_PERTURBATION

    def pooled(self) -> ConfigKey:
        """The key of the group this configuration falls in: every control pools into one group (the one its
        label names, ``"none"``), whatever magnitude or duration its row carries; other keys are themselves."""
        return ConfigKey(NO_PERTURBATION, None, None) if self.is_control else self

    def label(self) -> str:
        """The one configuration label: ``"lr_spike x10 (320 upd)"``; ``"none"`` for no perturbation."""
        if self.is_control:
            return NO_PERTURBATION
        mag = "" if self.magnitude is None else f" x{self.magnitude:g}"
        dur = "" if self.duration is None else f" {duration_label(self.duration)}"
        return f"{self.perturbation}{mag}{dur}"


def duration_label(duration: int) -> str:
    """``"(320 upd)"``: how every label writes a perturbation's duration in optimizer updates."""
    return f"({int(duration)} upd)"


def config_label_expr(columns: tuple[str, ...] = CONFIG_COLUMNS) -> pl.Expr:
    """:meth:`ConfigKey.label` of each row as a polars expression (a string column; name it with ``.alias``).

    ``columns``: the perturbation, magnitude and duration columns (default :data:`CONFIG_COLUMNS`); pass
    ``("perturbation", "magnitude")`` for the label without the duration.
    """
    if len(columns) not in (2, 3):
        raise ValueError(f"config_label_expr: columns must name perturbation, magnitude[, duration], got {columns}")

    def label(s: dict[str, Any]) -> str:
        return ConfigKey(s[columns[0]], s[columns[1]], s[columns[2]] if len(columns) == 3 else None).label()

    return pl.struct(list(columns)).map_elements(label, return_dtype=pl.String)


def unperturbed_expr(column: str = "perturbation") -> pl.Expr:
    """Whether ``column`` (a perturbation kind, a dimension or a configuration label) says "no perturbation";
    null counts as perturbed. The configuration half of :func:`control_mask`, for frames without the arm."""
    return (pl.col(column) == NO_PERTURBATION).fill_null(False)


def intervention_arm(runs: pl.DataFrame) -> pl.Series:
    """Per run, the action(s) it took on a live monitor's alarm (``hparams.intervention``), else ``"none"``.

    Read from the manifest's ``config_json``; all ``"none"`` when ``runs`` has no such column.
    """
    if "config_json" not in runs.columns:
        return pl.Series("arm", ["none"] * runs.height, dtype=pl.String)
    return runs.select(pl.col("config_json").str.json_path_match(INTERVENTION_PATH).fill_null("none")
                       .alias("arm")).to_series()


def control_mask(runs: pl.DataFrame) -> pl.Series:
    """Boolean mask (named ``unperturbed``) of the control runs of ``runs``: the project's one definition.

    A run is a control when its ``dimension`` or its ``perturbation`` is ``"none"`` (whichever of the two
    columns ``runs`` has) and it took no action on a live monitor's alarm (:func:`intervention_arm`): a run
    whose LR was backed off or that was rolled back is not natural training, so it defines neither the
    collapse rule's band nor a monitor's training data. Raises ValueError when ``runs`` has neither column.
    """
    tests = [pl.col(c) == NO_PERTURBATION for c in ("dimension", "perturbation") if c in runs.columns]
    if not tests:
        raise ValueError("control_mask needs a 'dimension' or 'perturbation' column")
    none = runs.select(pl.any_horizontal(tests).fill_null(False).alias("unperturbed")).to_series()
    return none & (intervention_arm(runs) == "none")


def sustained_mask(runs: pl.DataFrame) -> pl.Series:
    """Boolean mask (named ``sustained``) of the runs of ``runs`` whose perturbation is a regime
    (:data:`SUSTAINED_KINDS`); all False when ``runs`` has no ``perturbation`` column."""
    if "perturbation" not in runs.columns:
        return pl.Series("sustained", [False] * runs.height, dtype=pl.Boolean)
    return runs.select(pl.col("perturbation").is_in(list(SUSTAINED_KINDS)).fill_null(False)
                       .alias("sustained")).to_series()


def control_onset(onset_frac: float, planned_updates: int) -> int:
    """The onset update of a run planned for ``planned_updates`` updates: ``round(onset_frac x planned)``.

    The generators' rule, for perturbed runs and controls alike (a control's onset is its perturbed twins').
    """
    if not 0.0 <= onset_frac <= 1.0:
        raise ValueError(f"onset_frac {onset_frac!r} must be in [0, 1]")
    if planned_updates < 0:
        raise ValueError(f"planned_updates {planned_updates!r} must be >= 0")
    return round(onset_frac * planned_updates)


def resolve_onset(onset_step: int | None, onset_frac: float | None = None, planned_updates: int | None = None) -> int:
    """The one onset rule on its parts: ``onset_step`` when known; else :func:`control_onset` of ``onset_frac`` and
    ``planned_updates`` when both are known; else 0 (a run without an onset fraction: the whole run is after onset).
    """
    if onset_step is not None:
        return int(onset_step)
    if onset_frac is not None and planned_updates is not None:
        return control_onset(float(onset_frac), int(planned_updates))
    return 0


def onset_step(row: Mapping[str, Any]) -> int:
    """A runs/manifest row's onset update (:func:`resolve_onset` of its ``onset_step``, ``onset_frac`` and
    ``planned_updates``; absent columns count as null)."""
    return resolve_onset(row.get("onset_step"), row.get("onset_frac"), row.get("planned_updates"))
