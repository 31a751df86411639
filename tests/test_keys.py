"""The keys of a run (stabilitybench.data_schema.keys, issue 28): group keys, configuration labels, the control
mask, the onset rule; and a scan of the source tree that finds no second definition of any of them."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import polars as pl
import pytest

from stabilitybench.data_schema.keys import (
    CONFIG_COLUMNS,
    GROUP_KEYS,
    ConfigKey,
    config_label_expr,
    control_mask,
    control_onset,
    onset_step,
    resolve_onset,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("data_schema", "generate", "analysis", "reports", "stabilitybench")
KEYS = ROOT / "data_schema" / "keys.py"


# ------------------------------------------------------------------------------------------- the API
def test_group_keys_and_config_columns() -> None:
    assert GROUP_KEYS == ("domain", "algo", "env", "stochasticity")
    assert CONFIG_COLUMNS == ("perturbation", "magnitude", "duration_steps")


@pytest.mark.parametrize(("key", "label"), [
    (ConfigKey("lr_spike", 10.0, 320), "lr_spike x10 (320 upd)"),
    (ConfigKey("lr_spike", 0.5, None), "lr_spike x0.5"),
    (ConfigKey("weight_noise", 1e-3, 1), "weight_noise x0.001 (1 upd)"),
    (ConfigKey("adam_reset"), "adam_reset"),
    (ConfigKey("none", 1.0, 1), "none"),
])
def test_label(key: ConfigKey, label: str) -> None:
    assert key.label() == label


def test_of_row_and_is_control() -> None:
    key = ConfigKey.of({"perturbation": "lr_spike", "magnitude": 10, "duration_steps": 320.0, "seed": 3})
    assert key == ConfigKey("lr_spike", 10.0, 320) and isinstance(key.duration, int)
    assert not key.is_control
    assert ConfigKey.of({"perturbation": "none", "magnitude": None}).is_control
    with pytest.raises(ValueError, match="perturbation"):
        ConfigKey.of({"magnitude": 1.0})
    with pytest.raises(dataclasses.FrozenInstanceError):  # a key cannot drift after it is built
        key.magnitude = 3.0  # type: ignore[misc]


def test_pooled_groups_every_control_and_keeps_other_keys() -> None:
    """Controls with different magnitudes or durations fall in one group; a perturbed key is its own group."""
    a, b = ConfigKey("none", 1.0, 1), ConfigKey("none", None, 320)
    assert a.pooled() == b.pooled() == ConfigKey("none", None, None)
    assert a.pooled().label() == a.label() == "none"
    spike = ConfigKey("lr_spike", 10.0, 320)
    assert spike.pooled() == spike and spike.pooled() != ConfigKey("lr_spike", 10.0, 1).pooled()


def test_label_expr_matches_label() -> None:
    frame = pl.DataFrame({"perturbation": ["none", "lr_spike", "obs_noise"], "magnitude": [1.0, 100.0, 0.25],
                          "duration_steps": [1, 320, None]})
    got = frame.select(config_label_expr().alias("c"))["c"].to_list()
    assert got == ["none", "lr_spike x100 (320 upd)", "obs_noise x0.25"]
    short = frame.select(config_label_expr(("perturbation", "magnitude")).alias("c"))["c"].to_list()
    assert short == ["none", "lr_spike x100", "obs_noise x0.25"]
    with pytest.raises(ValueError, match="columns"):
        config_label_expr(("perturbation",))


def test_control_mask_excludes_runs_that_acted_on_alarms() -> None:
    cfg = [json.dumps({"spec": {"hparams": h}}) for h in
           ({}, {"intervention": "lr_backoff"}, {}, {"intervention": "none"}, {"intervention": "rollback"})]
    runs = pl.DataFrame({"run_id": list("abcde"), "perturbation": ["none", "none", "lr_spike", "none", "lr_spike"],
                         "config_json": cfg})
    assert control_mask(runs).to_list() == [True, False, False, True, False]
    assert control_mask(runs).name == "unperturbed"
    # without config_json no run acted; dimension alone also marks a control; null is not a control
    dims = pl.DataFrame({"dimension": ["none", "optimization", None]})
    assert control_mask(dims).to_list() == [True, False, False]
    with pytest.raises(ValueError, match="perturbation"):
        control_mask(pl.DataFrame({"run_id": ["a"]}))


def test_analysis_is_unperturbed_is_control_mask() -> None:
    from stabilitybench.analysis.data import is_unperturbed

    assert is_unperturbed is control_mask


def test_onset_rule() -> None:
    assert control_onset(0.3, 1000) == 300
    assert control_onset(0.3, 15_680) == 4704  # the quick PPO runs
    assert control_onset(0.25, 2) == 0 and control_onset(0.75, 2) == 2  # Python's round, as the generators
    with pytest.raises(ValueError, match="onset_frac"):
        control_onset(1.5, 10)
    # a generated row: onset_step is written; a row lacking it resolves by the same rule
    assert onset_step({"onset_step": 120, "onset_frac": 0.3, "planned_updates": 1000}) == 120
    assert onset_step({"onset_step": None, "onset_frac": 0.3, "planned_updates": 1000}) == 300
    # a Recorder control: no onset_step and no onset_frac: the whole run is after onset
    assert onset_step({"onset_step": None, "onset_frac": None, "n_updates": 500}) == 0
    assert onset_step({}) == 0
    assert resolve_onset(None) == 0 and resolve_onset(7) == 7


def test_generators_and_keys_agree_on_onset() -> None:
    """The runner's manifest rows carry the onset the generator used (control_onset of the spec)."""
    from stabilitybench.generate.spec import RunSpec

    spec = RunSpec("rl", "ppo", "CartPole-v1", 0, onset_frac=0.3)
    assert control_onset(spec.onset_frac, 2048) == round(0.3 * 2048)


