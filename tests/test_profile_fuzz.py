"""Profile fuzzing (issue 15): every generated profile expands, or fails with one line, and never creates a corpus.

Hypothesis draws profiles from the axes a profile may hold, known and unknown keys, values of
every TOML type (non-finite floats, empty lists, nested tables) and raw bytes that are not
TOML or not UTF-8. Each is written to a file and given to ``generate``: either it expands to
run specs (checked with ``--dry-run``), or it raises :class:`ProfileError` whose message is
one line naming the file; no corpus folder appears in either case.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from stabilitybench.generate.cli import generate
from stabilitybench.generate.errors import ProfileError
from stabilitybench.generate.matrix import AXES, load_profile
from stabilitybench.generate.spec import RunSpec

KNOWN = {
    "domain": ["rl", "lm"], "algo": ["ppo", "sac", "td3", "gpt2"], "env": ["HalfCheetah-v5", "Hopper-v5", "NoEnv-v0"],
    "perturbation": ["none", "lr_spike", "label_noise", "mass_shift"], "stochasticity": ["default", "high", "x"],
}
scalars = st.one_of(
    st.integers(-5, 10_000), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.text(max_size=12), st.sampled_from([v for vs in KNOWN.values() for v in vs]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))
hparams = st.dictionaries(st.sampled_from(["n_steps", "batch_size", "hidden", "learning_rate", "bogus"]),
                          st.one_of(st.integers(-2, 512), st.floats(-1, 1), st.text(max_size=4)), max_size=3)
keys = st.sampled_from([k for k in AXES if k != "hparams"] + ["unknown_axis"])
VALID = {"domain": "rl", "algo": "ppo", "env": "HalfCheetah-v5", "perturbation": "none", "total_steps": 1024}
free_block = st.dictionaries(keys, values, max_size=6)
near_valid = st.dictionaries(keys, values, max_size=2).map(lambda d: {**VALID, **d})  # mostly expands
block = st.one_of(free_block, near_valid).flatmap(
    lambda d: st.one_of(st.just(d), hparams.map(lambda h: {**d, "hparams": h})))
profiles = st.fixed_dictionaries(
    {"matrix": st.lists(block, max_size=3)},
    optional={"defaults": block, "description": st.text(max_size=10), "extra": st.integers()},
)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"


def to_toml(profile: dict[str, Any]) -> str:
    lines = [f"{k} = {toml_value(v)}" for k, v in profile.items() if k not in ("defaults", "matrix")]
    if "defaults" in profile:
        lines += ["[defaults]", *(f"{k} = {toml_value(v)}" for k, v in profile["defaults"].items())]
    for b in profile["matrix"]:
        lines += ["[[matrix]]", *(f"{k} = {toml_value(v)}" for k, v in b.items())]
    return "\n".join(lines) + "\n"


def check(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path, corpus = Path(tmp, "fuzz.toml"), Path(tmp, "corpus")
        path.write_bytes(text)
        try:
            specs = load_profile(str(path))
        except ProfileError as exc:
            message = str(exc)
            event("refused")
            assert "\n" not in message.strip() and str(path) in message, message
            try:  # the real command, not only the parser: it must fail the same way, before touching disk
                generate(profile=str(path), out_dir=corpus)
            except ProfileError:
                pass
            else:
                raise AssertionError("generate accepted a profile that load_profile refused") from None
        else:
            event("expanded")
            assert specs and all(isinstance(s, RunSpec) for s in specs)
            assert len({s.run_id for s in specs}) == len(specs)
            generate(profile=str(path), out_dir=corpus, dry_run=True)
        assert not corpus.exists()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(profiles)
def test_generated_profiles_expand_or_fail_with_one_line(profile: dict[str, Any]) -> None:
    check(to_toml(profile).encode())


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_fail_with_one_line(raw: bytes) -> None:
    check(raw)
