"""The "Live early warning" guide's examples (docs/guides/live.md) run as written, each on its own.

Each example runs in a fresh namespace and a fresh working directory, so neither can use a name or a file
the other made (issue 30: the old second example needed the first one's ``train``, and the SB3 one an
InvertedPendulum monitor that no shipped profile produces; both now fit their own monitor).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import polars as pl

from stabilitybench.analysis.monitor_file import MonitorFile
from stabilitybench.data_schema import read_manifest, read_table
from stabilitybench.data_schema.corpus import events_path

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs/guides/live.md"


def live_examples() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", GUIDE.read_text(), flags=re.S | re.M)


def _run_alone(code: str, cwd: Path) -> dict:
    cwd.mkdir()
    old = os.getcwd()
    os.chdir(cwd)
    ns: dict = {"__name__": "__docs__"}
    try:
        exec(compile(code, str(GUIDE), "exec"), ns)
    finally:
        os.chdir(old)
    return ns


def test_live_early_warning_examples_each_run_alone(tmp_path: Path) -> None:
    examples = live_examples()
    assert len(examples) == 2
    torch_example, sb3_example = examples
    # neither example names a file it does not make itself (no results/ of an analyze run)
    assert "results/" not in torch_example and "results/" not in sb3_example

    # torch: fit on 4 + calibrate on 4 unperturbed runs, save, load, guard a x100 spike at update 60
    ns = _run_alone(torch_example, tmp_path / "torch")
    guard, steps = ns["guard"], ns["steps"]
    monitor = MonitorFile.load(tmp_path / "torch/monitors/mlp.monitor.npz")
    assert monitor.n_calibration == 4 and monitor.warmup_updates == 20 and monitor.target_fpr == 0.05
    offline = monitor.score_run(steps)
    assert offline.filter(pl.col("alarm"))["step"].to_list() == guard.alarms_
    assert guard.alarms_ and all(a >= 20 for a in guard.alarms_) and any(60 <= a < 80 for a in guard.alarms_)
    assert any(kind == "rollback" for _, kind in guard.actions_)

    # SB3: a monitor fitted on short unperturbed CartPole runs backs off the LR after the spike at update 16
    ns = _run_alone(sb3_example, tmp_path / "sb3")
    guard = ns["guard"]
    assert guard.alarms_ and min(guard.alarms_) >= 16
    assert any(kind == "lr_backoff" for _, kind in guard.actions_)
    corpus = tmp_path / "sb3/corpus"
    (row,) = read_manifest(corpus).to_pylist()
    assert (row["algo"], row["env"], row["status"]) == ("ppo", "CartPole-v1", "ok")
    events = pl.from_arrow(read_table(events_path(corpus, row["run_id"]), "events"))
    assert {"alarm", "lr_backoff", "perturbation_on"} <= set(events["event"].to_list())
