"""The run spec: one point of the perturbation matrix, frozen and hashable."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from stabilitybench.data_schema.run_writer import hash_run_id
from stabilitybench.data_schema.schema import RUN_ID_VERSION

#: The stochasticity levels every generator offers (each generator's config maps them to its own knobs).
STOCHASTICITY_LEVELS = ("low", "default", "high")


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run. Two equal specs produce the same ``run_id``.

    ``onset_frac`` is a fraction of the run's optimizer updates; ``duration_steps``
    counts optimizer updates. ``hparams`` are algorithm overrides as sorted
    ``(name, value)`` pairs (validated against the algorithm's config by the profile
    loader).

    A *regime* kind (``sustained``, e.g. ``lr_regime``; :mod:`stabilitybench.generate.perturbations`) holds from
    update 0 for the whole run, so its window is not a setting: the spec sets ``onset_frac = 0`` and
    ``duration_steps`` = :meth:`planned_updates`, whatever was passed. One run has one spec and one ``run_id``,
    and the manifest says onset 0 and a duration of the whole run. (A spec whose generator cannot resolve its
    config keeps the values given; the profile loader reports the real problem.)
    """

    domain: str
    algo: str
    env: str
    seed: int
    perturbation: str = "none"
    magnitude: float = 1.0
    onset_frac: float = 0.3
    duration_steps: int = 1
    stochasticity: str = "default"
    total_steps: int = 100_000
    coherence_window: int = 8
    perf_window: int = 5
    hparams: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        # Normalise numeric types so 10 and 10.0 hash alike.
        object.__setattr__(self, "magnitude", float(self.magnitude))
        object.__setattr__(self, "onset_frac", float(self.onset_frac))
        for name in ("seed", "duration_steps", "total_steps", "coherence_window", "perf_window"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "hparams", tuple(sorted((str(k), v) for k, v in dict(self.hparams).items())))
        if _sustained(self.perturbation):
            planned = self._planned_or_none()
            if planned is not None:
                object.__setattr__(self, "onset_frac", 0.0)
                object.__setattr__(self, "duration_steps", planned)

    def planned_updates(self) -> int:
        """The optimizer updates this run is planned to make (its generator's config; imports no torch)."""
        from stabilitybench.generate.registry import generator_for

        return int(generator_for(self.domain, self.algo).config(self).planned_updates(self.total_steps))

    def _planned_or_none(self) -> int | None:
        from stabilitybench.data_schema.errors import StabilityBenchError

        try:
            return self.planned_updates()
        except (StabilityBenchError, ValueError, TypeError, KeyError):
            return None

    @property
    def run_id(self) -> str:
        """Stable hash of every field and RUN_ID_VERSION (:func:`stabilitybench.data_schema.run_writer.hash_run_id`)."""
        return hash_run_id(self.to_dict(), RUN_ID_VERSION)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hparams"] = dict(self.hparams)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        d = dict(d)
        d["hparams"] = tuple(dict(d.get("hparams") or {}).items())
        return cls(**d)

    def axis_value(self, name: str) -> Any:
        return getattr(self, name)


def _sustained(kind: str) -> bool:
    """Whether ``kind`` is a regime (held from update 0 for the whole run); False for an unknown kind."""
    from stabilitybench.generate.perturbations import REGISTRY

    cls = REGISTRY.get(kind)
    return bool(cls is not None and cls.sustained)
