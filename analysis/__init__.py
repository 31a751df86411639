"""Analysis of the corpus (collapse detection, PCA, meta-state monitor, survival, regularities).

Reads the corpus only through ``data_schema``; never imports ``generate``. Not built yet:
see the analysis issue.
"""
