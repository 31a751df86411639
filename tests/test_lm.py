"""GPT-2 generator: the loop learns, telemetry is right, perturbations act, corpus errors are clear.

Runs use a micro GPT-2 (2 layers x 64, 32-token sequences) on the built-in corpus, with the
tokenizer cached in a per-session temp folder; the whole file takes a few seconds per run.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import polars as pl
import pytest
import torch

from stabilitybench.data_schema import read_manifest, write_manifest
from stabilitybench.data_schema.errors import StabilityBenchError
from stabilitybench.data_schema.io import validate
from stabilitybench.generate.errors import CorpusError, ProfileError
from stabilitybench.generate.lm.config import LMConfig, resolve
from stabilitybench.generate.lm.data import load_text, load_tokens, split_text, tokenizer_for
from stabilitybench.generate.lm.telemetry import LogitProbe, MicrobatchCoherence, attach_flat_grads_, attention_logits
from stabilitybench.generate.lm.train import TARGET_LAYER, build_model, lr_at, train
from stabilitybench.generate.matrix import expand
from stabilitybench.generate.perturbations import UpdateContext, build
from stabilitybench.generate.spec import RunSpec
from stabilitybench.generate.worker import run_one

MICRO = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 32, "batch_size": 8, "grad_accum": 4,
         "learning_rate": 3e-3, "eval_sequences": 8, "vocab_size": 512,
         "eval_every": 4}


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("tokenizers"))


def spec_for(tok_dir: str, updates: int = 30, **kw) -> RunSpec:
    hparams = {**MICRO, "tokenizer_dir": tok_dir, **kw.pop("hparams", {})}
    tokens = updates * hparams["batch_size"] * hparams["block_size"]
    return RunSpec(domain="lm", algo="gpt2", env="pydoc-topics", seed=kw.pop("seed", 0), total_steps=tokens,
                   hparams=tuple(hparams.items()), **kw)


@pytest.fixture(scope="session")
def control(tok_dir: str) -> pl.DataFrame:
    torch.set_num_threads(1)
    result = train(spec_for(tok_dir, updates=40))
    validate(result.steps, "steps")
    return pl.from_arrow(result.steps)


# ------------------------------------------------------------------------------ loop
def test_loss_decreases_and_every_lm_column_is_filled(control: pl.DataFrame) -> None:
    assert control.height == 40
    first, last = control["train_loss"][:5].mean(), control["train_loss"][-5:].mean()
    assert last < first - 0.5, (first, last)
    val = control["val_loss"].drop_nulls()
    assert val[-1] < val[0] - 0.5
    assert control["performance"].null_count() == 0  # eval at update 0, carried forward
    assert (control["performance"] == -control["val_loss"]).drop_nulls().all()
    for col in ("lr", "grad_norm", "grad_coherence", "update_norm", "param_norm", "tokens_per_s", "loss"):
        assert control[col].null_count() == 0, col
    assert control["attn_logit_max"].drop_nulls().len() >= 10
    assert control["output_logit_max"].drop_nulls().len() >= 10
    assert control["samples_seen"].to_list() == [(i + 1) * 8 * 32 for i in range(40)]
    assert control["grad_coherence"].is_between(-1, 1).all()
    assert not control["perturbation_active"].any()


def test_schedule_is_warmup_then_cosine_to_the_floor() -> None:
    cfg = LMConfig(learning_rate=1.0, warmup_frac=0.1, min_lr_frac=0.1)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_sizes_and_levels() -> None:
    small = resolve("gpt2", "pydoc-topics", "default", {"model": "small"})
    assert (small.n_layer, small.n_head, small.n_embd, small.block_size) == (12, 12, 768, 1024)
    tiny = resolve("gpt2", "pydoc-topics", "default", {})
    n = sum(p.numel() for p in build_model(tiny, torch.device("cpu")).parameters())
    assert 1_000_000 <= n <= 2_000_000
    low, high = (resolve("gpt2", "pydoc-topics", s, {}) for s in ("low", "high"))
    assert low.batch_size > tiny.batch_size > high.batch_size and high.dropout > tiny.dropout
    assert tiny.knobs() == {"batch_size": 16, "dropout": 0.0, "coherence_window": 4}


# ------------------------------------------------------------------------- coherence
def test_microbatch_coherence_equals_brute_force_on_a_tiny_gpt2() -> None:
    torch.manual_seed(0)
    cfg = LMConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=50)
    model = build_model(cfg, torch.device("cpu"))
    params = list(model.parameters())
    batches = [torch.randint(0, 50, (2, 9)) for _ in range(5)]

    def loss(b: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=b[:, :-1]).logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 50), b[:, 1:].reshape(-1)) / len(batches)

    separate = []  # brute force: each microbatch's gradient on its own
    for b in batches:
        model.zero_grad(set_to_none=True)
        loss(b).backward()
        separate.append(torch.cat([p.grad.reshape(-1) for p in params]).double())
    cos = [float(a @ c / (a.norm() * c.norm())) for a, c in itertools.combinations(separate, 2)]

    model.zero_grad(set_to_none=True)
    flat = attach_flat_grads_(params)
    coh = MicrobatchCoherence(flat.numel())
    coh.start()
    for b in batches:
        loss(b).backward()
        coh.add(flat)
    assert all(p.grad.data_ptr() >= flat.data_ptr() for p in params)  # autograd accumulated into the views
    assert torch.allclose(flat.double(), sum(separate), atol=1e-6)
    assert coh.value() == pytest.approx(sum(cos) / len(cos), abs=1e-5)
    coh.start()
    assert coh.value() is None


# ---------------------------------------------------------------------------- logits
def test_attention_logits_reproduce_the_models_attention_probabilities() -> None:
    torch.manual_seed(0)
    cfg = LMConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=50)
    model = build_model(cfg, torch.device("cpu"))
    model.config._attn_implementation = "eager"
    captured = []
    handle = model.transformer.h[1].attn.c_attn.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
    probe = LogitProbe(model, cfg.n_head, rows=4)
    probe.arm()
    out = model(input_ids=torch.randint(0, 50, (3, 8)), output_attentions=True)
    top = probe.disarm()
    handle.remove()
    logits = attention_logits(captured[0], cfg.n_head)
    assert torch.allclose(logits.softmax(-1), out.attentions[1], atol=1e-5)
    assert top >= float(logits.amax())
    probe.remove()


# --------------------------------------------------------------------- perturbations
@pytest.mark.parametrize(("kind", "which"), [("token_corruption", 0), ("label_noise", 1)])
@pytest.mark.parametrize("magnitude", [0.2, 1.0])
def test_batch_perturbations_replace_the_stated_fraction(kind: str, which: int, magnitude: float) -> None:
    pert = build(kind, magnitude, onset_step=5, duration_steps=3)
    x = torch.randint(0, 100, (64, 128))
    y = torch.randint(0, 100, (64, 128))
    g = torch.Generator().manual_seed(0)
    for outside in (4, 8):  # before and after the window: the very same tensors
        a, b = pert.transform_batch(outside, x, y, 100, g)
        assert a is x and b is y
    out = pert.transform_batch(5, x, y, 100, g)
    untouched = 1 - which
    assert torch.equal(out[untouched], (x, y)[untouched])
    changed = float((out[which] != (x, y)[which]).float().mean())
    assert changed == pytest.approx(magnitude * (1 - 1 / 100), abs=0.01)
    assert int(out[which].max()) < 100


def test_lr_spike_multiplies_the_schedule_in_the_window(tok_dir: str, control: pl.DataFrame) -> None:
    run = pl.from_arrow(train(spec_for(tok_dir, updates=40, perturbation="lr_spike", magnitude=10.0,
                                       onset_frac=0.5, duration_steps=3)).steps)
    ratio = (run["lr"] / control["lr"]).to_list()
    assert ratio[20:23] == pytest.approx([10.0] * 3)
    assert ratio[:20] == pytest.approx([1.0] * 20) and ratio[23:] == pytest.approx([1.0] * 17)
    assert run["perturbation_active"].to_list() == [20 <= i < 23 for i in range(40)]


def test_weight_noise_and_layer_reset_act_on_the_gpt2_by_the_stated_amount() -> None:
    torch.manual_seed(0)
    cfg = LMConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=50)
    model = build_model(cfg, torch.device("cpu"))
    prefix = TARGET_LAYER.partition(":")[2]
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(prefix)}
    ctx = UpdateContext(optimizers=[], modules={"model": model}, initial_state={"model": initial},
                        generator=torch.Generator().manual_seed(0), target_layer=TARGET_LAYER)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)  # "training"
    trained = {n: p.detach().clone() for n, p in model.named_parameters()}
    build("layer_reset", 0.5, onset_step=0, duration_steps=1).before_update(0, ctx)
    for n, p in model.named_parameters():
        expected = 0.5 * trained[n] + 0.5 * initial[n] if n.startswith(prefix) else trained[n]
        assert torch.allclose(p, expected), n
    assert any(n.startswith(prefix) for n in trained) and any(not n.startswith(prefix) for n in trained)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    effect = build("weight_noise", 0.3, onset_step=0, duration_steps=1).before_update(0, ctx)
    assert effect is not None and effect["delta_norm"] > 0
    for n, p in model.named_parameters():
        assert float((p.detach() - before[n]).norm()) == pytest.approx(0.3 * float(before[n].norm()), rel=1e-4), n


@pytest.mark.parametrize(("kind", "magnitude"), [("weight_noise", 1.0), ("layer_reset", 1.0)])
def test_parametric_kinds_act_once_inside_the_generator(tok_dir: str, control: pl.DataFrame, kind: str,
                                                       magnitude: float) -> None:
    result = train(spec_for(tok_dir, updates=40, perturbation=kind, magnitude=magnitude, onset_frac=0.5))
    run = pl.from_arrow(result.steps)
    events = pl.from_arrow(result.events)
    applied = events.filter(pl.col("event") == "perturbation_applied")
    assert applied["step"].to_list() == [20] and applied["detail"][0].startswith(kind)
    assert applied["value"][0] > 0  # delta_norm: the size of the change
    assert run["train_loss"][:21].to_list() == pytest.approx(control["train_loss"][:21].to_list(), rel=1e-5)
    assert run["param_norm"][20] != pytest.approx(control["param_norm"][20], rel=1e-3)
    if kind == "weight_noise":
        assert run["param_norm"][20] > 1.3 * control["param_norm"][20]


@pytest.mark.parametrize(("kind", "side"), [("token_corruption", 0), ("label_noise", 1)])
def test_batch_kinds_change_what_the_generator_trains_on(tok_dir: str, kind: str, side: int,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import stabilitybench.generate.lm.train as lm_train

    def recording(seen: list) -> object:
        def loss(model, inputs, targets, device):
            if model.training:
                seen.append((inputs.clone(), targets.clone()))
            return original(model, inputs, targets, device)
        return loss

    original = lm_train.microbatch_loss
    clean: list = []
    noisy: list = []
    monkeypatch.setattr(lm_train, "microbatch_loss", recording(clean))
    train(spec_for(tok_dir, updates=12))
    monkeypatch.setattr(lm_train, "microbatch_loss", recording(noisy))
    result = train(spec_for(tok_dir, updates=12, perturbation=kind, magnitude=0.5, onset_frac=0.5, duration_steps=3))
    k = MICRO["grad_accum"]
    assert len(clean) == len(noisy) == 12 * k
    for i, (a, b) in enumerate(zip(clean, noisy, strict=True)):
        active = 6 <= i // k < 9
        assert torch.equal(a[1 - side], b[1 - side])
        changed = float((a[side] != b[side]).float().mean())
        assert (changed > 0.3) if active else changed == 0.0, (i, changed)
    assert pl.from_arrow(result.steps)["perturbation_active"].to_list() == [6 <= i < 9 for i in range(12)]


def test_rl_env_kinds_are_refused(tok_dir: str) -> None:
    with pytest.raises(ProfileError, match="acts on RL envs"):
        train(spec_for(tok_dir, updates=2, perturbation="obs_noise", magnitude=1.0))


# ---------------------------------------------------------------- corpus, tokenizer
def test_tokenizer_round_trips_and_is_cached_by_corpus_and_vocab(tok_dir: str) -> None:
    train_text, val_text = split_text(load_text("", "pydoc-topics"), 0.1)
    assert val_text and train_text.endswith("\n")
    tok, digest = tokenizer_for(train_text, 2048, tok_dir)
    sample = val_text[:3000] + " unicode: é ∑ 😀"
    assert tok.decode(tok.encode(sample).ids) == sample
    assert tokenizer_for(train_text, 2048, tok_dir)[1] == digest  # from the cache
    assert tokenizer_for(train_text, 1024, tok_dir)[1] != digest
    assert len(digest) == 64


def test_local_text_and_parquet_corpora(tmp_path, tok_dir: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    text = load_text("", "pydoc-topics")[:60_000]
    (tmp_path / "a.txt").write_text(text)
    pq.write_table(pa.table({"body": [text[:30_000], text[30_000:]]}), tmp_path / "c.parquet")
    for corpus in (str(tmp_path / "a.txt"), str(tmp_path), f"{tmp_path / 'c.parquet'}:body"):
        data = load_tokens(corpus, "mine", 512, 0.1, 32, tok_dir)
        assert data.train.numel() > 1000 and data.val.numel() > 100 and data.n_vocab <= 512
    with pytest.raises(CorpusError, match="no column 'text'"):
        load_text(str(tmp_path / "c.parquet"))


def test_missing_or_empty_corpus_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(CorpusError, match="no such file or folder"):
        resolve("gpt2", "mine", "default", {"corpus": str(tmp_path / "nope.txt")})
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(CorpusError, match="empty or too short") as err:
        load_text(str(tmp_path / "empty.txt"))
    assert isinstance(err.value, StabilityBenchError) and "\n" not in str(err.value)
    with pytest.raises(CorpusError, match="no such file"):  # at profile load, before anything runs
        expand({"matrix": [{"domain": "lm", "algo": "gpt2", "env": "mine", "seed": 0,
                            "hparams": {"corpus": str(tmp_path / "nope")}}]})
    with pytest.raises(ProfileError, match="not a built-in corpus"):
        expand({"matrix": [{"domain": "lm", "algo": "gpt2", "env": "mine", "seed": 0}]})


# -------------------------------------------------------------------------- runner
def test_run_one_writes_schema_valid_files_and_a_manifest_row(tmp_path, tok_dir: str) -> None:
    spec = spec_for(tok_dir, updates=6, perturbation="lr_spike", magnitude=5.0, duration_steps=2,
                    stochasticity="high", hparams={"grad_accum": 2})
    row = run_one(spec, tmp_path)
    assert row["status"] == "ok", row["error"]
    assert row["dimension"] == "optimization" and row["n_updates"] == row["planned_updates"] == 6
    # the level sets dropout 0.1; the profile's hparams (batch_size 8) override its batch size
    assert row["batch_size"] == 8 and row["dropout"] == 0.1 and len(row["tokenizer_hash"]) == 64
    assert row["coherence_window"] == 2  # K microbatches per update
    write_manifest(tmp_path, [row])
    manifest = read_manifest(tmp_path).to_pylist()[0]
    assert manifest["dropout"] == 0.1 and manifest["tokenizer_hash"] == row["tokenizer_hash"]
    steps = pl.read_parquet(next(tmp_path.glob("steps/domain=lm/algo=gpt2/env=pydoc-topics/*/*.parquet")))
    assert steps.height == 6 and steps["perturbation_active"].sum() == 2


# ---------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_trains_in_bf16_autocast(tok_dir: str) -> None:
    result = train(spec_for(tok_dir, updates=10, hparams={"device": "cuda"}))
    steps = pl.from_arrow(result.steps)
    assert result.config["device"] == "cuda" and result.config["dtype"] == "bfloat16-autocast"
    assert steps["train_loss"].is_finite().all() and steps["grad_coherence"].null_count() == 0
    assert math.isfinite(steps["val_loss"].drop_nulls()[-1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_compiled_loop_matches_eager_and_restores_tf32(tok_dir: str) -> None:
    """The fast path (bf16, fused AdamW, TF32, SDPA, torch.compile) on CUDA: the same losses as eager within bf16."""
    saved = torch.backends.cuda.matmul.allow_tf32
    runs = {c: pl.from_arrow(train(spec_for(tok_dir, updates=8, hparams={"device": "cuda", "compile": c,
                                                                          "logit_every": 2})).steps)
            for c in (False, True)}
    assert torch.backends.cuda.matmul.allow_tf32 == saved  # the run's TF32 setting does not leak
    eager, compiled = runs[False]["train_loss"].to_numpy(), runs[True]["train_loss"].to_numpy()
    assert (abs(compiled - eager) < 0.05).all(), (eager, compiled)
    assert runs[True]["attn_logit_max"].drop_nulls().len() == 4  # probed updates run the eager forward


# ------------------------------------------------------------------------ speed switches
def test_speed_switches_keep_the_cpu_path_and_the_parameter_names(tok_dir: str) -> None:
    cfg = resolve("gpt2", "pydoc-topics", "default", {})
    assert (cfg.attn, cfg.compile) == ("sdpa", False)  # the defaults: the eager float32 loop on the CPU
    eager = build_model(cfg, torch.device("cpu"))
    assert eager.config._attn_implementation == "sdpa" and eager._compiled_call_impl is None
    compiled = build_model(replace(cfg, compile=True), torch.device("cpu"))
    assert compiled._compiled_call_impl is not None  # compiled in place (lazily: nothing is traced yet)
    names = [n for n, _ in compiled.named_parameters()]
    assert names == [n for n, _ in eager.named_parameters()]
    assert any(n.startswith(TARGET_LAYER.partition(":")[2]) for n in names)  # layer_reset still finds its layer
    assert build_model(replace(cfg, attn="eager"), torch.device("cpu")).config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="attn="):
        resolve("gpt2", "pydoc-topics", "default", {"attn": "flash"})


def test_eager_attention_trains_like_sdpa_on_cpu(tok_dir: str) -> None:
    runs = [pl.from_arrow(train(spec_for(tok_dir, updates=4, hparams={"attn": a})).steps) for a in ("sdpa", "eager")]
    a, b = (r["train_loss"].to_numpy() for r in runs)
    assert (abs(a - b) < 1e-4).all() and a[0] != a[-1], (a, b)  # same math, another kernel; and it trains


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_device_is_one_line(tok_dir: str) -> None:
    with pytest.raises(ProfileError, match=r"device='cuda' but torch .* sees no CUDA device"):
        train(spec_for(tok_dir, updates=2, hparams={"device": "cuda"}))


@pytest.mark.slow
def test_compiled_loop_matches_eager_on_cpu(tok_dir: str) -> None:
    """torch.compile on the CPU (inductor, C++): finite losses equal to eager to float32 rounding, probes filled."""
    runs = {c: pl.from_arrow(train(spec_for(tok_dir, updates=6, hparams={"compile": c, "logit_every": 2})).steps)
            for c in (False, True)}
    eager, compiled = runs[False], runs[True]
    assert compiled["train_loss"].is_finite().all()
    assert (abs(compiled["train_loss"].to_numpy() - eager["train_loss"].to_numpy()) < 1e-4).all()
    for col in ("grad_coherence", "attn_logit_max", "output_logit_max"):
        assert compiled[col].null_count() == eager[col].null_count(), col
        assert (abs(compiled[col].drop_nulls().to_numpy() - eager[col].drop_nulls().to_numpy()) < 1e-3).all(), col
    assert math.isfinite(compiled["val_loss"].drop_nulls()[-1])


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="multiple of grad_accum"):
        replace(LMConfig(), batch_size=10, grad_accum=4)
    with pytest.raises(ValueError, match="model="):
        resolve("gpt2", "pydoc-topics", "default", {"model": "huge"})
