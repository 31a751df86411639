"""``lr_regime``: a regime, not a kick (issue 26). LR x m from update 0 for the whole run; the spec, the
profile loader and the manifest say onset 0 and duration = the planned updates; a control with the same seed
differs only by the LR."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

from stabilitybench.data_schema.keys import SUSTAINED_KINDS
from stabilitybench.generate.errors import ProfileError
from stabilitybench.generate.lm.config import resolve as lm_resolve
from stabilitybench.generate.lm.train import lr_at, train
from stabilitybench.generate.matrix import expand, load_profile
from stabilitybench.generate.perturbations import REGISTRY, build
from stabilitybench.generate.registry import generator_for
from stabilitybench.generate.rl.train import run as rl_run
from stabilitybench.generate.spec import RunSpec
from stabilitybench.generate.worker import run_one

ROOT = Path(__file__).resolve().parents[1]
SWIMMER = {"domain": "rl", "algo": "ppo", "env": "Swimmer-v5", "total_steps": 50_000}
# PPO with small rollouts: 64 env steps x 2 epochs / 32 per minibatch = 4 updates per rollout, 4 rollouts
PPO_HP = {"n_steps": 64, "batch_size": 32, "n_epochs": 2, "learning_rate": 3e-4, "normalize": False, "hidden": 32,
          "eval_episodes": 0}
LM_MICRO = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "batch_size": 4, "grad_accum": 2,
            "eval_sequences": 4, "vocab_size": 512, "eval_every": 4, "warmup_frac": 0.3}


def test_the_sustained_kinds_are_the_schema_keys() -> None:
    """The generator's registry and data_schema.keys agree on which kinds are regimes."""
    assert {k for k, cls in REGISTRY.items() if cls.sustained} == set(SUSTAINED_KINDS) == {"lr_regime"}
    cls = REGISTRY["lr_regime"]
    assert cls.dimension == "optimization" and cls.identity_magnitude == 1.0 and set(cls.domains) == {"rl", "lm"}
    assert cls.check_magnitude(0.0) is not None and cls.check_magnitude(3.0) is None


def test_the_factor_holds_from_update_0_for_the_whole_run() -> None:
    p = build("lr_regime", 7.0, onset_step=0, duration_steps=100)
    assert [p.lr_factor(s) for s in (0, 1, 99, 100, 10**6)] == [7.0] * 5  # no step down, even past the plan
    assert all(p.active(s) for s in (0, 99, 100))
    spike = build("lr_spike", 7.0, onset_step=0, duration_steps=100)
    assert spike.lr_factor(100) == 1.0  # (a kick ends)


def test_the_spec_of_a_regime_has_onset_0_and_the_planned_updates() -> None:
    s = RunSpec(**SWIMMER, seed=0, perturbation="lr_regime", magnitude=10, onset_frac=0.3, duration_steps=320)
    planned = generator_for("rl", "ppo").config(s).planned_updates(s.total_steps)
    assert planned == 8000 and (s.onset_frac, s.duration_steps) == (0.0, planned)
    # whatever was written, one run and one run_id
    assert RunSpec(**SWIMMER, seed=0, perturbation="lr_regime", magnitude=10).run_id == s.run_id
    lm = RunSpec(domain="lm", algo="gpt2", env="pydoc-topics", seed=0, total_steps=256_000, perturbation="lr_regime",
                 magnitude=30, hparams={"block_size": 64, "warmup_frac": 0.01})
    assert (lm.onset_frac, lm.duration_steps) == (0.0, 250)
    kick = RunSpec(**SWIMMER, seed=0, perturbation="lr_spike", magnitude=10, onset_frac=0.3, duration_steps=320)
    assert (kick.onset_frac, kick.duration_steps) == (0.3, 320)  # kicks keep their window


def test_a_profile_leaves_the_window_out_and_a_stated_other_window_is_an_error() -> None:
    defaults = {**SWIMMER, "onset_frac": 0.3, "duration_steps": 320}  # a kick's settings in the defaults
    (spec,) = expand({"defaults": defaults, "matrix": [{"perturbation": "lr_regime", "magnitude": 10.0, "seed": 0}]})
    assert (spec.onset_frac, spec.duration_steps) == (0.0, 8000)
    same = {"perturbation": "lr_regime", "magnitude": 10.0, "seed": 0, "onset_frac": 0.0, "duration_steps": 8000}
    assert expand({"defaults": defaults, "matrix": [same]}) == [spec]  # stating the derived window is fine
    for key, value in (("onset_frac", 0.3), ("duration_steps", 320)):
        block = {"perturbation": "lr_regime", "magnitude": 10.0, "seed": 0, key: value}
        with pytest.raises(ProfileError, match=rf"matrix\[0\]\.{key}: lr_regime is a regime"):
            expand({"defaults": defaults, "matrix": [block]})


