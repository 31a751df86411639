"""Profiles (TOML files under generate/profiles/) and their expansion into a list of :class:`RunSpec`.

A profile is data, never code::

    description = "what this profile is for"

    [defaults]                  # applies to every block below
    domain = "rl"
    algo = "ppo"
    total_steps = 100_000

    [[matrix]]                  # each block: list values are axes, their product expands
    perturbation = "lr_spike"
    magnitude = [1, 3, 10, 30, 100]
    seed = [0, 1, 2]
    hparams = { n_steps = 512 } # algorithm overrides, checked against its config

A block value may be a scalar or a list; every list is an axis and the block expands
to the Cartesian product. The blocks are concatenated and duplicate specs dropped.
Any unknown key or bad value raises :class:`ProfileError` naming the file and key.

A block of a regime kind (``lr_regime``: held from update 0 for the whole run) leaves ``onset_frac`` and
``duration_steps`` out: its spec sets onset 0 and the run's planned updates (:class:`RunSpec`); a different value
stated in its block is an error.

A block may name a calibrated dose instead of a magnitude (``dose = "ED50"`` or a list of
ED20 | ED50 | ED80) when the profile includes a dose table (``doses = "doses/x.toml"``, relative
to the profile; :mod:`stabilitybench.generate.doses`). ``dose_stochasticity = "default"`` applies the dose
calibrated at that stochasticity level to the block's own levels (the stochasticity-buffer experiment).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection
from dataclasses import fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from stabilitybench.data_schema.schema import DOMAINS
from stabilitybench.generate.doses import dose_magnitude, load_dose_table
from stabilitybench.generate.errors import ProfileError, UnknownEnvError
from stabilitybench.generate.intervention import check_hparams
from stabilitybench.generate.perturbations import REGISTRY, perturbation_class
from stabilitybench.generate.registry import GENERATORS, generator_for
from stabilitybench.generate.spec import RunSpec

#: Axis name -> expected Python type of one value.
AXES: dict[str, type] = {f.name: f.type for f in fields(RunSpec)}  # type: ignore[misc]
_AXIS_TYPES = {"str": str, "int": int, "float": float}
TOP_LEVEL_KEYS = {"description", "defaults", "matrix", "doses"}


def available_profiles() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in resources.files("stabilitybench.generate.profiles").iterdir()
                  if p.name.endswith(".toml"))


def profile_path(name_or_path: str) -> Path:
    """A built-in profile name (``smoke``, ``quick``, ``paper``) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix.lower() == ".toml":
        if not path.is_file():
            raise ProfileError(f"{path}: profile file not found")
        return path
    builtin = resources.files("stabilitybench.generate.profiles") / f"{name_or_path}.toml"
    if not builtin.is_file():
        raise ProfileError(f"unknown profile {name_or_path!r} (available: {', '.join(available_profiles())}, "
                           "or a path to a .toml file)")
    return Path(str(builtin))


def load_profile(name_or_path: str) -> list[RunSpec]:
    """Parse, validate and expand a profile into its run specs (stable order, no duplicates)."""
    path = profile_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: invalid TOML ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{path}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8") from None
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read the profile ({exc.strerror or exc})") from None
    return expand(data, where=str(path), base_dir=path.parent)


