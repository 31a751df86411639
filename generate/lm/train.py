"""GPT-2 language modelling with full telemetry: a plain nanoGPT-style torch loop.

Read top to bottom: resolve the frozen config, load the corpus and its cached BPE, build
``GPT2LMHeadModel(GPT2Config(...))`` and AdamW, attach the public :class:`~stabilitybench.generate.probe.Probe`
to the optimizer (handing it the loop's flat gradient buffer and a microbatch coherence), then for
each optimizer update:

1. draw ``batch_size`` random windows of the training tokens (seeded data order), let the
   perturbation transform the batch (token corruption, label noise);
2. K = ``grad_accum`` microbatches: forward (bf16 autocast + SDPA on CUDA, float32 on CPU),
   cross-entropy / K, backward; fold each microbatch gradient into the coherence (no host read
   inside this loop);
3. clip the global gradient norm; the loop sets every group's LR to the warmup-cosine
   schedule in plain sight (nanoGPT); ``optimizer.step()`` (the probe's hooks multiply the LR
   by the perturbation's factor for that step only, let parametric kinds act, and record
   the row); zero the flat gradient;
4. every ``eval_every`` updates (and at the last) ``val_loss`` on the fixed val set.

Speed switches (issue 27; ``hparams``): ``attn`` (sdpa | eager), and on CUDA only ``autocast`` (bf16),
``fused_adamw`` and ``tf32``; ``compile`` (CPU and CUDA) compiles the model in place with
``nn.Module.compile`` (parameter names, hence the perturbations' targets, unchanged). A microbatch whose
attention logits are probed runs the eager forward (the probe's hooks stay out of the compiled graph).
With the defaults the CPU path is the float32 eager loop it always was.

Columns (one ``steps`` row per optimizer update): ``train_loss`` = ``loss`` = mean
cross-entropy of the step's (possibly perturbed) batch; ``grad_norm`` before clipping;
``grad_coherence`` = mean pairwise cosine of the step's K microbatch gradients;
``update_norm``, ``param_norm``; ``tokens_per_s`` of the step; ``samples_seen`` = tokens
trained on up to and including the step; ``val_loss`` on eval updates (null between),
``performance`` = -(latest val_loss), carried forward; ``attn_logit_max`` /
``output_logit_max`` / ``logit_logz`` (log-partition of the output logits, mean over positions) on every
``logit_every``-th update (the first microbatch), null between; ``adam_update_ratio_rms`` (AdamW's RMS of
g^2 / v_hat, from the probe) on every update.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F

from stabilitybench.data_schema.keys import control_onset
from stabilitybench.generate.errors import NonFiniteTraining, ProfileError
from stabilitybench.generate.lm.config import LMConfig, resolve
from stabilitybench.generate.lm.data import TokenData, fixed_batches, load_tokens, random_batch
from stabilitybench.generate.lm.telemetry import (
    LogitProbe,
    MicrobatchCoherence,
    attach_flat_grads_,
    output_logit_stats,
)
from stabilitybench.generate.perturbations import TrainingClock, UpdateContext, build
from stabilitybench.generate.probe import Probe, ProbeInternals, _WiredProbe
from stabilitybench.generate.recorder import Recorder
from stabilitybench.generate.registry import GeneratorResult
from stabilitybench.generate.spec import RunSpec

#: ``module:parameter-prefix`` of the layer that layer_reset acts on: the first transformer block.
TARGET_LAYER = "model:transformer.h.0."


def build_model(cfg: LMConfig, device: torch.device) -> Any:
    """``GPT2LMHeadModel`` from a ``GPT2Config`` of the run's size (``cfg.attn`` attention), on ``device``;
    compiled in place (``nn.Module.compile``) when ``cfg.compile``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout,
                        attn_pdrop=cfg.dropout, use_cache=False, bos_token_id=0, eos_token_id=0)  # <|endoftext|>
    config._attn_implementation = cfg.attn
    model = GPT2LMHeadModel(config).to(device)
    if cfg.compile:
        # a later run in the same process (a pool worker, a benchmark) reuses the compiled code: parameters are
        # graph inputs (inlined nn modules), so a fresh model of the same shape does not recompile
        model.compile()  # in place: model(...) runs the compiled graph, model.forward(...) the eager one
    return model