def test_the_spontaneous_profile_and_its_calibration_designs_load() -> None:
    from stabilitybench.calibrate import load_design

    specs = load_profile("spontaneous")
    count: dict[tuple[str, str], list[int]] = {}
    for s in specs:
        count.setdefault((s.domain, s.perturbation), []).append(s.seed)
        assert s.onset_frac == 0.0
        if s.perturbation == "lr_regime":
            assert s.duration_steps == generator_for(s.domain, s.algo).config(s).planned_updates(s.total_steps)
    assert {k: len(v) for k, v in count.items()} == {("rl", "none"): 30, ("rl", "lr_regime"): 40,
                                                    ("lm", "none"): 30, ("lm", "lr_regime"): 40}
    assert set(count[("rl", "none")]) <= set(count[("rl", "lr_regime")])  # controls are their twins' seeds
    ours = {s.seed for s in specs}
    for other in ("quick", "standard", "paper", "intervention", "lm_quick", "coverage"):
        assert not ours & {s.seed for s in load_profile(other)}, other
    for name, controls in (("ppo_swimmer_regime", 12), ("gpt2_tiny_regime", 6), ("gpt2_tiny_ramp_regime", 4)):
        design = load_design(ROOT / "calibration" / f"{name}.toml")
        (target,) = design.targets
        t = target.template
        assert t.perturbation == "lr_regime" and t.onset_frac == 0.0
        assert t.duration_steps == generator_for(t.domain, t.algo).config(t).planned_updates(t.total_steps)
        assert len(design.controls) == controls and all(c.onset_frac == 0.0 for c in design.controls)
        assert target.m_min < target.m_max


# ------------------------------------------------------------------------------------ end to end
class LRSpy(BaseCallback):
    """Reads the LR inside every optimizer step, after the probe's pre-step hook (registered after it)."""

    def __init__(self) -> None:
        super().__init__()
        self.lrs: list[float] = []

    def _on_training_start(self) -> None:
        self.model.policy.optimizer.register_step_pre_hook(
            lambda opt, args, kwargs: self.lrs.append(opt.param_groups[0]["lr"]))

    def _on_step(self) -> bool:
        return True


def _ppo(perturbation: str, magnitude: float = 1.0) -> RunSpec:
    return RunSpec(domain="rl", algo="ppo", env="Swimmer-v5", seed=3, total_steps=256, perturbation=perturbation,
                   magnitude=magnitude, onset_frac=0.0, hparams=PPO_HP)


def test_ppo_regime_multiplies_the_lr_from_update_0_and_the_manifest_says_so(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    regime, control = _ppo("lr_regime", 3.0), _ppo("none")
    assert regime.duration_steps == 16  # 4 rollouts x 4 updates
    spies = {"regime": LRSpy(), "control": LRSpy()}
    steps = {name: pl.from_arrow(rl_run(spec, extra_callbacks=[spies[name]]).steps)
             for name, spec in (("regime", regime), ("control", control))}
    r, c = steps["regime"], steps["control"]
    assert r.height == c.height == 16
    assert spies["control"].lrs == pytest.approx([3e-4] * 16)
    assert spies["regime"].lrs == pytest.approx([9e-4] * 16)  # x3 at every update, applied by the optimizer
    assert r["lr"].to_list() == pytest.approx([9e-4] * 16) and r["perturbation_active"].all()
    # the same seed: the same first gradient (same initial policy, same first rollout); then the paths part
    assert r["grad_norm"][0] == c["grad_norm"][0]
    assert r["update_norm"][0] != c["update_norm"][0] and r["param_norm"][-1] != c["param_norm"][-1]

    man = run_one(regime, tmp_path)  # the worker's manifest row (the driver writes it into the manifest)
    assert man["status"] == "ok", man.get("error")
    assert (man["onset_step"], man["duration_steps"], man["planned_updates"]) == (0, 16, 16)
    assert man["n_updates"] == 16 and man["onset_frac"] == 0.0 and man["dimension"] == "optimization"


def test_lm_regime_is_peak_lr_times_m_on_the_same_schedule(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    tok = str(tmp_path / "tok")
    hp = {**LM_MICRO, "tokenizer_dir": tok}
    tokens = 8 * hp["batch_size"] * hp["block_size"]
    specs = {p: RunSpec(domain="lm", algo="gpt2", env="pydoc-topics", seed=1, total_steps=tokens, perturbation=p,
                        magnitude=5.0 if p == "lr_regime" else 1.0, onset_frac=0.0, hparams=hp)
             for p in ("lr_regime", "none")}
    assert specs["lr_regime"].duration_steps == 8
    r, c = (pl.from_arrow(train(specs[p]).steps) for p in ("lr_regime", "none"))
    cfg = lm_resolve("gpt2", "pydoc-topics", "default", hp)
    schedule = [lr_at(s, 8, cfg) for s in range(8)]
    assert schedule[0] < schedule[2]  # a warm-up, so "the schedule x m" is not a constant
    assert c["lr"].to_list() == pytest.approx(schedule)
    assert r["lr"].to_list() == pytest.approx([5.0 * x for x in schedule]) and r["perturbation_active"].all()
    assert r["train_loss"][0] == c["train_loss"][0] and r["grad_norm"][0] == c["grad_norm"][0]
    assert r["train_loss"][-1] != c["train_loss"][-1]

    man = run_one(specs["lr_regime"], tmp_path / "corpus")
    assert man["status"] == "ok", man.get("error")
    assert (man["onset_step"], man["duration_steps"], man["planned_updates"], man["n_updates"]) == (0, 8, 8, 8)
