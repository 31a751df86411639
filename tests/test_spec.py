"""RunSpec: a frozen, normalised spec whose run_id is a stable content hash."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from stabilitybench.data_schema.schema import RUN_ID_VERSION
from stabilitybench.generate.spec import RunSpec


def make(**overrides: object) -> RunSpec:
    base: dict[str, object] = dict(
        domain="rl",
        algo="ppo",
        env="HalfCheetah-v5",
        seed=0,
        perturbation="lr_spike",
        magnitude=10.0,
        onset_frac=0.3,
        duration_steps=10,
        stochasticity="default",
        total_steps=100_000,
        coherence_window=8,
        perf_window=5,
        hparams={"n_steps": 2048, "batch_size": 64},
    )
    base.update(overrides)
    return RunSpec(**base)  # type: ignore[arg-type]


def test_run_id_is_16_hex_chars() -> None:
    rid = make().run_id
    assert len(rid) == 16
    int(rid, 16)  # raises if not hex


def test_equal_specs_equal_ids() -> None:
    a, b = make(), make()
    assert a == b
    assert a.run_id == b.run_id
    assert hash(a) == hash(b)


def test_int_and_float_magnitude_hash_alike() -> None:
    a, b = make(magnitude=10), make(magnitude=10.0)
    assert a == b
    assert a.run_id == b.run_id
    assert isinstance(a.magnitude, float)


@pytest.mark.parametrize(
    ("field", "as_int", "as_float"),
    [("onset_frac", 0, 0.0), ("seed", 3, 3.0), ("duration_steps", 10, 10.0), ("total_steps", 1000, 1000.0),
     ("coherence_window", 8, 8.0), ("perf_window", 5, 5.0)],
)
def test_numeric_fields_are_normalised(field: str, as_int: object, as_float: object) -> None:
    a, b = make(**{field: as_int}), make(**{field: as_float})
    assert a == b
    assert a.run_id == b.run_id
    expected_type = float if field == "onset_frac" else int
    assert type(getattr(a, field)) is expected_type
    assert type(getattr(b, field)) is expected_type


def test_hparams_order_does_not_matter() -> None:
    a = make(hparams={"n_steps": 128, "batch_size": 64, "n_epochs": 1})
    b = make(hparams={"n_epochs": 1, "batch_size": 64, "n_steps": 128})
    c = make(hparams=(("batch_size", 64), ("n_epochs", 1), ("n_steps", 128)))
    assert a == b == c
    assert a.run_id == b.run_id == c.run_id
    assert a.hparams == (("batch_size", 64), ("n_epochs", 1), ("n_steps", 128))


#: For each field, a value different from ``make()``'s.
CHANGED = {
    "domain": "lm",
    "algo": "sac",
    "env": "Hopper-v5",
    "seed": 1,
    "perturbation": "none",
    "magnitude": 10.5,
    "onset_frac": 0.31,
    "duration_steps": 11,
    "stochasticity": "high",
    "total_steps": 100_001,
    "coherence_window": 9,
    "perf_window": 6,
    "hparams": {"n_steps": 2048, "batch_size": 32},
}


def test_changed_covers_every_field() -> None:
    assert set(CHANGED) == {f.name for f in dataclasses.fields(RunSpec)}


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_changing_any_single_field_changes_the_id(field: str) -> None:
    base = make()
    changed = make(**{field: CHANGED[field]})
    assert changed != base
    assert changed.run_id != base.run_id


def test_adding_or_removing_an_hparam_changes_the_id() -> None:
    base = make()
    assert make(hparams={"n_steps": 2048, "batch_size": 64, "n_epochs": 10}).run_id != base.run_id
    assert make(hparams={"n_steps": 2048}).run_id != base.run_id
    assert make(hparams={}).run_id != base.run_id


def test_run_id_includes_the_schema_version(monkeypatch: pytest.MonkeyPatch) -> None:
    import stabilitybench.generate.spec as spec_mod

    before = make().run_id
    monkeypatch.setattr(spec_mod, "RUN_ID_VERSION", RUN_ID_VERSION + ".test")
    assert make().run_id != before


_CHILD = (
    "from stabilitybench.generate.spec import RunSpec\n"
    "s = RunSpec(domain='rl', algo='ppo', env='HalfCheetah-v5', seed=0, perturbation='lr_spike', magnitude=10,"
    " onset_frac=0.3, duration_steps=10, total_steps=100000,"
    " hparams={'batch_size': 64, 'n_steps': 2048})\n"
    "print(s.run_id)\n"
)


@pytest.mark.parametrize("hashseed", ["0", "12345"])
def test_run_id_is_stable_across_processes(hashseed: str) -> None:
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == make().run_id


# Golden value. If this test fails, every existing corpus is orphaned: its run_ids no
# longer match the specs, so `generate` would re-run everything and the manifest would
# hold two generations of ids. Change it only together with a deliberate schema-version
# bump (stabilitybench.data_schema.schema.RUN_ID_VERSION), never as a side effect of a refactor.
GOLDEN_SPEC = RunSpec(domain="rl", algo="ppo", env="HalfCheetah-v5", seed=0)
GOLDEN_ID = "519bba8a7b9c0aea"


def test_golden_run_id() -> None:
    assert RUN_ID_VERSION == "1.0"  # schema 1.1 renamed columns only: 1.0 corpora keep their run_ids
    assert GOLDEN_SPEC.run_id == GOLDEN_ID


def test_to_dict_shape() -> None:
    d = make().to_dict()
    assert set(d) == {f.name for f in dataclasses.fields(RunSpec)}
    assert d["hparams"] == {"batch_size": 64, "n_steps": 2048}
    assert d["magnitude"] == 10.0
    json.dumps(d)  # JSON-serialisable as is


@pytest.mark.parametrize("spec", [make(), make(hparams={}), GOLDEN_SPEC, make(perturbation="none", magnitude=1)])
def test_to_dict_from_dict_round_trip(spec: RunSpec) -> None:
    back = RunSpec.from_dict(spec.to_dict())
    assert back == spec
    assert back.run_id == spec.run_id
    via_json = RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert via_json == spec
    assert via_json.run_id == spec.run_id


def test_from_dict_does_not_mutate_its_input() -> None:
    d = make().to_dict()
    snapshot = json.dumps(d, sort_keys=True)
    RunSpec.from_dict(d)
    assert json.dumps(d, sort_keys=True) == snapshot


def test_from_dict_uses_defaults_for_missing_fields() -> None:
    spec = RunSpec.from_dict({"domain": "rl", "algo": "ppo", "env": "HalfCheetah-v5", "seed": 0})
    assert spec == GOLDEN_SPEC


def test_spec_is_frozen() -> None:
    spec = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 3  # type: ignore[misc]


def test_axis_value() -> None:
    spec = make(seed=4)
    assert spec.axis_value("seed") == 4
    assert spec.axis_value("magnitude") == 10.0
