"""Generators of the StabilityBench corpus.

Profiles and their expansion (``matrix``), run specs, the runner, perturbations, the public probe
API (:mod:`generate.probe`, :mod:`generate.recorder`, :mod:`generate.adapters`), and the training
loops: RL in :mod:`stabilitybench.generate.rl`, GPT-2 in :mod:`stabilitybench.generate.lm`.
"""
