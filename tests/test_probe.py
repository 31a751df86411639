"""The public Probe: what it measures, and the four traps of the old internal probe, each shown fixed.

Traps (issue 16): (1) per-group LRs overwritten, (2) a chained scheduler compounding a spike,
(3) grad_norm silently becoming post-clipping when one parameter has no gradient, (4) parameters
re-seated into one flat buffer / unbounded coherence memory / a host read per statistic.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from stabilitybench.generate.coherence import RollingCoherence, SignSketch
from stabilitybench.generate.errors import NonFiniteTraining, ProbeAttachedError
from stabilitybench.generate.perturbations import LRSpike, NoPerturbation
from stabilitybench.generate.probe import Probe, ProbeInternals, _WiredProbe, contiguous_view

BASE_LR = 0.05
MAX_NORM = 0.5


def make_probe(perturbation, optimizer_cls=torch.optim.SGD, window=3, **kw):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = optimizer_cls(net.parameters(), lr=BASE_LR)
    rows: list[dict] = []
    probe = Probe(opt, perturbation=perturbation, on_row=lambda step, stats: rows.append({"step": step, **stats}),
                  coherence_window=window, **kw)
    return net, opt, probe, rows


def train_step(net, opt, x, y, loss_scale=1.0, max_norm=MAX_NORM):
    """One SB3-style step: zero_grad, backward, clip by global norm, step. Returns (raw norm, applied grad, ...)."""
    opt.zero_grad()
    loss = loss_scale * ((net(x) - y) ** 2).mean()
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    brute = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))  # brute-force pre-clip norm
    torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm)
    applied = torch.cat([g.reshape(-1) for g in grads]).clone()
    before = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).clone()
    opt.step()
    after = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    return brute, applied, after - before, after


def test_probe_measures_norms_coherence_and_applied_lr() -> None:
    spike = LRSpike(magnitude=10.0, onset_step=3, duration_steps=2)
    net, opt, _probe, rows = make_probe(spike)
    gen = torch.Generator().manual_seed(1)
    applied_grads = []
    for step in range(8):
        x, y = torch.randn(16, 4, generator=gen), torch.randn(16, 2, generator=gen)
        raw, applied, delta, after = train_step(net, opt, x, y, loss_scale=1.0 + 10 * (step % 2))
        applied_grads.append(applied.numpy())
        row = rows[-1]
        assert row["step"] == step
        assert row["grad_norm"] == pytest.approx(raw, rel=1e-5)  # before clipping
        expected_lr = BASE_LR * (10.0 if 3 <= step < 5 else 1.0)
        assert row["lr"] == pytest.approx(expected_lr)
        assert row["perturbation_active"] is (3 <= step < 5)
        # plain SGD: the parameter change is exactly lr * applied gradient: the optimizer used the spiked LR
        assert float(delta.norm()) == pytest.approx(expected_lr * float(applied.norm()), rel=1e-5)
        assert row["update_norm"] == pytest.approx(float(delta.norm()), rel=1e-5)
        assert row["param_norm"] == pytest.approx(float(after.norm()), rel=1e-6)
        if step >= 2:
            window = applied_grads[-3:]
            cos = [a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in itertools.combinations(window, 2)]
            assert row["grad_coherence"] == pytest.approx(float(np.mean(cos)), abs=1e-6)
        else:
            assert row["grad_coherence"] is None
        assert opt.param_groups[0]["lr"] == BASE_LR  # the spike lasts one step() only
    assert any(r["grad_norm"] > MAX_NORM for r in rows), "test should exercise clipping"


# ------------------------------------------------------------------------------ trap 1
def _two_group_model():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 3).double(), torch.nn.Linear(3, 1).double()
    opt = torch.optim.SGD([{"params": a.parameters(), "lr": 1e-2}, {"params": b.parameters(), "lr": 1e-4}])
    return a, b, opt


def test_trap1_per_group_learning_rates_are_kept_under_a_spike() -> None:
    # the trap: a probe that sets one scheduled LR on every group (what the old probe did) loses them
    a, b, opt = _two_group_model()
    for group in opt.param_groups:
        group["lr"] = 1e-3
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 1e-3]

    a, b, opt = _two_group_model()
    Probe(opt, perturbation=LRSpike(10.0, onset_step=1, duration_steps=2), on_row=lambda s, st: None)
    x = torch.randn(8, 3, dtype=torch.float64)
    for step in range(4):
        opt.zero_grad()
        b(a(x)).pow(2).mean().backward()
        grads = [p.grad.clone() for p in (*a.parameters(), *b.parameters())]
        before = [p.detach().clone() for p in (*a.parameters(), *b.parameters())]
        opt.step()
        factor = 10.0 if 1 <= step < 3 else 1.0
        after = [p.detach() for p in (*a.parameters(), *b.parameters())]
        lrs = [1e-2, 1e-2, 1e-4, 1e-4]
        for g, p0, p1, lr in zip(grads, before, after, lrs, strict=True):
            torch.testing.assert_close(p0 - p1, lr * factor * g, rtol=1e-9, atol=1e-15)  # each group its own LR x 10
        assert [g["lr"] for g in opt.param_groups] == [1e-2, 1e-4]


# ------------------------------------------------------------------------------ trap 2
def _spiked_schedule(probe_kind: str) -> list[float]:
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    spike = LRSpike(10.0, onset_step=5, duration_steps=10)
    applied: list[float] = []
    if probe_kind == "probe":
        Probe(opt, perturbation=spike, on_row=lambda s, st: applied.append(st["lr"]))
    for step in range(25):
        if probe_kind == "naive":  # the old probe: scheduled_lr = sched.get_last_lr, written onto the group
            opt.param_groups[0]["lr"] = sched.get_last_lr()[0] * spike.lr_factor(step)
            applied.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        net(torch.ones(1, 2)).sum().backward()
        opt.step()
        sched.step()
    return applied


def test_trap2_a_spike_never_compounds_with_a_chained_scheduler() -> None:
    naive = _spiked_schedule("naive")
    assert max(naive) > 1.0  # the trap: x10 compounds through ExponentialLR's chained form (1e-3 -> > 1)
    got = _spiked_schedule("probe")
    for step, lr in enumerate(got):
        expected = 1e-3 * 0.9**step * (10.0 if 5 <= step < 15 else 1.0)
        assert lr == pytest.approx(expected, rel=1e-12), step


# ------------------------------------------------------------------------------ trap 3
class WithUnused(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(20, 64)
        self.out = torch.nn.Linear(64, 1)
        self.unused = torch.nn.Parameter(torch.ones(5))  # never in the graph: never gets a gradient

    def forward(self, x):
        return self.out(torch.relu(self.lin(x)))


def test_trap3_an_unused_parameter_leaves_grad_norm_pre_clip() -> None:
    torch.manual_seed(0)
    net = WithUnused()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rows: list[dict] = []
    probe = Probe(opt, on_row=lambda s, st: rows.append(st))
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        x, y = torch.randn(32, 20, generator=gen), torch.randn(32, 1, generator=gen)
        brute, *_ = train_step(net, opt, x, y, loss_scale=1e4, max_norm=1.0)
        assert brute > 100
        assert rows[-1]["grad_norm"] == pytest.approx(brute, rel=1e-5)  # not 1.0, the post-clip norm
        assert probe.missing_grads == 1


def test_gradient_accumulation_gives_the_accumulated_pre_clip_norm() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    rows: list[dict] = []
    Probe(opt, on_row=lambda s, st: rows.append(st))
    for _ in range(3):
        opt.zero_grad()
        for _ in range(3):
            (net(torch.randn(8, 4)).pow(2).mean() * 50).backward()
        raw = float(torch.nn.utils.clip_grad_norm_(net.parameters(), 0.1))
        opt.step()
        assert rows[-1]["grad_norm"] == pytest.approx(raw, rel=1e-5)


# ------------------------------------------------------------------------------ trap 4
def test_trap4_parameters_are_not_reseated_and_training_is_unchanged() -> None:
    def run(with_probe: bool):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
        ptrs = [p.data_ptr() for p in net.parameters()]
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        if with_probe:
            Probe(opt, on_row=lambda s, st: None)
        gen = torch.Generator().manual_seed(1)
        for _ in range(30):
            x, y = torch.randn(16, 20, generator=gen), torch.randn(16, 1, generator=gen)
            train_step(net, opt, x, y)
        assert [p.data_ptr() for p in net.parameters()] == ptrs  # same storage: nothing re-seated
        return [p.detach().clone() for p in net.parameters()]

    for a, b in zip(run(False), run(True), strict=True):
        assert torch.equal(a, b)  # bit-identical


def test_contiguous_user_layout_is_read_through_one_view_else_foreach() -> None:
    flat = torch.arange(10.0)
    parts = [flat[:4].view(2, 2), flat[4:10]]
    view = contiguous_view(parts)
    assert view is not None and view.data_ptr() == flat.data_ptr() and torch.equal(view, flat)
    assert contiguous_view([torch.zeros(3), torch.zeros(2)]) is None
    assert contiguous_view([flat[4:10], flat[:4]]) is None  # out of order

    params = [torch.nn.Parameter(v) for v in flat.clone().split([4, 6])]
    for p, v in zip(params, (flat[:4], flat[4:]), strict=True):
        p.data = v  # the user's own flat layout
    opt = torch.optim.SGD(params, lr=0.5)
    rows: list[dict] = []
    probe = Probe(opt, on_row=lambda s, st: rows.append(st))
    assert probe._flat is not None
    before = flat.clone()
    (params[0].sum() * 2 + params[1].pow(2).sum()).backward()
    opt.step()
    assert rows[-1]["update_norm"] == pytest.approx(float((flat - before).norm()), rel=1e-6)
    assert rows[-1]["param_norm"] == pytest.approx(float(flat.norm()), rel=1e-6)


@pytest.mark.parametrize("early", [False, True])
def test_one_batched_host_read_per_update(monkeypatch: pytest.MonkeyPatch, early: bool) -> None:
    """The accelerator path (early=False) reads the device once per update; on CPU the norm is also read
    before the step (free there) so a non-finite gradient is never applied."""
    net, opt, probe, rows = make_probe(NoPerturbation(1.0, 0, 0))
    assert probe.read_norm_early  # the default on CPU
    probe.read_norm_early = early
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    train_step(net, opt, x, y)  # learn the gradient order
    calls: list[str] = []
    for name in ("tolist", "item", "__float__", "__bool__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name, **k: (calls.append(_n),
                                                                                           _o(self, *a, **k))[1])
    opt.zero_grad()
    ((net(x) - y) ** 2).mean().backward()
    opt.step()
    monkeypatch.undo()
    assert calls == (["item", "tolist"] if early else ["tolist"])
    assert len(rows) == 2 and rows[-1]["grad_coherence"] is None and rows[-1]["update_norm"] > 0


def test_probe_buffers_live_on_the_parameters_device_and_dtype() -> None:
    net = torch.nn.Linear(4, 3).to(torch.float64)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    probe = _WiredProbe(opt, None, ProbeInternals(exact_max_params=4), on_row=lambda s, st: None, sketch_dim=8)
    net(torch.randn(2, 4, dtype=torch.float64)).sum().backward()
    opt.step()
    assert probe.sketch is not None and probe.sketch.signs.device == next(net.parameters()).device
    assert probe.coherence._buf.dtype == torch.float64 and probe.coherence._buf.shape == (8, 8)


# ------------------------------------------------------------------------------ sketch
def test_sketched_cosines_stay_within_the_stated_epsilon() -> None:
    """Random gradients with a range of true cosines, P = 200k, d = 4096."""
    dim, numel = 4096, 200_000
    sketch = SignSketch(numel, dim, seed=3)
    eps = SignSketch.epsilon(dim)
    assert eps < 0.14
    gen = torch.Generator().manual_seed(0)
    common = torch.randn(numel, generator=gen)
    worst = 0.0
    for shared in (0.0, 0.3, 1.0, 3.0):
        g = [shared * common + torch.randn(numel, generator=gen) for _ in range(6)]
        for a, b in itertools.combinations(g, 2):
            exact = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
            sa, sb = sketch(a), sketch(b)
            approx = float(torch.nn.functional.cosine_similarity(sa, sb, dim=0))
            worst = max(worst, abs(approx - exact))
    assert worst <= eps


def test_probe_uses_the_sketch_above_the_threshold_and_exact_below() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 64))
    params = sum(p.numel() for p in net.parameters())
    rows_exact: list[dict] = []
    rows_sketch: list[dict] = []
    net2 = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 64))
    net2.load_state_dict(net.state_dict())
    opt1, opt2 = torch.optim.SGD(net.parameters(), lr=0.01), torch.optim.SGD(net2.parameters(), lr=0.01)
    exact = Probe(opt1, on_row=lambda s, st: rows_exact.append(st), coherence_window=4)
    sketched = _WiredProbe(opt2, None, ProbeInternals(exact_max_params=params - 1),
                           on_row=lambda s, st: rows_sketch.append(st), coherence_window=4, sketch_dim=4096)
    assert exact.sketch is None and sketched.sketch is not None
    gen = torch.Generator().manual_seed(0)
    for _ in range(12):
        x = torch.randn(32, 64, generator=gen)
        for n, o in ((net, opt1), (net2, opt2)):
            o.zero_grad()
            (n(x) - x).pow(2).mean().backward()
            o.step()
    for a, b in zip(rows_exact[3:], rows_sketch[3:], strict=True):
        assert b["grad_coherence"] == pytest.approx(a["grad_coherence"], abs=SignSketch.epsilon(4096))
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-6)  # the norm is never sketched


def test_rolling_coherence_push_matches_update() -> None:
    rng = np.random.default_rng(0)
    a, b = RollingCoherence(3), RollingCoherence(3)
    for _ in range(7):
        g = torch.from_numpy(rng.normal(size=20) + 0.3)
        value = a.update(g)
        b.push(g, torch.linalg.vector_norm(g))
    assert b.value_from(float(b.sum_sq())) == pytest.approx(value, abs=1e-12)


# ------------------------------------------------------------------------------ misc
def test_nonfinite_gradient_stops_before_the_step_and_is_recorded() -> None:
    net, opt, _probe, rows = make_probe(NoPerturbation(1.0, 0, 1))
    x, y = torch.randn(4, 4), torch.randn(4, 2)
    train_step(net, opt, x, y)
    before = [p.detach().clone() for p in net.parameters()]
    with pytest.raises(NonFiniteTraining) as info:
        train_step(net, opt, x, y, loss_scale=float("nan"))
    assert info.value.step == 1 and info.value.what == "gradient"
    assert len(rows) == 2 and math.isnan(rows[-1]["grad_norm"])
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))  # step not applied


def test_detach_detaches_every_hook() -> None:
    net, opt, probe, rows = make_probe(NoPerturbation(1.0, 0, 1))
    probe.detach()
    train_step(net, opt, torch.randn(4, 4), torch.randn(4, 2))
    assert rows == []


# ------------------------------------------------------------------ composition (issue 30)
def applied_lrs(opt: torch.optim.Optimizer) -> list[float]:
    """Group 0's LR as every update applies it: a pre-step hook registered after the probe's."""
    seen: list[float] = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[0]["lr"]))
    return seen


def test_a_second_probe_on_one_optimizer_is_refused_and_the_lr_stays_the_users() -> None:
    """A re-run notebook cell put a second Probe on the optimizer: with a x10 spike the LR went
    0.01 -> 1 -> 10 -> 100 and stayed at 10 after the window. The second Probe is now refused."""
    net, opt, probe, rows = make_probe(LRSpike(10.0, 2, 3))
    for group in opt.param_groups:
        group["lr"] = 0.01
    with pytest.raises(ProbeAttachedError) as info:
        Probe(opt, perturbation=LRSpike(10.0, 2, 3), on_row=lambda step, stats: None)
    assert "\n" not in str(info.value) and "detach" in str(info.value)
    assert Probe.attached(opt) is probe
    seen = applied_lrs(opt)
    x, y = torch.randn(4, 4), torch.randn(4, 2)
    for _ in range(8):
        train_step(net, opt, x, y)
    assert seen == pytest.approx([0.01, 0.01, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01], rel=1e-12)
    assert opt.param_groups[0]["lr"] == 0.01
    assert [r["lr"] for r in rows] == pytest.approx(seen, rel=1e-12)
    probe.detach()
    assert Probe.attached(opt) is None
    again = Probe(opt, on_row=lambda step, stats: None)  # after detach() another may attach
    assert Probe.attached(opt) is again
    again.detach()


def test_detach_restores_the_lrs_and_hooks_of_an_update_cut_off_inside_step() -> None:
    net, opt, probe, _rows = make_probe(LRSpike(10.0, 0, 5))
    user_lr = opt.param_groups[0]["lr"]
    pre_hooks, post_hooks = dict(opt._optimizer_step_pre_hooks), dict(opt._optimizer_step_post_hooks)
    x, y = torch.randn(4, 4), torch.randn(4, 2)
    train_step(net, opt, x, y)

    def closure() -> torch.Tensor:
        raise RuntimeError("the user's closure failed")

    with pytest.raises(RuntimeError):
        opt.step(closure)  # the probe's pre-step hook multiplied the LR; its post-step hook never ran
    assert opt.param_groups[0]["lr"] == pytest.approx(10 * user_lr)
    seen = applied_lrs(opt)
    train_step(net, opt, x, y)
    assert seen == [pytest.approx(10 * user_lr)]  # the next update does not compound the factor
    probe.detach()
    assert opt.param_groups[0]["lr"] == user_lr
    opt._optimizer_step_pre_hooks.popitem()  # applied_lrs' own hook
    assert dict(opt._optimizer_step_pre_hooks) == {} and dict(opt._optimizer_step_post_hooks) == {}
    assert pre_hooks and post_hooks  # (the probe had hooks to remove)
    assert all(not p._post_accumulate_grad_hooks for p in net.parameters())

    _net, opt, probe, _rows = make_probe(LRSpike(10.0, 0, 5))  # detach() right after a cut-off update
    with pytest.raises(RuntimeError):
        opt.step(closure)
    probe.detach()
    assert opt.param_groups[0]["lr"] == BASE_LR


def test_probe_is_a_context_manager_that_detaches_on_exit() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=BASE_LR)
    rows: list[dict] = []
    x, y = torch.randn(4, 4), torch.randn(4, 2)
    with Probe(opt, perturbation=LRSpike(10.0, 1, 1), on_row=lambda s, st: rows.append(st)) as probe:
        assert Probe.attached(opt) is probe
        for _ in range(3):
            train_step(net, opt, x, y)
    assert len(rows) == 3 and [r["lr"] for r in rows] == pytest.approx([BASE_LR, 10 * BASE_LR, BASE_LR])
    assert Probe.attached(opt) is None and opt.param_groups[0]["lr"] == BASE_LR
    train_step(net, opt, x, y)
    assert len(rows) == 3  # detached
    with pytest.raises(KeyError), Probe(opt, on_row=lambda s, st: rows.append(st)):
        raise KeyError("the loop failed")
    assert Probe.attached(opt) is None  # detached on an exception too
    assert not dict(opt._optimizer_step_pre_hooks) and not dict(opt._optimizer_step_post_hooks)


def test_a_probe_whose_owner_was_lost_still_blocks_until_detached() -> None:
    """The notebook case: the first probe's variable was overwritten, its hooks still fire."""
    _net, opt, probe, _ = make_probe(NoPerturbation(1.0, 0, 0))
    del probe
    import gc

    gc.collect()
    with pytest.raises(ProbeAttachedError):
        Probe(opt, on_row=lambda s, st: None)
    Probe.attached(opt).detach()
    Probe(opt, on_row=lambda s, st: None).detach()