# ------------------------------------------------------------------------------- no second owner
def _sources() -> list[tuple[Path, ast.Module, str]]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            out.append((path, ast.parse(text), text))
    return out


SOURCES = _sources()
#: what a comparison with "none" may be about without being the control definition (an alarm's action)
_ALLOWED_NONE = re.compile(r"\barm\b|\"arm\"|intervention|action|collapse_kind")
_ABOUT_CONFIG = re.compile(r"perturbation|\bkind\b|dimension|config|label|_group|\bconf\b|\bpert\b|\bp\.")


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"


def test_no_second_control_test() -> None:
    """``x == "none"`` on a perturbation, dimension or configuration label happens only in data_schema/keys.py."""
    hits = []
    for path, tree, text in SOURCES:
        if path == KEYS:
            continue
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            if not any(isinstance(o, ast.Constant) and o.value == "none" for o in operands):
                continue
            src = ast.get_source_segment(text, node) or ""
            if _ABOUT_CONFIG.search(src) and not _ALLOWED_NONE.search(src):
                hits.append(f"{_where(path, node)}: {src}")
    assert not hits, "control tested outside data_schema.keys (use control_mask / ConfigKey.is_control):\n" + \
        "\n".join(hits)


def test_no_second_group_keys() -> None:
    group = list(GROUP_KEYS)
    hits = []
    for path, tree, _ in SOURCES:
        if path == KEYS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Tuple | ast.List):
                values = [e.value for e in node.elts if isinstance(e, ast.Constant)]
                if values == group:
                    hits.append(_where(path, node))
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = {t.id for t in targets if isinstance(t, ast.Name)}
                if names & {"GROUP_KEYS", "MATCH_KEYS"}:
                    hits.append(_where(path, node))
    assert not hits, "group keys defined outside data_schema.keys: " + ", ".join(hits)


def _label_fstring(node: ast.JoinedStr) -> bool:
    """An f-string that formats a configuration label: `` x{magnitude:g}``, ``×{...}`` or ``({d} upd)``."""
    parts = node.values
    for i, part in enumerate(parts):
        if isinstance(part, ast.Constant) and isinstance(part.value, str):
            if " upd)" in part.value or ("×" in part.value and i + 1 < len(parts)):
                return True
            nxt = parts[i + 1] if i + 1 < len(parts) else None
            if part.value.endswith(" x") and isinstance(nxt, ast.FormattedValue) and nxt.format_spec is not None:
                return True
    return False


#: files whose f-strings print a run spec's fields (``lr_spike x10 dur=320 seed=3``), not a configuration label
SPEC_LINES = {ROOT / "generate" / "cli.py"}


def test_no_second_label_builder() -> None:
    hits = []
    for path, tree, text in SOURCES:
        if path == KEYS or path in SPEC_LINES:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr) and _label_fstring(node):
                hits.append(f"{_where(path, node)}: {ast.get_source_segment(text, node)}")
            if isinstance(node, ast.FunctionDef) and node.name in ("config_label", "group_label_of"):
                hits.append(f"{_where(path, node)}: def {node.name}")
    assert not hits, "configuration labels built outside ConfigKey.label:\n" + "\n".join(hits)


def test_no_second_onset_rule() -> None:
    """No ``onset or 0`` and no ``onset_frac * ...`` outside data_schema/keys.py."""
    hits = []
    for path, tree, text in SOURCES:
        if path == KEYS:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) \
                    and any(isinstance(v, ast.Constant) and v.value == 0 for v in node.values):
                src = ast.get_source_segment(text, node) or ""
                if "onset" in src:
                    hits.append(f"{_where(path, node)}: {src}")
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
                src = ast.get_source_segment(text, node) or ""
                if "onset_frac" in src:
                    hits.append(f"{_where(path, node)}: {src}")
    assert not hits, "onset resolved outside data_schema.keys (use onset_step / control_onset):\n" + "\n".join(hits)


@pytest.mark.parametrize(("kind", "name", "owner"), [
    (ast.FunctionDef, "first_line", "data_schema/errors.py"),
    (ast.FunctionDef, "ffill", "analysis/stats.py"),
    (ast.ClassDef, "OutputPathError", "data_schema/errors.py"),
    (ast.Assign, "STOCHASTICITY_LEVELS", "generate/spec.py"),
    (ast.FunctionDef, "plain", "analysis/summary.py"),
])
def test_one_owner_of_small_helpers(kind: type, name: str, owner: str) -> None:
    """Each helper is defined once (also under its old private name), in its owner."""
    found = []
    for path, tree, _ in SOURCES:
        for node in ast.walk(tree):
            if not isinstance(node, kind):
                continue
            names = [t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) \
                else [node.name]
            if any(n.lstrip("_") == name for n in names):
                found.append(str(path.relative_to(ROOT)))
    assert found == [owner], f"{name}: defined in {found}, expected only {owner}"


def test_no_json_float_encoder() -> None:
    """Non-finite floats become JSON through analysis.summary.plain/to_json only."""
    hits = [_where(p, n) for p, tree, _ in SOURCES for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.name in ("_json_float", "_plain", "_jsonable", "_sanitize")]
    assert not hits, hits
