"""Overhead of the public ``Probe`` / ``Recorder`` on a small model: a ~9.7k-parameter CNN on 8x8 digits.

A small model is where a per-update cost shows most: the training step itself is cheap, so any fixed
Python or host-sync work of the probe is a large fraction of it. Three arms of the same loop (same seed,
same batches, Adam, batch 64, ``--steps`` updates, one torch thread):

* ``plain``: the loop alone;
* ``probe``: ``Probe(optimizer, Recorder(None))`` (rows buffered in memory, no files);
* ``probe+recorder``: ``with Recorder(corpus, ...)`` + ``Probe``; the timed span includes the
  Recorder's construction (its run_id check reads the manifest) and ``close()`` (the three files).

Arms run interleaved (plain, probe, probe+recorder, plain, ...) for ``--repeats`` repeats. Reported per
arm and clock (wall time, and the thread's CPU time, which other processes on a shared machine disturb
less): the median time of the training loop, the median per-update overhead against ``plain``
(``(arm - plain) / steps`` of each repeat, then the median), the median of the per-repeat ratios, and
for ``probe+recorder`` the median seconds of construction + ``close()`` (the files). Each repeat also
times the probe's hooks directly (:func:`hook_time`): milliseconds per update inside them.

    python benchmarks/bench_small_overhead.py --steps 300 --repeats 7
    python benchmarks/bench_small_overhead.py --code /tmp/head_tree      # an older checkout's code

``--code`` puts another tree's ``generate``/``data_schema`` first on ``sys.path`` (the "before" table).
Writes ``benchmarks/out/small_overhead.json`` and prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def digits_batches(steps: int, batch: int) -> list[tuple[Any, Any]]:
    """``steps`` fixed (x, y) batches of sklearn's 8x8 digits (1,797 images), drawn with a fixed seed."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.long)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(steps):
        idx = torch.from_numpy(rng.integers(0, len(y), batch))
        out.append((x[idx].contiguous(), y[idx].contiguous()))
    return out


