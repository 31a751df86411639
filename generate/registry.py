"""Which generator runs a (domain, algo), with its config class and stochasticity levels.

Entries name their run function as ``"module:function"`` and import it lazily, so
the CLI and the profile checker start without importing torch or SB3.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import pyarrow as pa

from stabilitybench.generate.errors import ProfileError
from stabilitybench.generate.intervention import INTERVENTION_HPARAMS
from stabilitybench.generate.lm import config as lm_config
from stabilitybench.generate.rl import config as rl_config
from stabilitybench.generate.spec import STOCHASTICITY_LEVELS, RunSpec


@dataclass(frozen=True)
class GeneratorResult:
    """What a generator hands back to the runner for one run."""

    steps: pa.Table
    events: pa.Table
    planned_updates: int
    onset_step: int
    stop_reason: str  # completed | nonfinite
    knobs: dict[str, Any]  # stochasticity knobs for the manifest: batch_size, n_envs, ent_coef
    config: dict[str, Any]  # the fully resolved algorithm config
    tokenizer_hash: str | None = None


@dataclass(frozen=True)
class Generator:
    domain: str
    algo: str
    config_cls: type
    stochasticity: tuple[str, ...]
    entry: str
    resolver: Callable[[str, str, str, dict[str, Any]], Any]
    #: hparams the generator itself reads (not the algorithm config): name -> type
    extra_hparams: tuple[tuple[str, type], ...] = ()
    #: importable modules a run needs beyond the core install, and the extra that installs them
    requires: tuple[str, ...] = ()
    extra: str = "generate"

    def config(self, spec: RunSpec) -> Any:
        """The algorithm config of ``spec`` (see the domain's config module for the resolution order)."""
        if spec.stochasticity not in self.stochasticity:
            raise ProfileError(
                f"unknown stochasticity level {spec.stochasticity!r} for {self.algo} "
                f"(available: {', '.join(self.stochasticity)})"
            )
        extra = dict(self.extra_hparams)
        return self.resolver(self.algo, spec.env, spec.stochasticity,
                             {k: v for k, v in spec.hparams if k not in extra})

    def gpus(self, spec: RunSpec) -> int:
        """GPUs one run of ``spec`` should be given by a scheduler (0 or 1; RL runs are CPU-only)."""
        return int(bool(getattr(self.config(spec), "wants_gpu", False)))

    def hparam_names(self) -> list[str]:
        return [f.name for f in fields(self.config_cls)] + [k for k, _ in self.extra_hparams]

    def hparam_type(self, name: str) -> type:
        return {**{f.name: f.type for f in fields(self.config_cls)}, **dict(self.extra_hparams)}[name]

    def load(self) -> Callable[[RunSpec], GeneratorResult]:
        module, func = self.entry.split(":")
        return getattr(importlib.import_module(module), func)


#: What each domain's runs import beyond the core install (``generate`` checks only the domains a profile contains).
RL_MODULES = ("torch", "stable_baselines3", "gymnasium", "mujoco")
LM_MODULES = ("torch", "transformers", "tokenizers")

GENERATORS: dict[tuple[str, str], Generator] = {
    ("rl", algo): Generator("rl", algo, rl_config.CONFIGS[algo][0], STOCHASTICITY_LEVELS,
                            "stabilitybench.generate.rl.train:run", rl_config.resolve, INTERVENTION_HPARAMS,
                            requires=RL_MODULES, extra="generate")
    for algo in ("ppo", "sac", "td3")
}
GENERATORS[("lm", "gpt2")] = Generator("lm", "gpt2", lm_config.LMConfig, STOCHASTICITY_LEVELS,
                                       "stabilitybench.generate.lm.train:run", lm_config.resolve,
                                       requires=LM_MODULES, extra="lm")


def generator_for(domain: str, algo: str) -> Generator:
    try:
        return GENERATORS[(domain, algo)]
    except KeyError:
        known = ", ".join(f"{d}/{a}" for d, a in GENERATORS)
        raise ProfileError(f"no generator for domain={domain!r} algo={algo!r} (available: {known})") from None


def gpus_for(spec: RunSpec) -> int:
    """GPUs a scheduler should give one run of ``spec`` (GPT-2 ``small``: 1; everything else: 0)."""
    return generator_for(spec.domain, spec.algo).gpus(spec)
