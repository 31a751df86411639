"""Profiles: the built-in ones expand, every malformed one fails with a one-line ProfileError."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from stabilitybench.generate.costs import estimate
from stabilitybench.generate.doses import load_dose_table
from stabilitybench.generate.errors import ProfileError
from stabilitybench.generate.matrix import available_profiles, expand, load_profile, parse_only, profile_path, select
from stabilitybench.generate.spec import RunSpec

# ---------------------------------------------------------------------------- built-ins


@pytest.fixture(scope="module")
def quick() -> list[RunSpec]:
    return load_profile("quick")


@pytest.fixture(scope="module")
def coverage() -> list[RunSpec]:
    return load_profile("coverage")


def test_available_profiles() -> None:
    assert {"smoke", "quick", "paper"} <= set(available_profiles())


@pytest.mark.parametrize("name", ["smoke", "quick", "paper"])
def test_builtin_profiles_expand_without_duplicates(name: str) -> None:
    specs = load_profile(name)
    assert specs
    assert all(isinstance(s, RunSpec) for s in specs)
    ids = [s.run_id for s in specs]
    assert len(ids) == len(set(ids))
    assert len(specs) == len(set(specs))


def test_expansion_order_is_stable() -> None:
    assert [s.run_id for s in load_profile("quick")] == [s.run_id for s in load_profile("quick")]


def test_smoke_profile() -> None:
    specs = load_profile("smoke")
    assert {s.perturbation for s in specs} == {"none", "lr_spike"}
    assert {s.algo for s in specs} == {"ppo", "sac", "td3"}  # every algorithm writes a steps table in the tests
    assert {s.seed for s in specs} == {0}
    assert all(s.total_steps <= 2048 for s in specs)


PPO_DIMENSION_KINDS = {"lr_spike": "optimization", "mass_shift": "environmental", "weight_noise": "parametric",
                       "reward_flip": "learning_signal"}


def test_quick_profile_contents(quick: list[RunSpec]) -> None:
    """Powered for one question: PPO Swimmer, 30 controls, each dimension's kind at its calibrated dose, 8 seeds."""
    assert {(s.domain, s.env) for s in quick} == {("rl", "Swimmer-v5"), ("lm", "pydoc-topics")}
    assert {s.onset_frac for s in quick} == {0.3}
    ppo = [s for s in quick if s.algo == "ppo"]
    assert {s.total_steps for s in ppo} == {50_000}
    controls = [s for s in ppo if s.perturbation == "none"]
    assert sorted(s.seed for s in controls) == list(range(30))
    assert {s.perturbation for s in ppo} == {"none", *PPO_DIMENSION_KINDS}
    for kind in PPO_DIMENSION_KINDS:
        doses = Counter(s.magnitude for s in ppo if s.perturbation == kind)
        assert doses and all(n == 8 for n in doses.values()), (kind, doses)
    # the calibrated doses come from the committed dose table, not from numbers typed into the profile
    table = load_dose_table(profile_path("quick").parent / "doses" / "ppo_swimmer.toml")
    lr = next(e for e in table.values() if e["spec"]["perturbation"] == "lr_spike")
    assert {s.magnitude for s in ppo if s.perturbation == "lr_spike"} == {float(f"{lr['ed50']:.3g}"),
                                                                          float(f"{lr['ed80']:.3g}")}
    # the GPT-2 slice: a control, an LR-spike sweep and label noise, 3 seeds each
    lm = [s for s in quick if s.domain == "lm"]
    assert Counter((s.perturbation, s.magnitude) for s in lm) == {
        ("none", 1.0): 3, ("lr_spike", 10.0): 3, ("lr_spike", 100.0): 3, ("lr_spike", 1000.0): 3,
        ("label_noise", 0.5): 3, ("label_noise", 1.0): 3}
    assert estimate(quick).pre <= 90  # the budget, priced from the reference throughputs


