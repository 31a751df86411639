"""Analysis of the corpus: the paper's claims as measured numbers.

Reads the corpus only through :mod:`data_schema`; never imports ``generate``.
``stabilitybench analyze`` (or ``python -m stabilitybench.analysis``) runs :func:`analysis.pipeline.run_analysis`,
which writes ``results/``: Parquet tables plus ``summary.json``.

Modules
-------
* :mod:`stabilitybench.analysis.data`: runs, events and telemetry features (lazy scans, projection and
  partition pushdown; forward fill of sparse columns; time blocks).
* :mod:`analysis.collapse`: the collapse rule (:class:`~analysis.collapse.CollapseConfig`) and
  per-run outcomes (``runs.parquet``).
* :mod:`stabilitybench.analysis.pca`: low-dimensionality against a time-shuffled null; streaming PCA.
* :mod:`stabilitybench.analysis.metastate`: the Meta-State Monitor (Kalman SSM and GRU), MSD and calibration.
* :mod:`stabilitybench.analysis.baselines`: grad-norm z, loss spike, EWS (variance/AC1 + Kendall tau),
  PCA reconstruction, coherence drop.
* :mod:`stabilitybench.analysis.early_warning`: seed-rotation splits, AUROC, lead times, FPR with CIs.
* :mod:`stabilitybench.analysis.coherence`: gradient coherence aligned on collapse vs matched controls.
* :mod:`stabilitybench.analysis.survival`: Kaplan-Meier, log-rank, Cox PH (statsmodels).
* :mod:`stabilitybench.analysis.regularities`: dissociation, stochasticity buffer, precedence.
* :mod:`stabilitybench.analysis.stats`: intervals, AUROC and bootstrap helpers.
* :mod:`stabilitybench.analysis.pca_summary`: the low-dimensionality entries of summary.json (PCA vs surrogates).
* :mod:`stabilitybench.analysis.summary`: summary.json's value types (Estimate, Status, DetectorKey), its one
  writer and its one typed reader.
* :mod:`stabilitybench.analysis.results`: the results tables' declared Arrow schemas, their writer and reader.
"""