def test_a_probe_whose_run_is_over_gives_way_to_the_next(tmp_path) -> None:
    """A notebook cell that failed inside ``with Recorder(...)`` and is run again: the old run is closed,
    so its probe is detached (its LR restored) instead of refusing the new one."""
    from stabilitybench.generate.recorder import Recorder

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=BASE_LR)
    x, y = torch.randn(4, 4), torch.randn(4, 2)
    with pytest.raises(ZeroDivisionError), Recorder(None, "cell") as rec:
        Probe(opt, rec, perturbation=LRSpike(10.0, 0, 5), on_row=lambda s, st: None)
        train_step(net, opt, x, y)
        raise ZeroDivisionError("the loop failed")
    assert rec.closed and Probe.attached(opt) is not None
    second = Probe(opt, on_row=lambda s, st: None)
    assert Probe.attached(opt) is second and opt.param_groups[0]["lr"] == BASE_LR
    seen = applied_lrs(opt)
    train_step(net, opt, x, y)
    assert seen == [BASE_LR]  # the first probe's spike is gone with it


def test_the_small_model_fast_path_records_what_the_general_path_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU the probe copies into flat rows and reduces once (issue 30, item 8); the per-tensor foreach path
    (accelerators, large models) must give the same row, update after update, with clipping and a spike."""
    import stabilitybench.generate.probe as probe_mod

    def rows_of(fast: bool) -> list[dict]:
        monkeypatch.setattr(probe_mod, "_FLAT_SNAPSHOT_MAX", 1 << 21 if fast else 0)
        net, opt, probe, rows = make_probe(LRSpike(10.0, 4, 3), optimizer_cls=torch.optim.Adam, window=3)
        assert probe._fast is fast and (probe._pair is not None) is fast
        gen = torch.Generator().manual_seed(2)
        for _ in range(12):
            train_step(net, opt, torch.randn(8, 4, generator=gen), torch.randn(8, 2, generator=gen))
        probe.detach()
        return rows

    fast, general = rows_of(True), rows_of(False)
    assert len(fast) == len(general) == 12
    for a, b in zip(fast, general, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if a[key] is None or isinstance(a[key], bool):
                assert a[key] == b[key], key
            else:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    assert sum(r["grad_coherence"] is not None for r in fast) == 12 - 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_numpy_coherence_ring_is_bit_identical_to_the_torch_one(dtype: torch.dtype) -> None:
    """The fast path's ring runs its three elementwise steps in NumPy on views of the same memory (cheaper
    dispatch on a small model); the ring, the running sum and hence grad_coherence equal the torch steps exactly."""
    from stabilitybench.generate.probe import _RowCoherence

    gen = torch.Generator().manual_seed(4)
    rings = []
    for use_numpy in (True, False):
        ring = _RowCoherence(3, torch.zeros(257, dtype=dtype))
        assert ring._np  # float32/float64 take the NumPy steps unless told otherwise
        ring._np = use_numpy
        rings.append(ring)
    grad = torch.empty(257, dtype=dtype)
    for _ in range(7):
        grad.copy_(torch.randn(257, generator=gen, dtype=dtype) * 1e3)
        norm = float(torch.linalg.vector_norm(grad))
        for ring in rings:
            ring.push(grad, norm)
    fast, reference = rings
    assert torch.equal(fast._buf, reference._buf) and torch.equal(fast._sum, reference._sum)
    assert fast._sum.abs().sum() > 0
