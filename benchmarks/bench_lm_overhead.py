"""Telemetry overhead of the GPT-2 generator on CPU: the same loop with and without telemetry.

Both arms run :func:`stabilitybench.generate.lm.train.train` on the same spec, seed and loaded tokens,
with the same K-microbatch accumulation, clipping and AdamW, one thread, and no val
evaluations (evaluation is measurement work that both arms would share). The telemetry
arm adds the public :class:`~stabilitybench.generate.probe.Probe` (the loop's flat gradient buffer,
microbatch coherence, grad/update/param norms, perturbation hooks), the logit probes
(every ``logit_every`` updates) and the row buffers; the baseline is the plain loop
(``telemetry=False``). Arms alternate so drift in machine load hits both alike; we report
medians of wall and process-CPU time and their ratios.

    python benchmarks/bench_lm_overhead.py --steps 40 --repeats 3
    python benchmarks/bench_lm_overhead.py --steps 20 --hparams '{"model": "small", "device": "cuda"}' --peak-tflops 989

On a GPU it also reports tokens/s and MFU: (6 N + 12 L T C) FLOPs per token (nanoGPT's
estimate, N = parameters, L layers, T block size, C width) x tokens/s / the card's peak
(``--peak-tflops``: dense bf16, e.g. 989 for an H100 SXM).

Writes ``benchmarks/out/lm_overhead.json`` and prints a Markdown row for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def timed(fn) -> tuple[float, float]:
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="optimizer updates per arm")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hparams", default="{}", help="JSON LMConfig overrides (default: the tiny model)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "lm_overhead.json"))
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak, for MFU")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from stabilitybench.generate.lm.config import resolve
    from stabilitybench.generate.lm.data import load_tokens
    from stabilitybench.generate.lm.train import train
    from stabilitybench.generate.spec import RunSpec

    hparams = json.loads(args.hparams)
    cfg = resolve("gpt2", "pydoc-topics", "default", hparams)
    spec = RunSpec(domain="lm", algo="gpt2", env="pydoc-topics", seed=0, total_steps=args.steps * cfg.tokens_per_step,
                   hparams=tuple(hparams.items()))
    data = load_tokens(cfg.corpus, spec.env, cfg.vocab_size, cfg.val_frac, cfg.block_size, cfg.tokenizer_dir)
    train(spec, telemetry=False, evaluate_val=False, data=data)  # warm-up (allocator, kernels)
    plain, tele = [], []
    for _ in range(args.repeats):
        plain.append(timed(lambda: train(spec, telemetry=False, evaluate_val=False, data=data)))
        tele.append(timed(lambda: train(spec, telemetry=True, evaluate_val=False, data=data)))
    med = {name: [statistics.median(x[i] for x in arm) for i in (0, 1)] for name, arm in (("plain", plain),
                                                                                           ("telemetry", tele))}
    tokens = args.steps * cfg.tokens_per_step
    n_params = 12 * cfg.n_layer * cfg.n_embd**2 + (cfg.vocab_size + cfg.block_size) * cfg.n_embd
    flops_per_token = 6 * n_params + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "plain_tokens_per_s": tokens / med["plain"][0], "telemetry_tokens_per_s": tokens / med["telemetry"][0],
        "model": cfg.model, "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "block_size": cfg.block_size,
        "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum, "steps": args.steps, "repeats": args.repeats,
        "torch_threads": 1, "torch": torch.__version__,
        "plain_wall_s": med["plain"][0], "telemetry_wall_s": med["telemetry"][0],
        "plain_cpu_s": med["plain"][1], "telemetry_cpu_s": med["telemetry"][1],
        "wall_ratio": med["telemetry"][0] / med["plain"][0], "cpu_ratio": med["telemetry"][1] / med["plain"][1],
        "all_plain": plain, "all_telemetry": tele,
    }
    if device == "cuda":
        for arm in ("plain", "telemetry"):
            result[f"{arm}_mfu"] = flops_per_token * result[f"{arm}_tokens_per_s"] / (args.peak_tflops * 1e12)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"| gpt2 {cfg.model} | {args.steps} updates x {cfg.tokens_per_step} tokens (K={cfg.grad_accum}) | "
          f"{med['plain'][0]:.2f} s | {med['telemetry'][0]:.2f} s | wall x{result['wall_ratio']:.3f} | "
          f"cpu x{result['cpu_ratio']:.3f} |")


if __name__ == "__main__":
    main()