def make_cnn() -> Any:
    """Conv(1->16) - pool - Conv(16->32) - pool - Linear(128->35) - Linear(35->10): 9,675 parameters."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128, 35), nn.ReLU(), nn.Linear(35, 10),
    )


def run_arm(arm: str, batches: list[tuple[Any, Any]], corpus: Path, tag: str) -> dict[str, float]:
    """One training run of ``arm``; returns loop seconds, files seconds (probe+recorder) and rows."""
    import torch

    from stabilitybench.generate.probe import Probe
    from stabilitybench.generate.recorder import Recorder

    model = make_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.functional.cross_entropy
    rec = probe = None
    files_s = 0.0
    t_files = time.perf_counter()
    if arm == "probe":
        rec = Recorder(None, "digits-cnn", algo="cnn", env="digits")
    elif arm == "probe+recorder":
        rec = Recorder(corpus, f"digits-cnn-{tag}", algo="cnn", env="digits")
    files_s += time.perf_counter() - t_files
    if rec is not None:
        probe = Probe(opt, rec)
    t0, c0 = time.perf_counter(), time.thread_time()
    for x, y in batches:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
    loop_s, cpu_s = time.perf_counter() - t0, time.thread_time() - c0
    rows = 0
    if probe is not None:
        probe.detach()
        rows = len(rec)
        t_files = time.perf_counter()
        rec.close()
        files_s += time.perf_counter() - t_files
    return {"loop_s": loop_s, "cpu_s": cpu_s, "files_s": files_s, "rows": rows}


def hook_time(batches: list[tuple[Any, Any]]) -> float:
    """Milliseconds per update spent inside the probe's three hooks (gradient capture, pre- and post-step,
    the recorder's row included), measured by wrapping them: the probe's own cost, free of the run-to-run
    variation of the training step that dominates the ratios on a shared machine."""
    from stabilitybench.generate.probe import Probe

    spent = [0.0]
    originals = {name: getattr(Probe, name) for name in ("_capture", "_pre_step", "_post_step")}

    def timed(fn: Any) -> Any:
        def wrapper(self: Any, *args: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(self, *args)
            finally:
                spent[0] += time.perf_counter() - t
        return wrapper

    for name, fn in originals.items():
        setattr(Probe, name, timed(fn))
    try:
        run_arm("probe", batches, Path("."), "hooks")
    finally:
        for name, fn in originals.items():
            setattr(Probe, name, fn)
    return spent[0] / len(batches) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--code", type=Path, default=None, help="a tree whose generate/data_schema to import instead")
    ap.add_argument("--label", default="", help="a name for this table (e.g. 'before', 'after')")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "small_overhead.json")
    args = ap.parse_args()
    sys.path.insert(0, str(args.code.resolve() if args.code else ROOT))

    import torch

    import stabilitybench.generate.probe

    torch.set_num_threads(args.threads)
    n_params = sum(p.numel() for p in make_cnn().parameters())
    batches = digits_batches(args.steps, args.batch)
    arms = ["plain", "probe", "probe+recorder"]
    results: dict[str, list[dict[str, float]]] = {a: [] for a in arms}
    hooks: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        run_arm("probe+recorder", batches[:20], Path(tmp, "warm"), "warm")  # imports, allocator, first hooks
        for rep in range(args.repeats):
            for arm in arms:
                results[arm].append(run_arm(arm, batches, Path(tmp, "corpus"), str(rep)))
            hooks.append(hook_time(batches))
    code_dir = str(Path(stabilitybench.generate.probe.__file__).parent.parent)
    summary: dict[str, Any] = {"label": args.label, "code": code_dir,
                               "steps": args.steps, "batch": args.batch, "repeats": args.repeats,
                               "params": n_params, "threads": args.threads, "arms": {},
                               "hook_ms_per_update": {"median": statistics.median(hooks), "min": min(hooks),
                                                      "all": hooks}}
    for arm in arms:
        entry: dict[str, Any] = {"rows": results[arm][0]["rows"],
                                 "files_s_median": statistics.median(r["files_s"] for r in results[arm])}
        for clock in ("loop_s", "cpu_s"):
            base = [r[clock] for r in results["plain"]]
            times = [r[clock] for r in results[arm]]
            per_update = [(a - p) / args.steps * 1e3 for a, p in zip(times, base, strict=True)]
            ratios = [a / p for a, p in zip(times, base, strict=True)]
            entry[clock] = {"median": statistics.median(times), "all": times,
                            "ms_per_update_median": statistics.median(per_update), "ms_per_update": per_update,
                            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios),
                            "ratio_max": max(ratios)}
        summary["arms"][arm] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"{args.label or 'run'}: {n_params:,}-parameter CNN, {args.steps} updates, batch {args.batch}, "
          f"{args.repeats} interleaved repeats, {args.threads} torch thread(s); code from {summary['code']}")
    print(f"in the probe's hooks: {statistics.median(hooks):.3f} ms/update median, {min(hooks):.3f} min "
          f"({args.repeats} runs)")
    print("| arm | clock | loop s (median) | overhead ms/update (median) | ratio, median [min, max] | files s/run |")
    print("|---|---|---|---|---|---|")
    for arm in arms:
        for clock, name in (("loop_s", "wall"), ("cpu_s", "CPU")):
            c = summary["arms"][arm][clock]
            show = arm == "probe+recorder" and clock == "loop_s"
            files = f"{summary['arms'][arm]['files_s_median']:.3f}" if show else ""
            print(f"| {arm} | {name} | {c['median']:.3f} | {c['ms_per_update_median']:.3f} | "
                  f"{c['ratio_median']:.3f} [{c['ratio_min']:.3f}, {c['ratio_max']:.3f}] | {files} |")


if __name__ == "__main__":
    main()