# stochasticity: issue 29 budgeted about 250 PRE; its second look at the ED50 ratio (96 runs) takes it to ~292 by
# estimate, stated in the profile and in docs/reference/profiles.md
@pytest.mark.parametrize("name, budget", [("standard", 270), ("stochasticity", 300), ("coverage", 90)])
def test_new_profiles_load_within_budget(name: str, budget: float) -> None:
    specs = load_profile(name)
    assert estimate(specs).pre <= budget
    if name == "standard":
        assert sum(s.perturbation == "none" for s in specs if s.domain == "rl") >= 100
        assert {s.env for s in specs if s.domain == "rl"} == {"Swimmer-v5", "HalfCheetah-v5"}
    if name == "stochasticity":
        by_level = Counter(s.stochasticity for s in specs)
        assert set(by_level) == {"low", "default", "high"}
        # the same controls and perturbed runs at every level, but for the ratio's two levels' second look (seeds
        # 8-15 at each of their lr_spike doses)
        first = Counter(s.stochasticity for s in specs if s.seed < 8 or s.perturbation == "none")
        assert len(set(first.values())) == 1 and by_level["low"] == by_level["high"] > by_level["default"]
        # a dose-response per level (regularity 2 is a shift of the ED50): the same three doses at every level per
        # calibrated kind, the middle one the default level's ED50, the others at least a factor 1.18 away; beyond
        # them only the extra doses `calibrate` proposed from each level's own lr_spike curve (three per level)
        table = load_dose_table(profile_path("stochasticity").parent / "doses/ppo_swimmer.toml")
        for kind, extra in (("lr_spike", 3), ("reward_flip", 0)):
            doses = {lvl: {s.magnitude for s in specs if s.perturbation == kind and s.stochasticity == lvl}
                     for lvl in by_level}
            shared = sorted(set.intersection(*doses.values()))
            assert len(shared) == 3 and all(len(d) == 3 + extra for d in doses.values())
            ed50 = next(e["ed50"] for e in table.values() if e["spec"]["perturbation"] == kind)
            low, mid, high = shared
            assert mid == float(f"{ed50:.3g}") and high / mid >= 1.18 and mid / low >= 1.18
    if name == "coverage":  # where quick's SAC/TD3 slice went: a control and one kind per dimension
        for algo in ("sac", "td3"):
            assert {s.perturbation for s in specs if s.algo == algo} == {"none", *PPO_DIMENSION_KINDS}


def test_paper_profile_keeps_the_paper_setting() -> None:
    specs = load_profile("paper")
    assert {s.env for s in specs} >= {"HalfCheetah-v5", "Hopper-v5", "Walker2d-v5"}
    assert any(s.perturbation == "lr_spike" and s.magnitude == 10 and s.duration_steps == 10
               and s.onset_frac == 0.3 and s.env == "HalfCheetah-v5" for s in specs)
    assert any(s.perturbation == "none" for s in specs)


# ------------------------------------------------------------------------------ errors

GOOD = """\
description = "a test profile"

[defaults]
domain = "rl"
algo = "ppo"
env = "HalfCheetah-v5"
seed = 0
perturbation = "lr_spike"
magnitude = 10
{defaults}

[[matrix]]
{block}
"""


