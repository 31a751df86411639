"""Adapters over :class:`~generate.probe.Probe`: stable-baselines3, Hugging Face ``Trainer`` and PyTorch Lightning.

Each imports its framework only when used (``generate.adapters.sb3``, ``generate.adapters.hf``,
``stabilitybench.generate.adapters.lightning``; the last needs the ``[lightning]`` extra).
"""
