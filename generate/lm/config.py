"""Frozen GPT-2 training config, named model sizes and stochasticity levels (no torch imports).

Resolution order for a run, as for RL: the dataclass defaults (the ``tiny`` model) <
the named model size (``hparams.model``, :data:`SIZES`) < the named stochasticity
level < the profile's ``hparams``.

Units: ``batch_size`` counts *sequences* of ``block_size`` tokens per optimizer step,
split into ``grad_accum`` microbatches (K, the coherence sample); the spec's
``total_steps`` counts *tokens*, so a run makes ``total_steps // (batch_size *
block_size)`` optimizer updates.

Corpus: ``env`` names a built-in corpus (:data:`stabilitybench.generate.lm.data.BUILTIN_CORPORA`)
unless ``hparams.corpus`` points at local text (a file, a folder of ``*.txt``, a
``.parquet`` file with a ``text`` column, ``file.parquet:column``) or an HF
``datasets`` name (``hf:<dataset>[:<config>]``, online only); ``env`` is then just the corpus label.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from stabilitybench.generate.errors import CorpusError
from stabilitybench.generate.rl.config import check_fields

#: Named model sizes: GPT2Config fields plus the optimizer settings that go with them.
SIZES: dict[str, dict[str, Any]] = {
    # ~1.07M parameters with a 2,048-token BPE: trains on one CPU core in minutes.
    "tiny": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 128, "vocab_size": 2048,
             "batch_size": 16, "grad_accum": 4, "learning_rate": 1e-3},
    # The real GPT-2 124M (Radford et al. 2019; nanoGPT's gpt2 config): 12 x 12 x 768, 1024 positions,
    # 50,304 embedding rows (50,257 padded to a multiple of 64), 0.5M-token batches as in nanoGPT.
    "small": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50304,
              "batch_size": 480, "grad_accum": 40, "learning_rate": 6e-4},
}

#: ``LMConfig.attn`` values: transformers' GPT-2 attention implementations that need no extra package.
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


@dataclass(frozen=True)
class LMConfig:
    """GPT-2 language-model training settings (defaults: the ``tiny`` size)."""

    model: str = "tiny"  # tiny | small: picks the defaults in SIZES
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128  # tokens per sequence (= n_positions)
    vocab_size: int = 2048  # BPE vocabulary trained on the corpus (and embedding rows)
    dropout: float = 0.0  # resid/embd/attn dropout (stochasticity knob)
    batch_size: int = 16  # sequences per optimizer step (stochasticity knob)
    grad_accum: int = 4  # K microbatches per optimizer step; grad_coherence is over these
    learning_rate: float = 1e-3  # peak LR
    min_lr_frac: float = 0.1  # cosine decays to min_lr_frac x peak
    warmup_frac: float = 0.05  # linear warmup over this fraction of the updates
    weight_decay: float = 0.1  # AdamW, on >= 2-D tensors only (nanoGPT)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # global-norm clipping; 0 disables
    eval_every: int = 0  # updates between val_loss evaluations; 0 = about 40 per run
    eval_sequences: int = 32  # the fixed val set: this many block_size windows of the val split
    logit_every: int = 0  # updates between attn/output logit probes; 0 = about 100 per run
    logit_sequences: int = 4  # sequences of the probed microbatch used for attn_logit_max
    corpus: str = ""  # path / file.parquet[:column] / hf:dataset[:config]; empty = env is a built-in corpus
    val_frac: float = 0.1  # the last val_frac of the text (at a line boundary) is the val split
    tokenizer_dir: str = ""  # tokenizer cache; empty = $STABILITYBENCH_CACHE or ~/.cache/stabilitybench
    device: str = "auto"  # auto | cpu | cuda (cuda: bf16 autocast + SDPA)
    # speed (issue 27). The CUDA-only switches are no-ops on the CPU, whose float32 path is unchanged.
    attn: str = "sdpa"  # attention kernel: sdpa (torch SDPA: flash / memory-efficient on CUDA) | eager
    autocast: bool = True  # bf16 autocast of the forward pass (CUDA only)
    fused_adamw: bool = True  # torch's fused AdamW kernel (CUDA only)
    tf32: bool = True  # TF32 float32 matmuls / convolutions (CUDA only; restored after the run)
    compile: bool = False  # torch.compile the model (nn.Module.compile: parameter names unchanged; CPU and CUDA)

    def __post_init__(self) -> None:
        check_fields(self, nonnegative=frozenset({"dropout", "min_lr_frac", "warmup_frac", "weight_decay",
                                                  "grad_clip", "eval_every", "logit_every", "beta1"}))
        if self.model not in SIZES:
            raise ValueError(f"model={self.model!r} must be one of {', '.join(SIZES)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device={self.device!r} must be auto, cpu or cuda")
        if self.attn not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn={self.attn!r} must be one of {', '.join(ATTN_IMPLEMENTATIONS)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size={self.batch_size} must be a multiple of grad_accum={self.grad_accum}")
        for name in ("dropout", "min_lr_frac", "warmup_frac", "beta1", "beta2", "val_frac"):
            if not getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be < 1")

    @property
    def wants_gpu(self) -> bool:
        """Whether a scheduler should place this run on a GPU: device=cuda, or auto for any size above tiny."""
        return self.device == "cuda" or (self.device == "auto" and self.model != "tiny")

    @property
    def micro_batch(self) -> int:
        """Sequences per microbatch."""
        return self.batch_size // self.grad_accum

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.block_size

    def planned_updates(self, total_tokens: int) -> int:
        return max(1, total_tokens // self.tokens_per_step)

    def eval_interval(self, planned: int) -> int:
        return self.eval_every or max(1, planned // 40)

    def logit_interval(self, planned: int) -> int:
        return self.logit_every or max(1, planned // 100)

    def knobs(self) -> dict[str, Any]:
        """Manifest columns: the stochasticity knobs, and K of grad_coherence (the microbatch count)."""
        return {"batch_size": self.batch_size, "dropout": self.dropout, "coherence_window": self.grad_accum}


def _levels(base: LMConfig) -> dict[str, dict[str, Any]]:
    """Stochasticity levels, relative to the size's config: larger batches / no dropout vs smaller / 0.1."""
    return {
        "low": {"batch_size": base.batch_size * 2, "dropout": 0.0},
        "default": {},
        "high": {"batch_size": max(base.grad_accum, base.batch_size // 4), "dropout": 0.1},
    }


def resolve(algo: str, env: str, stochasticity: str, hparams: dict[str, Any]) -> LMConfig:
    """The frozen config of a run: defaults < size ``hparams['model']`` < stochasticity level < hparams.

    Raises ValueError for bad values (the profile loader turns it into a ProfileError) and
    :class:`~stabilitybench.generate.errors.CorpusError` for a corpus that does not exist.
    """
    from stabilitybench.generate.lm.data import BUILTIN_CORPORA  # light: no torch / tokenizers at import

    model = hparams.get("model", "tiny")
    if model not in SIZES:
        raise ValueError(f"model={model!r} must be one of {', '.join(SIZES)}")
    base = LMConfig(model=model, **SIZES[model])
    level = _levels(base)
    if stochasticity not in level:
        raise ValueError(f"unknown stochasticity level {stochasticity!r} (available: {', '.join(level)})")
    cfg = replace(base, **{**level[stochasticity], **hparams})
    if not cfg.corpus and env not in BUILTIN_CORPORA:
        raise ValueError(f"env={env!r} is not a built-in corpus ({', '.join(BUILTIN_CORPORA)}); "
                         "set hparams.corpus to a text/parquet path and use env as its label")
    if cfg.corpus and not cfg.corpus.startswith("hf:"):
        path = Path(cfg.corpus.rsplit(":", 1)[0] if ".parquet:" in cfg.corpus else cfg.corpus).expanduser()
        if not path.exists():
            raise CorpusError(f"corpus {cfg.corpus!r}: no such file or folder")
    return cfg