def expand(data: dict[str, Any], where: str = "<profile>", base_dir: Path | None = None) -> list[RunSpec]:
    """Expand a parsed profile into its specs. ``base_dir`` resolves a relative ``doses`` path."""
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise ProfileError(f"{where}: unknown top-level key {key!r} (expected one of {sorted(TOP_LEVEL_KEYS)})")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ProfileError(f"{where}: defaults: must be a table")
    _check_keys(defaults, f"{where}: defaults")
    blocks = data.get("matrix")
    if not isinstance(blocks, list) or not blocks:
        raise ProfileError(f"{where}: needs at least one [[matrix]] block")

    dose_table = None
    if "doses" in data:
        if not isinstance(data["doses"], str):
            raise ProfileError(f"{where}: doses: must be the path of a dose table")
        dose_table = load_dose_table(Path(base_dir or ".", data["doses"]))

    specs: dict[str, RunSpec] = {}
    for i, block in enumerate(blocks):
        label = f"{where}: matrix[{i}]"
        if not isinstance(block, dict):
            raise ProfileError(f"{label}: must be a table")
        block = dict(block)
        tags = block.pop("dose", None)
        dose_level = block.pop("dose_stochasticity", None)  # look the dose up at this level (e.g. "default")
        if dose_level is not None and (tags is None or not isinstance(dose_level, str)):
            raise ProfileError(f"{label}.dose_stochasticity: needs a dose and must be a level name")
        if tags is not None:
            if dose_table is None:
                raise ProfileError(f"{label}.dose: needs a top-level `doses = \"<dose table>\"`")
            if "magnitude" in block:
                raise ProfileError(f"{label}: give magnitude or dose, not both")
            tags = tags if isinstance(tags, list) else [tags]
        _check_keys(block, label)
        merged = {**defaults, **block}
        for source, table in (("defaults", defaults), (f"matrix[{i}]", block)):
            if "hparams" in table and not isinstance(table["hparams"], dict):
                raise ProfileError(f"{where}: {source}.hparams: must be a table")
        if "hparams" in defaults and "hparams" in block:
            merged["hparams"] = {**defaults["hparams"], **block["hparams"]}
        for spec in _expand_block(merged, label):
            _check_regime_window(spec, block, label)
            for tag in tags or [None]:
                if tag is not None:
                    assert dose_table is not None
                    at = spec if dose_level is None else replace(spec, stochasticity=dose_level)
                    spec = replace(spec, magnitude=dose_magnitude(dose_table, at, tag, label))
                    reason = perturbation_class(spec.perturbation).check_magnitude(spec.magnitude)
                    if reason:
                        raise ProfileError(f"{label}.dose: {tag} = {spec.magnitude!r} {reason}")
                specs.setdefault(spec.run_id, spec)
    return list(specs.values())


def _check_regime_window(spec: RunSpec, block: dict[str, Any], label: str) -> None:
    """A regime kind (``lr_regime``) holds from update 0 for the whole run: its spec sets ``onset_frac = 0`` and
    ``duration_steps`` = the planned updates (:class:`RunSpec`). A value the defaults give (for the profile's kicks)
    does not apply to it; a different value stated in the regime's own block is an error, not silently replaced."""
    if not perturbation_class(spec.perturbation).sustained:
        return
    for key in ("onset_frac", "duration_steps"):
        stated = block.get(key)
        values = stated if isinstance(stated, list) else [stated]
        if stated is not None and any(v != getattr(spec, key) for v in values):
            raise ProfileError(f"{label}.{key}: {spec.perturbation} is a regime (held from update 0 for the whole "
                               f"run): its onset_frac is 0 and its duration_steps the run's planned updates "
                               f"({spec.duration_steps}); leave both out of its block (give a kick's window its own "
                               "block)")


def _check_keys(table: dict[str, Any], label: str) -> None:
    for key in table:
        if key not in AXES:
            raise ProfileError(f"{label}.{key}: unknown key (expected one of {', '.join(AXES)})")


def _expand_block(block: dict[str, Any], label: str) -> list[RunSpec]:
    for required in ("domain", "algo", "env", "seed"):
        if required not in block:
            raise ProfileError(f"{label}: missing required key {required!r}")
    hparams = block.pop("hparams", {})
    axes = {k: v if isinstance(v, list) else [v] for k, v in block.items()}
    for key, values in axes.items():
        if not values:
            raise ProfileError(f"{label}.{key}: empty list")
        axes[key] = [_coerce(key, v, label) for v in values]
    names = list(axes)
    specs = []
    for combo in itertools.product(*(axes[n] for n in names)):
        values = dict(zip(names, combo, strict=True))
        overrides = tuple(_normalise_hparams(values, hparams).items()) if isinstance(hparams, dict) else ()
        spec = RunSpec(**values, hparams=overrides)
        _check_spec(spec, hparams, label)
        specs.append(spec)
    return specs


def _normalise_hparams(values: dict[str, Any], hparams: dict[str, Any]) -> dict[str, Any]:
    """Cast ints to float for float-typed config fields, so ``1`` and ``1.0`` give one run_id."""
    if (values.get("domain"), values.get("algo")) not in GENERATORS:
        return hparams  # reported with a clear message by _check_spec
    gen = generator_for(values["domain"], values["algo"])
    out = {}
    for name, value in hparams.items():
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if name in gen.hparam_names() and is_int and _AXIS_TYPES.get(str(gen.hparam_type(name))) is float:
            value = float(value)
        out[name] = value
    return out


def _coerce(key: str, value: Any, label: str) -> Any:
    expected = _AXIS_TYPES.get(str(AXES[key]), None)
    if expected is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ProfileError(f"{label}.{key}: {value!r} is not a finite number")
        return float(value)
    if expected is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if expected is str and isinstance(value, str):
        return value
    raise ProfileError(f"{label}.{key}: {value!r} is not a valid {expected.__name__ if expected else key}")


