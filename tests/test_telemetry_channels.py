"""The schema-1.3 telemetry channels (issue 26): ``adam_update_ratio_rms`` (Wortsman et al. 2023, arXiv 2304.13013)
and the LM's ``logit_logz``, each checked against a hand computation; a schema-1.2 steps file (without them) still
reads and validates."""

from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from test_corpus_readers import build_corpus

from stabilitybench.data_schema import read_manifest, read_table, scan_steps, validate, write_manifest
from stabilitybench.data_schema.schema import ADDED_COLUMNS, SCHEMA_VERSION, STEPS_SCHEMA
from stabilitybench.generate.lm.config import resolve as lm_resolve
from stabilitybench.generate.lm.data import load_tokens, random_batch
from stabilitybench.generate.lm.train import build_model, pick_device, train
from stabilitybench.generate.probe import AdamUpdateRatio, Probe
from stabilitybench.generate.recorder import Recorder
from stabilitybench.generate.spec import RunSpec

NEW = ("adam_update_ratio_rms", "logit_logz")


def _net(dtype: torch.dtype = torch.float32) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3)).to(dtype)


def _batches(n: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)) for _ in range(n)]


def _hand_rms(history: list[list[torch.Tensor]], groups: list[dict], sizes: list[int]) -> list[float]:
    """RMS over all elements of g_t^2 / max(v_hat_t, eps^2) with v_t = b2 v_{t-1} + (1 - b2) g_t^2 (g_t included),
    v_hat_t = v_t / (1 - b2^t): float64, parameter by parameter, from the applied gradients ``history[t][i]``."""
    out, v = [], None
    for t, grads in enumerate(history, start=1):
        if v is None:
            v = [torch.zeros_like(g, dtype=torch.float64) for g in grads]
        total, i = 0.0, 0
        for group, size in zip(groups, sizes, strict=True):
            b2, eps = group["betas"][1], group["eps"]
            for _ in range(size):
                g = grads[i].double()
                v[i] = b2 * v[i] + (1 - b2) * g * g
                v_hat = v[i] / (1 - b2**t)
                total += float((g * g / v_hat.clamp_min(eps * eps)).sum())
                i += 1
        out.append(math.sqrt(total / sum(g.numel() for g in grads)))
    return out


def _train(opt_factory, clip: float | None = None, dtype: torch.dtype = torch.float32):
    net = _net(dtype)
    opt = opt_factory(net)
    rec = Recorder(None)
    probe = Probe(opt, rec)
    applied = []
    for x, y in _batches():
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x.to(dtype)), y.to(dtype)).backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        applied.append([p.grad.detach().clone() for g in opt.param_groups for p in g["params"]])
        opt.step()
    probe.detach()
    return rec.rows, applied, opt


def _two_groups(cls):
    def make(net):
        return cls([{"params": net[0].parameters(), "betas": (0.9, 0.99), "eps": 1e-8},
                    {"params": net[2].parameters(), "betas": (0.8, 0.9), "eps": 1e-3}], lr=1e-2)
    return make


@pytest.mark.parametrize(("name", "factory", "clip", "dtype"), [
    ("adam", lambda net: torch.optim.Adam(net.parameters(), lr=1e-2), None, torch.float32),
    ("adamw two groups, clipped", _two_groups(torch.optim.AdamW), 0.05, torch.float32),
    ("adam float64", lambda net: torch.optim.Adam(net.parameters(), lr=1e-2, eps=1e-4), None, torch.float64),
])
def test_adam_update_ratio_rms_matches_a_hand_computation(name, factory, clip, dtype) -> None:
    rows, applied, opt = _train(factory, clip, dtype)
    sizes = [len(g["params"]) for g in opt.param_groups]
    expected = _hand_rms(applied, opt.param_groups, sizes)
    got = [r["adam_update_ratio_rms"] for r in rows]
    assert got == pytest.approx(expected, rel=1e-5), name
    if clip is not None:  # the gradient Adam applied, not the captured pre-clip one: the two differ here
        assert rows[0]["grad_norm"] > clip
    if name == "adam":
        assert got[0] == pytest.approx(1.0, rel=1e-6)  # t = 1: v_hat = g^2, every ratio is 1 (v includes g_t)


def test_both_code_paths_of_the_ratio_agree() -> None:
    """The flat NumPy path (CPU, one dtype) and the foreach path (any device, mixed dtypes) give one value."""
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for x, y in _batches(2):
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        opt.step()
    params = [p for g in opt.param_groups for p in g["params"]]
    flat, generic = AdamUpdateRatio(opt, params, flat=True), AdamUpdateRatio(opt, params, flat=False)
    a, b = flat.rms(), generic.rms()
    assert a is not None and b == pytest.approx(a, rel=1e-6)


