"""The README's "Live early warning" examples run as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import polars as pl

from analysis.metastate import KalmanMonitor
from analysis.monitor_file import MonitorFile
from data_schema import read_manifest, read_table
from data_schema.corpus import events_path

ROOT = Path(__file__).resolve().parents[1]


def live_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Live early warning", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_live_early_warning_examples(tmp_path: Path) -> None:
    examples = live_examples()
    assert len(examples) == 3
    # the SB3 example names a monitor analyze would have written for that group: make one with its columns
    rng = np.random.default_rng(0)
    det = KalmanMonitor(n_latent=1, n_iter=5).fit([rng.normal(size=(40, 3)) for _ in range(3)])
    MonitorFile(det, ["grad_norm", "grad_coherence", "param_norm"], 4, warmup_updates=8, threshold=-1e9).save(
        tmp_path / "results/monitors/rl_ppo_InvertedPendulum-v5_default/kalman_fold0.monitor.npz")
    old = os.getcwd()
    os.chdir(tmp_path)
    ns: dict = {"__name__": "__readme__"}
    try:
        for code in examples[:2]:  # fit a monitor, then guard a torch run with it
            exec(compile(code, "README.md", "exec"), ns)
        guard, steps = ns["guard"], ns["steps"]
        exec(compile(examples[2], "README.md", "exec"), ns)  # SB3
    finally:
        os.chdir(old)
    # torch: the x100 spike at update 60 alarms after the warm-up, and the guard acted on it
    monitor = MonitorFile.load(tmp_path / "monitors/mlp.monitor.npz")
    assert monitor.n_calibration == 4 and monitor.warmup_updates == 20 and monitor.target_fpr == 0.05
    offline = monitor.score_run(steps)
    assert offline.filter(pl.col("alarm"))["step"].to_list() == guard.alarms_
    assert guard.alarms_ and all(a >= 20 for a in guard.alarms_) and any(60 <= a < 80 for a in guard.alarms_)
    assert any(kind == "rollback" for _, kind in guard.actions_)
    # SB3: the always-alarming monitor backed off the LR after its warm-up; every action is an events row
    assert ns["guard"].alarms_ and min(ns["guard"].alarms_) >= 8
    corpus = tmp_path / "corpus"
    row = read_manifest(corpus).to_pylist()[0]
    events = pl.from_arrow(read_table(events_path(corpus, row["run_id"]), "events"))
    assert {"alarm", "lr_backoff"} <= set(events["event"].to_list())

