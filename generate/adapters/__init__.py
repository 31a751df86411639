"""Adapters over :class:`~generate.probe.Probe`: stable-baselines3 and Hugging Face ``Trainer``.

Each imports its framework only when used (``generate.adapters.sb3``, ``generate.adapters.hf``).
"""
