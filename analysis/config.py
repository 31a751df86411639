"""``AnalysisConfig``: every setting of :func:`stabilitybench.analysis.pipeline.run_analysis` in one frozen value.

Its own module so that the pipeline's stages (:mod:`~stabilitybench.analysis.groups`,
:mod:`~stabilitybench.analysis.stages`) and the orchestration import it without a cycle; ``summary.json``'s
``config`` entry is written from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stabilitybench.analysis.collapse import CollapseConfig
from stabilitybench.analysis.data import FeatureConfig
from stabilitybench.analysis.early_warning import EarlyWarningConfig


@dataclass(frozen=True)
class AnalysisConfig:
    """Every setting of the analysis, fixed before looking at test data."""

    collapse: CollapseConfig = field(default_factory=CollapseConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    early_warning: EarlyWarningConfig = field(default_factory=EarlyWarningConfig)
    n_null: int = 99
    pca_in_memory_rows: int = 5_000_000
    early_frac: float = 0.02
    n_boot: int = 1000
    seed: int = 0
    #: how many times regularity 2's ED50 ratio was looked at while seeds were added (its CI is widened for them)
    ratio_looks: int = 1

    def __post_init__(self) -> None:
        if self.ratio_looks < 1:
            raise ValueError(f"ratio_looks={self.ratio_looks!r} must be >= 1")
