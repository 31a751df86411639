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
