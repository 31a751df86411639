"""The [lm] extra (torch, transformers, tokenizers; no SB3, gymnasium, MuJoCo) generates LM-only profiles (issue 27)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import time
import venv
from pathlib import Path

import pytest

from stabilitybench.data_schema import StabilityBenchError
from stabilitybench.generate import cli as gcli
from stabilitybench.generate.matrix import load_profile, parse_only, select

ROOT = Path(__file__).resolve().parent.parent
RL_STACK = ("stable_baselines3", "gymnasium", "mujoco")


def _hide(monkeypatch: pytest.MonkeyPatch, hidden: tuple[str, ...]) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))


def test_lm_profile_needs_only_the_lm_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, RL_STACK)
    gcli.require_generators(load_profile("lm_quick"))  # no SB3 / gymnasium / mujoco: fine for an LM-only profile
    lm_part = select(load_profile("quick"), parse_only("domain=lm"))
    assert lm_part and {s.domain for s in lm_part} == {"lm"}
    gcli.require_generators(lm_part)  # --only narrows a mixed profile to its LM runs
    with pytest.raises(StabilityBenchError, match=r"generate needs stable_baselines3, gymnasium, mujoco: "
                                                  r"pip install 'stabilitybench\[generate\]'"):
        gcli.require_generators(load_profile("quick"))  # the mixed profile still needs the RL stack


def test_lm_profile_without_transformers_names_the_lm_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, ("transformers",))
    with pytest.raises(StabilityBenchError, match=r"generate needs transformers: pip install 'stabilitybench\[lm\]'"):
        gcli.require_generators(load_profile("lm_quick"))


def test_lm_gpu_profile_loads_here_and_is_refused_without_cuda() -> None:
    import torch

    specs = load_profile("lm_gpu")  # loading needs no GPU
    assert len(specs) == 12 and {s.seed for s in specs} == {0, 1}
    assert {s.perturbation for s in specs} == {"none", "lr_spike", "token_corruption", "weight_noise", "layer_reset",
                                               "label_noise"}
    assert all(dict(s.hparams)["device"] == "cuda" and dict(s.hparams)["model"] == "small" for s in specs)
    gcli.require_generators(specs, local=False)  # a Ray cluster's workers may have the GPUs
    if torch.cuda.is_available():
        gcli.require_generators(specs)
    else:
        with pytest.raises(StabilityBenchError, match=r"12 run\(s\) set hparams.device='cuda' but torch .* sees no "
                                                      r"CUDA device"):
            gcli.require_generators(specs)


@pytest.mark.slow
def test_lm_extra_in_a_fresh_venv_generates_lm_quick(tmp_path: Path) -> None:
    """torch (the local CPU wheel, as the Makefile does) then `pip install .[lm]` into a bare venv; one lm_quick run."""
    t0 = time.perf_counter()
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    py = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["STABILITYBENCH_CACHE"] = str(tmp_path / "cache")  # the BPE is trained afresh, not read from a shared cache
    src = tmp_path / "src"  # a copy: pip builds in the source folder, which must not be the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "corpus", "results", "tests", "notebooks",
                                                             "benchmarks", "build", "site", "*.egg-info",
                                                             "__pycache__"))
    for args in (["torch==2.13.0"], [f"{src}[lm]"]):
        pip = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-compile",
                              "--disable-pip-version-check", *args], env=env, capture_output=True, text=True,
                             timeout=1500)
        assert pip.returncode == 0, pip.stderr[-3000:]
    t_install = time.perf_counter() - t0
    check = subprocess.run([str(py), "-c", "import importlib.util as u; print([m for m in "
                            f"{(*RL_STACK, 'accelerate')!r} if u.find_spec(m)], "
                            "[m for m in ('torch', 'transformers', 'tokenizers') if not u.find_spec(m)])"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert check.stdout.strip() == "[] []", check.stdout + check.stderr  # LM stack only

    sb = str(env_dir / "bin" / "stabilitybench")
    gen = subprocess.run([sb, "generate", "--profile", "lm_quick", "--only", "perturbation=none,seed=0",
                          "--out", "corpus", "--workers", "1"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=1200)
    assert gen.returncode == 0, gen.stderr[-3000:]
    manifest = subprocess.run([str(py), "-c", "import json, pyarrow.parquet as pq; "
                               "t = pq.read_table('corpus/manifest.parquet').to_pylist(); "
                               "print(json.dumps([(r['domain'], r['status'], r['n_updates']) for r in t]))"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert manifest.returncode == 0, manifest.stderr[-2000:]
    rows = json.loads(manifest.stdout)
    assert rows == [["lm", "ok", 250]], rows  # 256k tokens / (16 x 64) = 250 updates, every one recorded
    rl = subprocess.run([sb, "generate", "--profile", "smoke", "--out", "corpus_rl"], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
    assert rl.returncode == 2 and "pip install 'stabilitybench[generate]'" in rl.stderr, rl.stderr[-2000:]
    print(f"lm-only install: pip {t_install:.0f} s, whole test {time.perf_counter() - t0:.0f} s")
