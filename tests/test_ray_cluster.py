"""The Ray backend against a real ``ray start --head`` cluster on loopback, driven through the CLI.

The test starts the head node (2 CPUs, token auth with a token of its own) and stops it
with ``ray stop`` afterwards. ``generate --backend ray --address host:port`` runs in a
subprocess, as a user would run it, and its corpus must equal the local pool's.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from corpus_tools import corpus_contents, data_files

from stabilitybench.data_schema import events_path, read_manifest, steps_path
from stabilitybench.generate.matrix import load_profile

RAY = str(Path(sys.executable).with_name("ray"))
SMOKE_IDS = sorted(s.run_id for s in load_profile("smoke"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """(address, environment for drivers) of a fresh head node; stopped at the end of the module.

    The environment carries the Ray Client address too, as ``TEST_RAY_CLIENT``.
    """
    port, client_port = free_port(), free_port()  # ephemeral ports: outside Ray's worker range 10002-19999
    # RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S: the head's client proxy waits this long for the per-client
    # server process it spawns (default 30 s). On a 2-core CI machine running the rest of the suite beside this,
    # that process's start-up (a full `import ray`) took longer once, and Ray Client refused the connection.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S": "180",
           "TEST_RAY_CLIENT": f"ray://127.0.0.1:{client_port}"}
    start = subprocess.run(
        [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
         f"--ray-client-server-port={client_port}",
         "--include-dashboard=false", "--disable-usage-stats", f"--object-store-memory={128 * 1024**2}"],
        env=env, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stdout + start.stderr
    # this head's session folder, resolved now: a later local Ray instance (another test) repoints session_latest
    env["TEST_RAY_SESSION"] = str(Path("/tmp/ray/session_latest").resolve())
    try:
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def client_server_logs(env: dict[str, str], limit: int = 4000) -> str:
    """The tail of the head's Ray Client server logs (where a refused Ray Client connection says why)."""
    logs = sorted((Path(env["TEST_RAY_SESSION"]) / "logs").glob("ray_client_server*"))
    text = "".join(f"\n--- {p.name}\n" + p.read_text(errors="replace")[-limit:] for p in logs)
    return text or "\n(no ray_client_server logs)"


def stamp(path: Path) -> tuple[int, int]:
    """(inode, mtime in ns): changes when a file is rewritten, even with the same bytes."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stabilitybench", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.slow
def test_smoke_on_a_ray_start_cluster_equals_the_local_pool(cluster: tuple[str, dict[str, str]], tmp_path: Path,
                                                            local_smoke: Path) -> None:
    address, env = cluster
    corpus = tmp_path / "corpus"
    res = cli("generate", "--profile", "smoke", "--backend", "ray", "--address", address, "--out", str(corpus),
              env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"Ray cluster at {address}: 1 node(s), 2 CPU(s), 0 GPU(s)" in res.stderr
    assert "ran 4 run(s): 4 ok, 0 failed" in res.stderr
    assert sorted(corpus_contents(corpus)) == SMOKE_IDS
    assert corpus_contents(corpus) == corpus_contents(local_smoke)
    assert data_files(corpus) == data_files(local_smoke)

    status = cli("status", "--corpus", str(corpus), "--profile", "smoke", env=env, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    assert "total: 4 runs, 4 done, 0 failed, 0 missing" in status.stdout


@pytest.mark.slow
def test_a_killed_driver_loses_no_finished_run(cluster: tuple[str, dict[str, str]], tmp_path: Path,
                                               local_smoke: Path) -> None:
    address, env = cluster
    corpus = tmp_path / "corpus"
    args = ["generate", "--profile", "smoke", "--backend", "ray", "--address", address, "--out", str(corpus)]
    driver = subprocess.Popen([sys.executable, "-m", "stabilitybench", *args], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        finished = 0
        while finished == 0 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.2)
            if (corpus / "manifest.parquet").exists():
                finished = read_manifest(corpus).num_rows
        assert driver.poll() is None, "the driver finished before it could be killed"
        assert finished > 0
        driver.send_signal(signal.SIGKILL)  # no cleanup at all: the manifest holds what finished
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    rows_before = read_manifest(corpus).to_pylist()
    done_before = {r["run_id"] for r in rows_before}
    assert 0 < len(done_before) < 4
    kept = {p: stamp(p) for r in rows_before for p in (steps_path(corpus, r), events_path(corpus, r["run_id"]))}

    res = cli(*args, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    # nothing that finished was run again: every run in the manifest is skipped (its files untouched), and so
    # is a run whose files landed after the driver's last manifest write (recovered from its steps-file metadata)
    assert {p: stamp(p) for p in kept} == kept
    done = int(re.search(r"(\d+) already done", res.stderr).group(1))
    recovered = done - len(done_before)
    assert (f"recovered {recovered} finished run(s)" in res.stderr) == (recovered > 0), res.stderr
    assert f"ran {4 - done} run(s): {4 - done} ok" in res.stderr
    assert corpus_contents(corpus) == corpus_contents(local_smoke)
    assert data_files(corpus) == data_files(local_smoke)  # no duplicate or temp files


@pytest.mark.slow
def test_a_local_ray_instance_with_a_relative_out_path(cluster: tuple[str, dict[str, str]], tmp_path: Path,
                                                       local_smoke: Path) -> None:
    """No --address: a Ray instance of its own (not the running cluster), and --out relative to the driver's cwd."""
    res = cli("generate", "--profile", "smoke", "--only", "algo=ppo", "--backend", "ray", "--workers", "1",
              "--out", "corpus", env=cluster[1], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "a local Ray instance: 1 node(s), 1 CPU(s)" in res.stderr  # the running cluster has 2
    runs, reference = corpus_contents(tmp_path / "corpus"), corpus_contents(local_smoke)
    assert len(runs) == 2 and all(runs[run_id] == reference[run_id] for run_id in runs)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["ray-client", "auto"])
def test_other_address_forms(form: str, cluster: tuple[str, dict[str, str]], tmp_path: Path,
                             local_smoke: Path) -> None:
    """``ray://host:port`` (Ray Client) and ``auto`` (the cluster ``ray start`` set up on this machine)."""
    env = cluster[1]
    address = env["TEST_RAY_CLIENT"] if form == "ray-client" else "auto"
    corpus = tmp_path / "corpus"
    res = cli("generate", "--profile", "smoke", "--only", "algo=ppo", "--backend", "ray", "--address", address,
              "--out", str(corpus), env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr + client_server_logs(env)
    assert f"Ray cluster at {address}: 1 node(s), 2 CPU(s)" in res.stderr
    runs, reference = corpus_contents(corpus), corpus_contents(local_smoke)
    assert len(runs) == 2 and all(runs[run_id] == reference[run_id] for run_id in runs)


def test_unreachable_address_is_a_one_line_error(tmp_path: Path) -> None:
    res = cli("generate", "--profile", "smoke", "--backend", "ray", "--address", f"127.0.0.1:{free_port()}",
              "--out", str(tmp_path / "corpus"), env=dict(os.environ), cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot reach the Ray cluster"), res.stderr
    assert not (tmp_path / "corpus").exists()  # nothing created, nothing lost
