"""Overhead of the Hugging Face ``Trainer`` adapter: the same Trainer with and without ``HFTrainerCallback``.

The model is the project's ``tiny`` GPT-2 (4 layers x 4 heads x 128, vocab 2048, block 128), trained by a
``transformers.Trainer`` on fixed random token windows with batch 16 x 128 tokens, gradient accumulation
4 (microbatches of 4), clipping at 1.0, AdamW with a linear schedule, no evaluation, no checkpoints, one
torch thread. The instrumented arm adds the callback with a ``Recorder`` that buffers rows (no corpus);
the plain arm is the same Trainer with no callback. Arms alternate (plain, instrumented, plain, ...) and
we report the median of the per-pair wall-time ratios, their range, and the ratio of CPU-time medians.

    python benchmarks/bench_hf_overhead.py --steps 40 --repeats 5

Writes ``benchmarks/out/hf_overhead.json`` and prints a Markdown row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def make_trainer(steps: int, out: str, callback: bool):
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from stabilitybench.generate.adapters.hf import HFTrainerCallback
    from stabilitybench.generate.recorder import Recorder

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=2048, n_positions=128, n_embd=128, n_layer=4, n_head=4, bos_token_id=0,
                     eos_token_id=0, use_cache=False)
    model = GPT2LMHeadModel(cfg)
    gen = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 2048, (16 * steps, 128), generator=gen)]
    args = TrainingArguments(out, max_steps=steps, per_device_train_batch_size=4, gradient_accumulation_steps=4,
                             learning_rate=1e-3, max_grad_norm=1.0, logging_steps=10, report_to="none",
                             save_strategy="no", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
                             seed=0)
    rec = Recorder(None, domain="lm", algo="gpt2", env="random-tokens")
    callbacks = [HFTrainerCallback(rec)] if callback else []
    return Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks), rec


def arm(steps: int, callback: bool) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as out:
        trainer, rec = make_trainer(steps, out, callback)
        w, c = time.perf_counter(), time.process_time()
        trainer.train()
        return time.perf_counter() - w, time.process_time() - c, len(rec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "hf_overhead.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    arm(4, False)
    arm(4, True)  # warm-up: imports, allocator
    wall: dict[str, list[float]] = {"plain": [], "callback": []}
    cpu: dict[str, list[float]] = {"plain": [], "callback": []}
    for i in range(args.repeats):
        for name in ("plain", "callback"):
            w, c, rows = arm(args.steps, name == "callback")
            wall[name].append(w)
            cpu[name].append(c)
            print(f"repeat {i} {name:<8} {w:7.2f} s wall {c:7.2f} s cpu rows={rows}", flush=True)
    pair = [c / p for c, p in zip(wall["callback"], wall["plain"], strict=True)]
    result = {
        "benchmark": "hf_trainer_overhead", "steps": args.steps, "repeats": args.repeats, "wall_seconds": wall,
        "cpu_seconds": cpu, "pair_ratios_wall": pair, "median_pair_ratio_wall": statistics.median(pair),
        "ratio_cpu": statistics.median(cpu["callback"]) / statistics.median(cpu["plain"]),
        "load_average": os.getloadavg(), "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"| tiny GPT-2, Trainer | {args.steps} | {args.repeats} | {statistics.median(pair):.3f} "
          f"[{min(pair):.3f}, {max(pair):.3f}] | {result['ratio_cpu']:.3f} |")


if __name__ == "__main__":
    main()
