"""Offline text corpora, the fixed train/val split, a cached ByteLevel BPE and seeded batches.

Default corpus: ``pydoc-topics``
--------------------------------
CPython's ``pydoc_data.topics`` (the text of the *Python Language Reference* and
library topics that ``help()`` shows): ~465k characters of real English technical prose
(~0.13M tokens with the 2,048-token BPE), always present with the interpreter, so the
quick profile and the tests need no download. Licence: Python Software Foundation
License v2 (the CPython documentation's licence; its code examples are also under the
Zero-Clause BSD licence). No larger English corpus ships with the project's installed
packages; for paper-scale runs point ``hparams.corpus`` at your own text.

Other corpora (``LMConfig.corpus``): a text file, a folder (every ``*.txt`` below it,
sorted), a Parquet file with a ``text`` column (``file.parquet:column`` for another
column), or ``hf:<dataset>[:<config>]`` (its train split's ``text`` column) via HF ``datasets``
(online only, optional dependency).

Split: the text's last ``val_frac`` of characters, cut at a line boundary, is the
validation split; the tokenizer is trained on the training split only. The fixed val
set is the first ``eval_sequences`` non-overlapping ``block_size`` windows of the val
tokens (wrapping around if the split is short).

Tokenizer: a ByteLevel BPE (``tokenizers``) cached as
``<cache>/tokenizers/<sha256(train text)[:16]>-v<vocab>.json``; the cache is
``LMConfig.tokenizer_dir``, else ``$STABILITYBENCH_CACHE``, else
``~/.cache/stabilitybench``. Its SHA-256 (of the JSON file) goes into the manifest.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stabilitybench.data_schema.io import atomic_path
from stabilitybench.generate.errors import CorpusError


def _pydoc_topics() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


#: name -> loader of a built-in corpus (text shipped by an installed package).
BUILTIN_CORPORA: dict[str, Any] = {"pydoc-topics": _pydoc_topics}

MIN_CHARS = 1000  # a corpus shorter than this cannot give a train and a val split


def load_text(corpus: str, env: str = "") -> str:
    """The raw text of a corpus (``corpus`` empty: the built-in corpus named ``env``).

    Raises :class:`CorpusError` with a one-line message if it is missing, empty or unreadable.
    """
    if not corpus:
        if env not in BUILTIN_CORPORA:
            raise CorpusError(f"unknown built-in corpus {env!r} (available: {', '.join(BUILTIN_CORPORA)})")
        text = BUILTIN_CORPORA[env]()
    elif corpus.startswith("hf:"):
        text = _load_hf(corpus[3:])
    else:
        text = _load_local(corpus)
    if len(text.strip()) < MIN_CHARS:
        raise CorpusError(f"corpus {corpus or env!r} is empty or too short ({len(text.strip())} characters, "
                          f"need >= {MIN_CHARS})")
    return text


def _load_local(corpus: str) -> str:
    column = "text"
    spec = corpus
    if ".parquet:" in corpus:
        spec, column = corpus.rsplit(":", 1)
    path = Path(spec).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus {corpus!r}: no such file or folder")
    try:
        if path.is_dir():
            files = sorted(path.rglob("*.txt"))
            if not files:
                raise CorpusError(f"corpus {corpus!r}: folder has no *.txt files")
            return "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if column not in table.column_names:
                raise CorpusError(f"corpus {corpus!r}: no column {column!r} (columns: {', '.join(table.column_names)})")
            return "\n\n".join(str(t) for t in table.column(column).to_pylist() if t)
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CorpusError(f"corpus {corpus!r}: cannot read ({exc.strerror or exc})") from None


def _load_hf(name: str) -> str:  # pragma: no cover - needs the network and the datasets package
    """``hf:<dataset>[:<config>]``: the ``text`` column of the dataset's train split."""
    try:
        import datasets
    except ImportError:
        raise CorpusError(f"corpus 'hf:{name}' needs the 'datasets' package (pip install datasets)") from None
    dataset, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(dataset, config or None, split="train")
    except Exception as exc:
        reason = f"cannot load ({type(exc).__name__}); HF names need the network"
        raise CorpusError(f"corpus 'hf:{name}': {reason}") from None
    return "\n".join(t for t in ds["text"] if t)


def split_text(text: str, val_frac: float) -> tuple[str, str]:
    """(train, val): the last ``val_frac`` of the characters, from the next line start, is val."""
    cut = int(len(text) * (1.0 - val_frac))
    newline = text.find("\n", cut)
    cut = newline + 1 if 0 <= newline < len(text) - 1 else cut
    return text[:cut], text[cut:]


