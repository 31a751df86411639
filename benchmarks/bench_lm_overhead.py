"""Telemetry overhead and speed of the GPT-2 generator: the same loop with and without telemetry, compiled or not.

Every arm runs :func:`stabilitybench.generate.lm.train.train` on the same spec, seed and loaded tokens,
with the same K-microbatch accumulation, clipping and AdamW, one CPU thread, and no val
evaluations (evaluation is measurement work that both arms would share). The telemetry
arm adds the public :class:`~stabilitybench.generate.probe.Probe` (the loop's flat gradient buffer,
microbatch coherence, grad/update/param norms, perturbation hooks), the logit probes
(every ``logit_every`` updates) and the row buffers; the baseline is the plain loop
(``telemetry=False``). ``--compile both`` adds the same two arms with ``hparams.compile = true``.
Arms alternate within each repeat so drift in machine load hits all alike; we report medians of
wall and process-CPU time, their ratios, and the telemetry/plain wall ratio of each repeat (paired).

Timing is steady state: the clock starts after the first ``--warmup`` updates of each run (model
build, torch.compile's compilation, first kernels) and stops after the last, with one device
synchronisation at each end (``train(on_step=...)``); tokens/s counts the timed updates only.

    python benchmarks/bench_lm_overhead.py --steps 40 --repeats 3
    python benchmarks/bench_lm_overhead.py --steps 20 --hparams '{"model": "small", "device": "cuda"}' \\
        --compile both --peak-tflops 989 --profile-out benchmarks/out/lm_profile.txt

On a GPU it also reports MFU: (6 N + 12 L T C) FLOPs per token (nanoGPT's estimate, N = parameters,
L layers, T block size, C width) x tokens/s / the card's peak (``--peak-tflops``: dense bf16, e.g.
989 for an H100/H200 SXM). ``--profile-out``: one extra telemetry run under the torch profiler; its top
operators by self device (CPU: self CPU) time are written there, for where the telemetry's cost goes.
A compiled model is compiled once per process: later runs' fresh models reuse the code (no recompilation),
and the warm-up run before the repeats pays the compilation.

With few ``--steps`` the default ``logit_every`` (about 100 probes per run, at least every update) probes every
update: an upper bound on the logit probes' share of the overhead (a real run probes ~1% of its updates).

Writes ``benchmarks/out/lm_overhead.json`` and prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch


def flops_per_token(cfg: Any) -> float:
    """nanoGPT's training FLOPs per token: 6 N + 12 L T C (N = non-embedding-free parameter estimate)."""
    n_params = 12 * cfg.n_layer * cfg.n_embd**2 + (cfg.vocab_size + cfg.block_size) * cfg.n_embd
    return 6 * n_params + 12 * cfg.n_layer * cfg.block_size * cfg.n_embd


def timed_run(train, spec, data, *, telemetry: bool, warmup: int, cuda: bool) -> tuple[float, float]:
    """Wall and process-CPU seconds of updates ``warmup..end`` of one run (steady state)."""
    mark: dict[str, float] = {}

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def on_step(step: int) -> None:
        if step == warmup - 1:
            sync()
            mark["wall"], mark["cpu"] = time.perf_counter(), time.process_time()

    if warmup == 0:
        mark["wall"], mark["cpu"] = time.perf_counter(), time.process_time()
    train(spec, telemetry=telemetry, evaluate_val=False, data=data, on_step=on_step)
    sync()
    return time.perf_counter() - mark["wall"], time.process_time() - mark["cpu"]