def _check_spec(spec: RunSpec, hparams: Any, label: str) -> None:
    if spec.domain not in DOMAINS:
        raise ProfileError(f"{label}.domain: {spec.domain!r} is not one of {', '.join(DOMAINS)}")
    if (spec.domain, spec.algo) not in GENERATORS:
        raise ProfileError(f"{label}.algo: {spec.algo!r} has no {spec.domain} generator "
                           f"(available: {', '.join(a for d, a in GENERATORS if d == spec.domain)})")
    if spec.perturbation not in REGISTRY:
        raise ProfileError(f"{label}.perturbation: unknown kind {spec.perturbation!r} "
                           f"(available: {', '.join(REGISTRY)})")
    kind = perturbation_class(spec.perturbation)
    if spec.domain not in kind.domains:
        raise ProfileError(f"{label}.perturbation: {spec.perturbation!r} acts only in domain(s) "
                           f"{', '.join(kind.domains)}, not {spec.domain!r}")
    reason = kind.check_magnitude(spec.magnitude)
    if reason:
        raise ProfileError(f"{label}.magnitude: {spec.magnitude!r} {reason} for {spec.perturbation}")
    if not 0.0 <= spec.onset_frac < 1.0:
        raise ProfileError(f"{label}.onset_frac: {spec.onset_frac!r} must be in [0, 1)")
    for name, low in (("seed", 0), ("duration_steps", 1), ("total_steps", 1), ("coherence_window", 2),
                      ("perf_window", 1)):
        if getattr(spec, name) < low:
            raise ProfileError(f"{label}.{name}: {getattr(spec, name)!r} must be >= {low}")
    gen = generator_for(spec.domain, spec.algo)
    if spec.stochasticity not in gen.stochasticity:
        raise ProfileError(f"{label}.stochasticity: unknown level {spec.stochasticity!r} for {spec.algo} "
                           f"(available: {', '.join(gen.stochasticity)})")
    if not isinstance(hparams, dict):
        raise ProfileError(f"{label}.hparams: must be a table")
    for name in hparams:
        if name not in gen.hparam_names():
            raise ProfileError(f"{label}.hparams.{name}: unknown {spec.algo} hyperparameter "
                               f"(available: {', '.join(gen.hparam_names())})")
    try:
        gen.config(spec)  # the config class checks types and ranges
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"{label}.hparams: {exc}") from None
    try:  # a live intervention's settings (a rollback lag tuned to the perturbation is refused, issue 25)
        check_hparams(hparams, perturbation=spec.perturbation, duration_steps=spec.duration_steps)
    except ValueError as exc:
        raise ProfileError(f"{label}.hparams: {exc}") from None
    if spec.domain == "rl":
        try:
            from stabilitybench.generate.rl.envs import check_env_id

            check_env_id(spec.env)
        except UnknownEnvError as exc:
            raise ProfileError(f"{label}.env: {exc}") from None


# ------------------------------------------------------------------------ --only filter
def parse_only(text: str | None, keys: Collection[str] | None = None) -> dict[str, set[str]]:
    """Parse ``'algo=ppo,magnitude=10|100'`` into ``{axis: {values}}``; repeated keys accumulate.

    ``keys``: the names a filter may use (default: the profile axes).
    """
    allowed = [k for k in AXES if k != "hparams"] if keys is None else list(keys)
    if not text:
        return {}
    filters: dict[str, set[str]] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ProfileError(f"--only: {part!r} is not key=value (e.g. 'algo=ppo,magnitude=10|100')")
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in allowed:
            raise ProfileError(f"--only: unknown axis {key!r} (one of {', '.join(allowed)})")
        filters.setdefault(key, set()).update(v.strip() for v in value.split("|"))
    return filters


def select(specs: list[RunSpec], filters: dict[str, set[str]]) -> list[RunSpec]:
    """Keep the specs whose axis values match every filter (numbers compare numerically)."""

    return [s for s in specs if all(value_matches(k, getattr(s, k), v) for k, v in filters.items())]


def value_matches(key: str, value: Any, wanted: set[str]) -> bool:
    """Whether ``value`` (of axis or column ``key``) is one of the ``--only`` strings; numbers compare numerically."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return any(math.isclose(float(w), float(value)) for w in wanted)
        except ValueError:
            raise ProfileError(f"--only: {key} needs numbers, got {sorted(wanted)}") from None
    return str(value) in wanted