def write(tmp_path: Path, text: str, name: str = "prof.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def good(defaults: str = "", block: str = "") -> str:
    return GOOD.format(defaults=defaults, block=block)


def test_good_profile_loads(tmp_path: Path) -> None:
    specs = load_profile(str(write(tmp_path, good(block="seed = [0, 1]\nhparams = { n_steps = 128 }"))))
    assert [s.seed for s in specs] == [0, 1]
    assert all(s.magnitude == 10.0 and s.hparams == (("n_steps", 128),) for s in specs)


def test_hparams_merge_defaults_and_block(tmp_path: Path) -> None:
    text = good(defaults="hparams = { n_steps = 128, batch_size = 32 }", block="hparams = { batch_size = 64 }")
    (spec,) = load_profile(str(write(tmp_path, text)))
    assert dict(spec.hparams) == {"n_steps": 128, "batch_size": 64}


def test_duplicate_specs_across_blocks_are_dropped(tmp_path: Path) -> None:
    text = good(block="seed = [0, 1]") + "\n[[matrix]]\nmagnitude = 10.0\nseed = 1\n"
    specs = load_profile(str(write(tmp_path, text)))
    assert [s.seed for s in specs] == [0, 1]


# (case id, TOML text, substring(s) the message must name besides the file path)
BAD_PROFILES = [
    ("invalid-toml", "this is = = not toml\n", ["invalid TOML"]),
    ("top-level-key", "bogus = 1\n" + good(), ["bogus"]),
    ("block-key", good(block='colour = "red"'), ["colour"]),
    ("defaults-key", good(defaults='colour = "red"'), ["colour"]),
    ("magnitude-negative", good(block="magnitude = -1"), ["magnitude"]),
    ("magnitude-zero", good(block="magnitude = 0"), ["magnitude"]),
    ("magnitude-string", good(block='magnitude = "ten"'), ["magnitude"]),
    ("magnitude-bool", good(block="magnitude = true"), ["magnitude"]),
    ("magnitude-nan", good(block="magnitude = nan"), ["magnitude"]),
    ("magnitude-inf", good(block="magnitude = inf"), ["magnitude"]),
    ("magnitude-in-list", good(block="magnitude = [1, -3]"), ["magnitude"]),
    ("onset-one", good(block="onset_frac = 1.0"), ["onset_frac"]),
    ("onset-negative", good(block="onset_frac = -0.1"), ["onset_frac"]),
    ("perturbation-kind", good(block='perturbation = "lr_wobble"'), ["perturbation", "lr_wobble"]),
    ("algo", good(block='algo = "dqn"'), ["algo", "dqn"]),
    ("domain", good(block='domain = "cv"'), ["domain", "cv"]),
    ("env", good(block='env = "HalfCheetah-v99"'), ["env", "HalfCheetah-v99"]),
    ("env-type", good(block="env = 5"), ["env"]),
    ("stochasticity", good(block='stochasticity = "wild"'), ["stochasticity", "wild"]),
    ("hparam-name", good(block="hparams = { n_stepz = 5 }"), ["n_stepz"]),
    ("hparam-negative", good(block="hparams = { n_steps = -5 }"), ["n_steps"]),
    ("hparam-zero", good(block="hparams = { batch_size = 0 }"), ["batch_size"]),
    ("hparam-float-for-int", good(block="hparams = { n_steps = 5.5 }"), ["n_steps"]),
    ("hparam-string", good(block='hparams = { n_steps = "many" }'), ["n_steps"]),
    ("hparam-bool", good(block="hparams = { n_steps = true }"), ["n_steps"]),
    ("hparams-not-table", good(block="hparams = 5"), ["hparams"]),
    ("missing-env", good().replace('env = "HalfCheetah-v5"\n', ""), ["env"]),
    ("missing-seed", good().replace("seed = 0\n", ""), ["seed"]),
    ("empty-list", good(block="magnitude = []"), ["magnitude"]),
    ("empty-seed-list", good(block="seed = []"), ["seed"]),
    ("seed-negative", good(block="seed = -1"), ["seed"]),
    ("seed-float", good(block="seed = 1.5"), ["seed"]),
    ("duration-zero", good(block="duration_steps = 0"), ["duration_steps"]),
    ("total-steps-string", good(block='total_steps = "1M"'), ["total_steps"]),
    ("no-matrix", '[defaults]\ndomain = "rl"\n', ["matrix"]),
    ("defaults-not-table", 'defaults = 5\n[[matrix]]\ndomain = "rl"\n', ["defaults"]),
]


def assert_one_line(exc: ProfileError, *needles: str) -> str:
    msg = str(exc)
    assert "\n" not in msg and "\r" not in msg, f"multi-line message: {msg!r}"
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


@pytest.mark.parametrize(("text", "needles"), [(t, n) for _, t, n in BAD_PROFILES],
                         ids=[c for c, _, _ in BAD_PROFILES])
def test_bad_profile_raises_one_line_profile_error(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    assert_one_line(info.value, str(path), *needles)


def test_non_table_hparams_in_defaults_with_block_hparams(tmp_path: Path) -> None:
    path = write(tmp_path, good(defaults="hparams = 5", block="hparams = { n_steps = 128 }"))
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    assert_one_line(info.value, str(path), "hparams")


def test_unknown_builtin_profile() -> None:
    with pytest.raises(ProfileError) as info:
        load_profile("nosuch")
    msg = assert_one_line(info.value, "nosuch")
    for name in ("smoke", "quick", "paper"):  # the message lists what is available
        assert name in msg


def test_missing_toml_path(tmp_path: Path) -> None:
    path = tmp_path / "does_not_exist.toml"
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    assert_one_line(info.value, str(path), "not found")


def test_expand_names_the_block_index() -> None:
    data = {
        "defaults": {"domain": "rl", "algo": "ppo", "env": "HalfCheetah-v5", "seed": 0},
        "matrix": [{"perturbation": "none"}, {"perturbation": "lr_spike", "magnitude": -2}],
    }
    with pytest.raises(ProfileError, match=r"^where\.toml: matrix\[1\]\.magnitude"):
        expand(data, where="where.toml")


def test_int_and_float_hparam_give_the_same_run_id(tmp_path: Path) -> None:
    (a,) = load_profile(str(write(tmp_path, good(block="hparams = { max_grad_norm = 1 }"), "a.toml")))
    (b,) = load_profile(str(write(tmp_path, good(block="hparams = { max_grad_norm = 1.0 }"), "b.toml")))
    assert a.run_id == b.run_id


# ----------------------------------------------------------------------- --only filter


def test_parse_only() -> None:
    assert parse_only(None) == {}
    assert parse_only("") == {}
    assert parse_only("algo=ppo,magnitude=10|100") == {"algo": {"ppo"}, "magnitude": {"10", "100"}}
    assert parse_only(" seed = 0 , seed=1 ") == {"seed": {"0", "1"}}  # repeated keys accumulate


def test_select_algo_and_magnitudes(coverage: list[RunSpec]) -> None:
    chosen = select(coverage, parse_only("algo=sac|td3,magnitude=10|100"))
    expected = [s for s in coverage if s.algo in ("sac", "td3") and s.magnitude in (10.0, 100.0)]
    assert chosen == expected
    assert len(chosen) == 4  # lr_spike x100 and mass_shift x10, for SAC and for TD3
    assert {s.magnitude for s in chosen} == {10.0, 100.0}


@pytest.mark.parametrize("text", ["magnitude=10", "magnitude=10.0", "magnitude=1e1", "magnitude= 10.00 "])
def test_select_numbers_compare_numerically(coverage: list[RunSpec], text: str) -> None:
    chosen = select(coverage, parse_only(text))
    assert len(chosen) == sum(s.magnitude == 10.0 for s in coverage) == 5
    assert all(s.magnitude == 10.0 for s in chosen)


def test_select_combines_filters(quick: list[RunSpec], coverage: list[RunSpec]) -> None:
    chosen = select(coverage, parse_only("perturbation=lr_spike,seed=2,duration_steps=10"))
    assert len(chosen) == 1
    (spec,) = chosen
    assert (spec.seed, spec.magnitude, spec.duration_steps) == (2, 10.0, 10)
    assert select(quick, parse_only("perturbation=none")) == [s for s in quick if s.perturbation == "none"]
    assert select(quick, parse_only("algo=ppo,perturbation=adam_reset")) == []
    assert select(quick, {}) == quick


@pytest.mark.parametrize("text", ["bogus=1", "hparams=1", "=3"])
def test_only_unknown_axis(text: str) -> None:
    with pytest.raises(ProfileError) as info:
        parse_only(text)
    assert_one_line(info.value, "--only")


@pytest.mark.parametrize("text", ["magnitude", "algo=ppo,seed"])
def test_only_malformed_part(text: str) -> None:
    with pytest.raises(ProfileError) as info:
        parse_only(text)
    assert_one_line(info.value, "--only", "key=value")


def test_only_non_number_for_numeric_axis(quick: list[RunSpec]) -> None:
    with pytest.raises(ProfileError) as info:
        select(quick, parse_only("magnitude=big"))
    assert_one_line(info.value, "magnitude")


def test_a_kind_from_another_domain_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text('[[matrix]]\ndomain = "rl"\nalgo = "ppo"\nenv = "HalfCheetah-v5"\nseed = 0\n'
                    'perturbation = "label_noise"\nmagnitude = 0.5\n')
    with pytest.raises(ProfileError, match=r"matrix\[0\]\.perturbation: 'label_noise' acts only in domain"):
        load_profile(str(path))
