"""Generators of the StabilityBench corpus: profiles, run specs, the runner, RL (and later LM) training."""