def test_the_accelerator_path_rides_on_the_batched_read() -> None:
    """As on a GPU: the foreach sum stays a device tensor and is read with the row's other values (simulated on CPU
    by turning off the early host read and the flat path): the same values as the hand computation."""
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    rec = Recorder(None)
    probe = Probe(opt, rec)
    probe.read_norm_early = False
    probe.update_ratio.flat = False
    applied = []
    for x, y in _batches():
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        applied.append([p.grad.detach().clone() for p in net.parameters()])
        opt.step()
    probe.detach()
    expected = _hand_rms(applied, opt.param_groups, [len(opt.param_groups[0]["params"])])
    assert [r["adam_update_ratio_rms"] for r in rec.rows] == pytest.approx(expected, rel=1e-5)
    assert all("_adam" not in k for r in rec.rows for k in r)  # the stash key never reaches a row


def test_adam_update_ratio_rms_is_null_without_adam() -> None:
    rows, _, _ = _train(lambda net: torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.9))
    assert len(rows) == 3 and all(r.get("adam_update_ratio_rms") is None for r in rows)
    assert AdamUpdateRatio.for_optimizer(torch.optim.RMSprop(_net().parameters())) is None


def test_logit_logz_matches_torch_logsumexp_on_a_tiny_gpt2(tmp_path: Path) -> None:
    """Row 0 of a run (before any update) against the logits recomputed from the same seed, model and batch."""
    torch.set_num_threads(1)
    hp = {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "batch_size": 4, "grad_accum": 2,
          "eval_sequences": 4, "vocab_size": 512, "logit_every": 1, "tokenizer_dir": str(tmp_path / "tok")}
    spec = RunSpec(domain="lm", algo="gpt2", env="pydoc-topics", seed=5, total_steps=3 * 4 * 16, hparams=hp)
    rows = train(spec).steps.to_pylist()
    assert all(r["logit_logz"] is not None for r in rows)
    cfg = lm_resolve("gpt2", "pydoc-topics", "default", hp)
    data = load_tokens(cfg.corpus, spec.env, cfg.vocab_size, cfg.val_frac, cfg.block_size, cfg.tokenizer_dir)
    torch.manual_seed(spec.seed)
    model = build_model(cfg, pick_device("cpu"))
    x, _ = random_batch(data.train, cfg.batch_size, cfg.block_size, torch.Generator().manual_seed(spec.seed))
    with torch.no_grad():
        logits = model(input_ids=x[: cfg.micro_batch]).logits  # the first microbatch, as the loop samples it
    assert rows[0]["output_logit_max"] == pytest.approx(float(logits.amax()), rel=1e-6)  # the same logits
    expected = float(torch.logsumexp(logits.double(), dim=-1).mean())
    assert rows[0]["logit_logz"] == pytest.approx(expected, rel=1e-5)
    assert expected > float(logits.amax(-1).mean())  # log Z exceeds each position's max logit


def test_the_new_columns_are_declared_once_with_unit_and_description() -> None:
    assert SCHEMA_VERSION == "1.3" and ADDED_COLUMNS["1.3"]["steps"] == NEW
    for name in NEW:
        field = STEPS_SCHEMA.field(name)
        assert field.nullable and field.metadata[b"unit"] and len(field.metadata[b"description"]) > 40


def test_a_schema_1_2_steps_file_still_reads_and_validates(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    build_corpus(root, litter=False)
    paths = [p for p in root.glob("steps/**/*.parquet") if not p.name.startswith(".")]
    for path in paths:  # as 1.2 wrote them: no new columns, version 1.2
        table = pq.read_table(path)
        table = table.drop_columns([c for c in NEW if c in table.column_names])
        pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                      b"stabilitybench.schema_version": b"1.2"}), path)
    rows = read_manifest(root).to_pylist()
    for r in rows:
        r["schema_version"] = "1.2"
    write_manifest(root, rows)
    assert not set(NEW) & set(pq.read_schema(paths[0]).names)
    table = read_table(paths[0], "steps")  # upgraded on read: the new columns as null
    validate(table, "steps")
    assert all(table.column(c).null_count == table.num_rows for c in NEW)
    steps = scan_steps(root).collect()
    assert all(steps[c].null_count() == steps.height for c in NEW) and steps.height > 0
