"""CONTRIBUTING.md's worked examples run as written: a baseline, a figure and a perturbation kind, each added
without touching any other file of the package (registered here in the test's own process, then removed)."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

ROOT = Path(__file__).resolve().parent.parent
TEXT = (ROOT / "CONTRIBUTING.md").read_text()


def _section(heading: str) -> list[str]:
    """The python blocks of the ``## heading`` section, dedented."""
    body = TEXT.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", body, flags=re.S)
    out = []
    for block in blocks:
        lines = block.splitlines()
        indent = min(len(x) - len(x.lstrip()) for x in lines if x.strip())
        out.append("\n".join(x[indent:] for x in lines) + "\n")
    return out


def test_the_baseline_example_scores_offline_and_online_alike() -> None:
    from stabilitybench.analysis import detectors
    from stabilitybench.analysis.early_warning import EarlyWarningConfig
    from stabilitybench.analysis.metastate.base import DetectorSpec, MonitorBase

    cls_code, spec_code = _section("Add a baseline detector")
    ns: dict[str, Any] = {"np": np, "MonitorBase": MonitorBase, "DetectorSpec": DetectorSpec}
    exec(cls_code, ns)
    spec = eval(spec_code.strip().rstrip(","), ns)
    detectors.register(spec)
    try:
        det = detectors.spec_for("mean_abs_z").build(["grad_norm", "loss"], EarlyWarningConfig())
        assert isinstance(det, ns["MeanAbsZ"]) and detectors.detector_label("mean_abs_z") == "mean |z|"
        rng = np.random.default_rng(0)
        train = [rng.normal(size=(40, 2)) for _ in range(3)]
        det.fit(train)
        run = rng.normal(size=(30, 2))
        offline = det.score(run)
        step = det.stepper()
        online = np.array([step(x) for x in run])
        np.testing.assert_allclose(online, offline, rtol=1e-10, atol=1e-12)
    finally:
        del detectors.DETECTORS["mean_abs_z"]


def test_the_figure_example_draws_from_the_runs_table(tmp_path: Path) -> None:
    from stabilitybench.reports.figures.spec import FigureSpec

    (code,) = _section("Add a figure")
    module = types.ModuleType("my_figure")
    exec(code, module.__dict__)
    spec = module.SPEC
    assert isinstance(spec, FigureSpec) and spec.id == "F14" and spec.caption(None)

    class Data:
        def __init__(self, runs: pl.DataFrame | None) -> None:
            self.runs = runs

        def table(self, name: str) -> pl.DataFrame | None:
            return self.runs if name == "runs" else None

    fig, reasons = spec.build(Data(pl.DataFrame({"seed": [0, 1, 2], "final_performance": [1.0, 2.0, 0.5]})))
    assert reasons == [] and len(fig.axes[0].collections[0].get_offsets()) == 3
    _, reasons = spec.build(Data(None))
    assert reasons == ["no runs table"]


def test_the_kind_example_scales_gradients_only_in_its_window() -> None:
    torch = pytest.importorskip("torch")
    from dataclasses import dataclass
    from typing import ClassVar

    from stabilitybench.generate import perturbations
    from stabilitybench.generate.perturbations import Perturbation, UpdateContext

    (code,) = _section("Add a perturbation kind")
    ns: dict[str, Any] = {"dataclass": dataclass, "ClassVar": ClassVar, "Perturbation": Perturbation,
                          "UpdateContext": UpdateContext, "__name__": "contrib_example"}
    sys.modules.setdefault("contrib_example", types.ModuleType("contrib_example"))
    exec(code, ns)
    cls = ns["GradScale"]
    perturbations.REGISTRY["grad_scale"] = cls
    try:
        p = perturbations.build("grad_scale", 3.0, onset_step=2, duration_steps=1)
        assert p.dimension == "optimization" and "grad_scale" in perturbations.definitions()
        w = torch.nn.Parameter(torch.ones(2))
        opt = torch.optim.SGD([w], lr=0.1)
        ctx = UpdateContext(optimizers=[opt], modules={}, initial_state={}, generator=torch.Generator().manual_seed(0))
        for step, want in ((1, 1.0), (2, 3.0), (3, 1.0)):
            w.grad = torch.ones(2)
            p.before_update(step, ctx)
            assert torch.equal(w.grad, torch.full((2,), want))
    finally:
        del perturbations.REGISTRY["grad_scale"]