def profile_top(train, spec, data, cuda: bool, rows: int = 25) -> str:
    """The torch profiler's table of one telemetry run, sorted by self device (or CPU) time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        train(spec, telemetry=True, evaluate_val=False, data=data)
        if cuda:
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="optimizer updates per arm (warm-up included)")
    ap.add_argument("--warmup", type=int, default=2, help="updates of each run left out of the clock")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hparams", default="{}", help="JSON LMConfig overrides (default: the tiny model)")
    ap.add_argument("--compile", choices=("off", "on", "both"), default="off",
                    help="torch.compile the model: off, on, or both (four alternated arms)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "out" / "lm_overhead.json"))
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak, for MFU")
    ap.add_argument("--profile-out", default="", help="also profile one telemetry run; write its top lines here")
    args = ap.parse_args()
    if not 0 <= args.warmup < args.steps:
        ap.error("--warmup must be in [0, --steps)")
    torch.set_num_threads(1)

    from stabilitybench.generate.lm.config import resolve
    from stabilitybench.generate.lm.data import load_tokens
    from stabilitybench.generate.lm.train import pick_device, train
    from stabilitybench.generate.spec import RunSpec

    base = json.loads(args.hparams)
    cfg = resolve("gpt2", "pydoc-topics", "default", base)
    cuda = pick_device(cfg.device).type == "cuda"
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]

    def spec_for(compiled: bool) -> RunSpec:
        hp = {**base, "compile": compiled}
        return RunSpec(domain="lm", algo="gpt2", env="pydoc-topics", seed=0,
                       total_steps=args.steps * cfg.tokens_per_step, hparams=tuple(hp.items()))

    data = load_tokens(cfg.corpus, "pydoc-topics", cfg.vocab_size, cfg.val_frac, cfg.block_size, cfg.tokenizer_dir)
    arms = [(c, t) for c in compiles for t in (False, True)]
    for c in compiles:  # warm-up (allocator, kernels, the compile caches)
        train(spec_for(c), telemetry=False, evaluate_val=False, data=data)
    times: dict[tuple[bool, bool], list[tuple[float, float]]] = {arm: [] for arm in arms}
    for _ in range(args.repeats):
        for c, t in arms:
            times[(c, t)].append(timed_run(train, spec_for(c), data, telemetry=t, warmup=args.warmup, cuda=cuda))

    timed_tokens = (args.steps - args.warmup) * cfg.tokens_per_step
    fpt = flops_per_token(cfg)
    rows: list[dict[str, Any]] = []
    for c, t in arms:
        wall = statistics.median(x[0] for x in times[(c, t)])
        cpu = statistics.median(x[1] for x in times[(c, t)])
        row = {"compile": c, "telemetry": t, "wall_s": wall, "cpu_s": cpu, "tokens_per_s": timed_tokens / wall,
               "all_wall_s": [x[0] for x in times[(c, t)]]}
        if cuda:
            row["mfu"] = fpt * row["tokens_per_s"] / (args.peak_tflops * 1e12)
        rows.append(row)
    overhead = {}
    for c in compiles:
        plain, tele = times[(c, False)], times[(c, True)]
        paired = [b[0] / a[0] for a, b in zip(plain, tele, strict=True)]
        overhead["compiled" if c else "eager"] = {
            "wall_ratio_median_of_medians": statistics.median(x[0] for x in tele) / statistics.median(
                x[0] for x in plain),
            "wall_ratio_paired": paired, "wall_ratio_paired_median": statistics.median(paired),
            "cpu_ratio": statistics.median(x[1] for x in tele) / statistics.median(x[1] for x in plain)}
    result = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
        "model": cfg.model, "n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "block_size": cfg.block_size,
        "vocab_size": cfg.vocab_size, "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
        "micro_batch": cfg.micro_batch, "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
        "hparams": base, "torch_threads": 1, "flops_per_token": fpt, "peak_tflops": args.peak_tflops if cuda else None,
        "arms": rows, "overhead": overhead,
    }
    if args.profile_out:
        table = profile_top(train, spec_for(False), data, cuda)  # eager: one op per line, readable
        Path(args.profile_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.profile_out).write_text(table)
        result["profile_out"] = args.profile_out
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))

    print(f"{result['device']}, torch {torch.__version__}, gpt2 {cfg.model}: {args.steps} updates "
          f"({args.warmup} untimed) x {cfg.tokens_per_step:,} tokens (K={cfg.grad_accum} x {cfg.micro_batch} x "
          f"{cfg.block_size}), {args.repeats} alternated repeats, medians")
    print("| compile | telemetry | wall s | tokens/s | MFU | cpu s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
        print(f"| {'on' if r['compile'] else 'off'} | {'on' if r['telemetry'] else 'off'} | {r['wall_s']:.3f} | "
              f"{r['tokens_per_s']:,.0f} | {mfu} | {r['cpu_s']:.3f} |")
    for name, o in overhead.items():
        paired = ", ".join(f"x{x:.3f}" for x in o["wall_ratio_paired"])
        print(f"telemetry overhead ({name}): wall x{o['wall_ratio_paired_median']:.3f} (median of paired repeats: "
              f"{paired}); cpu x{o['cpu_ratio']:.3f}")


if __name__ == "__main__":
    main()