def make_optimizer(model: torch.nn.Module, cfg: LMConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW, weight decay on >= 2-D tensors only (nanoGPT); fused on CUDA unless ``cfg.fused_adamw`` is off."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                             fused=device.type == "cuda" and cfg.fused_adamw)


def lr_at(step: int, planned: int, cfg: LMConfig) -> float:
    """Linear warmup over ``warmup_frac`` of the updates, then cosine decay to ``min_lr_frac`` x peak."""
    warmup = max(1, round(cfg.warmup_frac * planned))
    if step < warmup:
        return cfg.learning_rate * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, planned - warmup))
    floor = cfg.min_lr_frac * cfg.learning_rate
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.learning_rate - floor)


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when torch sees a device, else the CPU. ``cuda`` without one: a one-line ProfileError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ProfileError(f"hparams.device='cuda' but torch {torch.__version__} sees no CUDA device: run this "
                           "profile on a GPU machine (or set hparams.device='cpu')")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (when ``enabled``); a no-op (float32) on CPU."""
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_tf32(device: torch.device, enabled: bool) -> Callable[[], None]:
    """TF32 float32 matmuls and convolutions on CUDA (``enabled``) for a run; returns the call that restores
    the previous setting. A no-op on the CPU."""
    if device.type != "cuda":
        return lambda: None
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled

    def restore() -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

    return restore


def microbatch_loss(model: Callable[..., Any], inputs: torch.Tensor, targets: torch.Tensor,
                    device: torch.device, *, bf16: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of a ``(B, T)`` token batch and its logits ``(B, T, V)``.

    ``model``: the model, or ``model.forward`` (a compiled model's eager path, where forward hooks run in
    Python); ``bf16``: autocast on CUDA.
    """
    with autocast(device, bf16):
        logits = model(input_ids=inputs).logits
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
    return loss, logits


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
             bf16: bool = True) -> float:
    """Mean cross-entropy (nats/token) over the fixed val batches, dropout off (one host read)."""
    loss_of = microbatch_loss if bf16 else functools.partial(microbatch_loss, bf16=False)
    model.eval()
    total = torch.zeros((), device=device)
    for x, y in batches:
        total += loss_of(model, x, y, device)[0]
    model.train()
    return float(total) / len(batches)


def run(spec: RunSpec) -> GeneratorResult:
    """Train GPT-2 on ``spec.total_steps`` tokens of ``spec.env``'s corpus and return its telemetry."""
    return train(spec)


