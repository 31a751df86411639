"""Gymnasium env-id checks (MuJoCo tasks are the -v5 versions)."""

from __future__ import annotations

from generate.errors import UnknownEnvError


def check_env_id(env_id: str) -> None:
    """Raise :class:`UnknownEnvError` (one line, with a hint) if gymnasium does not know ``env_id``."""
    import gymnasium

    if env_id in gymnasium.envs.registry:
        return
    base = env_id.split("-v")[0]
    versions = sorted(k for k in gymnasium.envs.registry if k.split("-v")[0] == base)
    hint = f" (registered versions: {', '.join(versions)})" if versions else ""
    raise UnknownEnvError(f"unknown env {env_id!r}{hint}")
