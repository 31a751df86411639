"""Adapters over :class:`~stabilitybench.generate.probe.Probe`, named for what they adapt.

:class:`~.sb3.SB3Callback` (stable-baselines3), :class:`~.hf.HFTrainerCallback` (Hugging Face ``Trainer``) and
:class:`~.lightning.LightningCallback` (PyTorch Lightning). Each imports its framework only when used
(``stabilitybench.generate.adapters.sb3``, ``.hf``, ``.lightning``; the last needs the ``[lightning]`` extra),
and each detaches with ``detach()``.
"""