def train(spec: RunSpec, *, telemetry: bool = True, evaluate_val: bool = True,
          data: TokenData | None = None, on_step: Callable[[int], None] | None = None) -> GeneratorResult:
    """The loop. ``telemetry=False`` runs the same loop and microbatching with no probes (benchmark
    baseline: no rows); ``evaluate_val=False`` skips val evaluations; ``data`` reuses loaded tokens;
    ``on_step(step)`` is called after each update (a benchmark's steady-state clock; the loop itself
    never waits for the device there)."""
    cfg = resolve(spec.algo, spec.env, spec.stochasticity, dict(spec.hparams))
    device = pick_device(cfg.device)
    planned = cfg.planned_updates(spec.total_steps)
    onset_step = control_onset(spec.onset_frac, planned)
    perturbation = build(spec.perturbation, spec.magnitude, onset_step, spec.duration_steps, seed=spec.seed)
    if "lm" not in perturbation.domains:
        raise ProfileError(f"perturbation {spec.perturbation!r} acts on RL envs; it has no effect on a language model")
    if data is None:
        data = load_tokens(cfg.corpus, spec.env, cfg.vocab_size, cfg.val_frac, cfg.block_size, cfg.tokenizer_dir)
    if data.n_vocab > cfg.vocab_size:
        raise ProfileError(f"tokenizer has {data.n_vocab} tokens > vocab_size={cfg.vocab_size}")

    torch.manual_seed(spec.seed)
    model = build_model(cfg, device)
    model.train()
    optimizer = make_optimizer(model, cfg, device)
    clock = TrainingClock()
    batch_rng = torch.Generator().manual_seed(spec.seed)  # data order: the same for a run and its control
    perturb_rng = torch.Generator().manual_seed(spec.seed + 7919)
    val_batches = [(x.to(device), y.to(device))
                   for x, y in fixed_batches(data.val, cfg.eval_sequences, cfg.block_size, cfg.micro_batch)]
    eval_every, logit_every = cfg.eval_interval(planned), cfg.logit_interval(planned)
    recorder = Recorder(None, domain=spec.domain, algo=spec.algo, env=spec.env, seed=spec.seed, run_id=spec.run_id)
    recorder.samples_seen = 0
    recorder.set_perturbation(perturbation)
    performance: list[float | None] = [None]
    t_step = [0.0]

    def record(step: int, stats: dict[str, Any]) -> None:
        stats["loss"] = stats.get("train_loss")
        recorder.append(step=step, **stats, tokens_per_s=cfg.tokens_per_step / (time.perf_counter() - t_step[0]),
                        performance=performance[0])

    params = [p for group in optimizer.param_groups for p in group["params"]]
    probe: Probe | None = None
    coherence: MicrobatchCoherence | None = None
    logits_probe: LogitProbe | None = None
    if telemetry:
        named = dict(model.named_parameters())
        ctx = UpdateContext(
            optimizers=[optimizer], modules={"model": model},
            initial_state={"model": {n: p.detach().clone() for n, p in named.items()
                                     if n.startswith(TARGET_LAYER.partition(":")[2])}},
            generator=torch.Generator().manual_seed(spec.seed + 1_000_003), target_layer=TARGET_LAYER)
        flat_grad = attach_flat_grads_(params)  # the loop's own gradient layout: one flat buffer
        coherence = MicrobatchCoherence(flat_grad.numel(), flat_grad.device, flat_grad.dtype)
        probe = _WiredProbe(optimizer, recorder, ProbeInternals(clock=clock, update_context=ctx, manual_grads=True,
                                                                coherence=coherence),
                            perturbation=perturbation, on_row=record)
        logits_probe = LogitProbe(model, cfg.n_head, cfg.logit_sequences)

    stop_reason = "completed"
    k, mb = cfg.grad_accum, cfg.micro_batch
    loss_of = microbatch_loss if cfg.autocast else functools.partial(microbatch_loss, bf16=False)
    restore_tf32 = set_tf32(device, cfg.tf32)
    try:
        for step in range(planned):
            t_step[0] = time.perf_counter()
            # the learning rate, set in plain sight (nanoGPT); the probe only multiplies it by the
            # perturbation's factor for the duration of optimizer.step() and records it
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, planned, cfg)
            x, y = random_batch(data.train, cfg.batch_size, cfg.block_size, batch_rng)
            x, y = perturbation.transform_batch(step, x, y, data.n_vocab, perturb_rng)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            sampled = probe is not None and step % logit_every == 0
            if coherence is not None:
                coherence.start()
            if sampled:
                logits_probe.arm()
            loss_sum = torch.zeros((), device=device)
            out_stats: dict[str, torch.Tensor] = {}
            attn_max = None
            for i in range(k):
                probed = sampled and i == 0
                forward = model.forward if probed and cfg.compile else model  # the probe's hooks run eagerly
                loss, logits = loss_of(forward, x[i * mb : (i + 1) * mb], y[i * mb : (i + 1) * mb], device)
                (loss / k).backward()
                loss_sum += loss.detach()
                if coherence is not None:
                    coherence.add(flat_grad)
                if probed:
                    out_stats = output_logit_stats(logits)  # output_logit_max, logit_logz
                    attn_max = logits_probe.disarm_lazy()  # read after the K microbatches
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            recorder.samples_seen = (step + 1) * cfg.tokens_per_step
            if probe is not None:
                probe.set_gradient(flat_grad, norm)
                probe.stash(train_loss=loss_sum / k, **out_stats)
                optimizer.step()  # the probe's hooks apply the perturbation and record the row
                if sampled:
                    recorder.update_last(attn_logit_max=None if attn_max is None else float(attn_max))
                flat_grad.zero_()
            else:
                factor = perturbation.lr_factor(step)
                for group in optimizer.param_groups:
                    group["lr"] *= factor
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                clock.step += 1
            if evaluate_val and (step % eval_every == 0 or step == planned - 1):
                val = evaluate(model, val_batches, device, cfg.autocast)
                performance[0] = -val
                recorder.update_last(val_loss=val, performance=-val)
                recorder.event(step, "eval", value=val)
            if on_step is not None:
                on_step(step)
    except NonFiniteTraining as exc:
        stop_reason = "nonfinite"
        recorder.event(exc.step, "nonfinite", detail=exc.what)
    finally:
        restore_tf32()
        if probe is not None:
            probe.detach()
        if logits_probe is not None:
            logits_probe.remove()

    n_params = sum(p.numel() for p in params)
    return GeneratorResult(
        steps=recorder.steps_table(),
        events=recorder.events_table(),
        planned_updates=planned,
        onset_step=onset_step,
        stop_reason=stop_reason,
        knobs=cfg.knobs(),
        config={"algo": spec.algo, "torch": torch.__version__, "device": device.type,
                "dtype": "bfloat16-autocast" if device.type == "cuda" and cfg.autocast else "float32",
                "n_params": n_params,
                "tokenizer_vocab": data.n_vocab, "corpus_chars": data.corpus_chars,
                "train_tokens": int(data.train.numel()), "val_tokens": int(data.val.numel()),
                "tokens_per_step": cfg.tokens_per_step, "eval_every": eval_every, "logit_every": logit_every,
                "wall_time_s": round(time.perf_counter() - recorder.t0, 3), **asdict(cfg)},
        tokenizer_hash=data.tokenizer_hash,
    )