# ---------------------------------------------------------------------------- tokenizer
def cache_dir(configured: str = "") -> Path:
    """Where tokenizers are cached (see the module docstring)."""
    root = configured or os.environ.get("STABILITYBENCH_CACHE") or Path.home() / ".cache" / "stabilitybench"
    return Path(root).expanduser()


def tokenizer_for(train_text: str, vocab_size: int, directory: str = "") -> tuple[Any, str]:
    """Train (or load from the cache) a ByteLevel BPE on ``train_text``; return it and its SHA-256.

    The cache key is the SHA-256 of the training text and the vocabulary size; the
    file is written atomically, so concurrent runs of the same corpus are safe.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    key = hashlib.sha256(train_text.encode()).hexdigest()[:16]
    path = cache_dir(directory) / "tokenizers" / f"{key}-v{vocab_size}.json"
    if not path.is_file():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=["<|endoftext|>"], show_progress=False)
        tok.train_from_iterator(_chunks(train_text), trainer=trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tok.save(str(tmp))
    data = path.read_bytes()
    return Tokenizer.from_str(data.decode()), hashlib.sha256(data).hexdigest()


def _chunks(text: str, size: int = 1 << 16) -> Any:
    for i in range(0, len(text), size):
        yield text[i : i + size]


# ------------------------------------------------------------------------------ tokens
@dataclass(frozen=True)
class TokenData:
    """Token ids of the two splits (1-D int64 tensors) and the tokenizer's identity."""

    train: Any  # torch.Tensor, shape (N_train,)
    val: Any  # torch.Tensor, shape (N_val,)
    n_vocab: int  # the tokenizer's actual vocabulary size (<= config vocab_size)
    tokenizer: Any
    tokenizer_hash: str
    corpus_chars: int


def load_tokens(corpus: str, env: str, vocab_size: int, val_frac: float, block_size: int,
                tokenizer_dir: str = "") -> TokenData:
    """Load, split, tokenize. Raises :class:`CorpusError` if a split is shorter than one sequence."""
    import torch

    text = load_text(corpus, env)
    train_text, val_text = split_text(text, val_frac)
    tok, digest = tokenizer_for(train_text, vocab_size, tokenizer_dir)
    ids = [torch.from_numpy(encode(tok, t)) for t in (train_text, val_text)]
    for name, t in zip(("train", "val"), ids, strict=True):
        if t.numel() <= block_size + 1:
            raise CorpusError(f"corpus {corpus or env!r}: {name} split has {t.numel()} tokens, "
                              f"need > {block_size + 1}")
    return TokenData(ids[0], ids[1], tok.get_vocab_size(), tok, digest, len(text))


def encode(tok: Any, text: str, chunk: int = 1 << 20) -> Any:
    """Token ids of ``text`` (int64 array, shape ``(N,)``), encoded in ~1 MB pieces cut after a newline
    (``encode_batch`` runs them in parallel and bounds memory on large corpora)."""
    import numpy as np

    pieces, start = [], 0
    while start < len(text):
        end = text.find("\n", start + chunk)
        end = len(text) if end < 0 else end + 1
        pieces.append(text[start:end])
        start = end
    encoded = tok.encode_batch(pieces) if len(pieces) > 1 else [tok.encode(p) for p in pieces]
    return np.concatenate([np.asarray(e.ids, dtype=np.int64) for e in encoded]) if encoded else np.zeros(0, np.int64)


def random_batch(data: Any, batch: int, block_size: int, generator: Any) -> tuple[Any, Any]:
    """nanoGPT sampling: ``batch`` windows at seeded random offsets. Returns (inputs, targets), each (B, T)."""
    import torch

    starts = torch.randint(0, data.numel() - block_size - 1, (batch,), generator=generator)
    rows = torch.stack([data[s : s + block_size + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


def fixed_batches(data: Any, n_sequences: int, block_size: int, micro_batch: int) -> list[tuple[Any, Any]]:
    """The fixed val set: the first ``n_sequences`` non-overlapping windows, in (inputs, targets) microbatches."""
    import torch

    n_windows = max(1, (data.numel() - 1) // block_size)
    rows = [data[(i % n_windows) * block_size : (i % n_windows) * block_size + block_size + 1]
            for i in range(n_sequences)]
    stacked = torch.stack(rows)
    return [(stacked[i : i + micro_batch, :-1], stacked[i : i + micro_batch, 1:])
            for i in range(0, n_sequences, micro_batch)]
