"""RL generators (stable-baselines3 on MuJoCo -v5 tasks)."""
