"""Fault-injection suite (issue 15): inject a fault, rerun, ``verify --deep``, count what survived.

Runs alone with ``make faults`` (``pytest -m faults``); the default ``make test`` skips it.
The faults, drawn with a fixed seed (:data:`SEED`) on the smoke profile:

* ``kill_driver`` / ``kill_worker``: kill -9 of the driver or of a worker at a random moment;
* ``sigint`` / ``sigterm``: Ctrl-C (to the whole process group) or SIGTERM at a random moment;
* ``flip``: one bit flipped anywhere in a random corpus file (manifest, steps or events);
* ``flip_page``: one bit flipped inside the data pages of a random steps file;
* ``truncate``: a random corpus file cut at a random length;
* ``delete_manifest`` / ``delete_steps`` / ``delete_events``;
* ``two_drivers``: two ``generate`` processes started at once on one corpus;
* ``disk_full``: the corpus on a full tmpfs (skipped where a tmpfs cannot be mounted).

Each trial starts from a copy of one reference corpus (the session's ``local_smoke``), injects one fault,
reruns ``generate`` and then checks with ``verify --deep``
(:func:`stabilitybench.data_schema.verify.verify_corpus`, in-process). *Runs lost*: runs of the profile without
a valid ok row and files; *runs doubled*: a duplicated manifest row or steps file, a worker that
outlived its driver, or a run trained by both of two concurrent drivers; *rows lost*: steps
rows missing against the reference corpus. The closing table must read 0, 0, 0.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from corpus_tools import can_mount_tmpfs, flip_byte, flip_byte_in_page, pids_writing_to, tmpfs, truncate

from stabilitybench.data_schema import MANIFEST, read_manifest, steps_path
from stabilitybench.data_schema.verify import verify_corpus
from stabilitybench.generate.matrix import load_profile
from stabilitybench.generate.worker import LOG_DIR

pytestmark = pytest.mark.faults

SEED = 15
#: fault kind -> how many of it the suite injects
PLAN = {"flip": 10, "flip_page": 4, "truncate": 8, "delete_manifest": 3, "delete_steps": 4, "delete_events": 2,
        "kill_driver": 7, "kill_worker": 5, "sigint": 4, "sigterm": 2, "two_drivers": 3, "disk_full": 2}
SMOKE = load_profile("smoke")


@dataclass
class Outcome:
    kind: str
    survived: bool
    runs_lost: int
    runs_doubled: int
    rows_lost: int
    note: str = ""


RESULTS: list[Outcome] = []


def schedule() -> list[tuple[str, int]]:
    kinds = [k for k, n in PLAN.items() for _ in range(n)]
    rng = np.random.default_rng(SEED)
    rng.shuffle(kinds)
    return [(k, int(s)) for k, s in zip(kinds, rng.integers(0, 2**31, len(kinds)), strict=True)]


def generate(corpus: Path, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "stabilitybench", "generate", "--profile", "smoke", "--out",
                             str(corpus), "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **kw)  # type: ignore[call-overload]


def finish(proc: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


@pytest.fixture(scope="module")
def reference(local_smoke: Path) -> Path:
    """The session's smoke corpus (``generate`` through the CLI, conftest): each trial starts from a copy of it."""
    assert verify_corpus(local_smoke, deep=True).problems == []
    return local_smoke


def data_files(corpus: Path) -> list[Path]:
    return sorted(p for sub in ("steps", "events") for p in (corpus / sub).rglob("*.parquet")
                  if not p.name.startswith("."))


def workers_of(corpus: Path) -> list[int]:
    return [pid for s in SMOKE for pid in pids_writing_to(corpus / LOG_DIR / f"{s.run_id}.out")]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def remove_runs(corpus: Path, rng: np.random.Generator, k: int) -> None:
    """Delete the steps files of ``k`` random runs: the next generate has to train them."""
    rows = read_manifest(corpus).to_pylist()
    for i in rng.choice(len(rows), size=k, replace=False):
        steps_path(corpus, rows[int(i)]).unlink()


def interrupt(corpus: Path, rng: np.random.Generator, how: str) -> tuple[int, str]:
    """Start generate with 1-2 runs to do, hit it at a random moment; returns (orphaned workers, note)."""
    remove_runs(corpus, rng, int(rng.integers(1, 3)))
    proc = generate(corpus)
    delay = float(rng.uniform(0.5, 20.0))
    deadline = time.monotonic() + delay
    seen: set[int] = set()
    while time.monotonic() < deadline and proc.poll() is None:
        seen.update(workers_of(corpus))
        time.sleep(0.05)
    seen.update(workers_of(corpus))
    note = f"after {delay:.1f} s"
    if proc.poll() is not None:
        note += " (it had already finished)"
    elif how == "kill_worker":
        if seen:
            os.kill(sorted(seen)[0], signal.SIGKILL)
        else:
            note += " (no worker yet: nothing killed)"
    elif how == "kill_driver":
        proc.kill()
    elif how == "sigint":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    rc, err = finish(proc)
    if how in ("sigint", "sigterm") and rc != 0:  # 0: it finished before the signal landed
        assert rc == 130, err
        assert re.search(r"^interrupted: \d+ done, \d+ left; rerun to resume$", err, re.M), err
        assert "Traceback" not in err
    time.sleep(1.0)  # the watchdog polls every 0.2 s
    return sum(alive(p) for p in seen), note


def two_drivers(corpus: Path, rng: np.random.Generator) -> tuple[int, str]:
    remove_runs(corpus, rng, 2)
    procs = [generate(corpus), generate(corpus)]
    results = [finish(p) for p in procs]
    ran = sum(int(m.group(1)) for _, err in results for m in re.finditer(r"^ran (\d+) run", err, re.M))
    for rc, err in results:
        assert rc == 0 or (rc == 2 and "in use by" in err), err
    assert any(rc == 0 for rc, _ in results)
    return max(0, ran - 2), f"exit codes {[rc for rc, _ in results]}, {ran} run(s) trained"


def disk_full(corpus: Path, rng: np.random.Generator, base: Path) -> tuple[int, str]:
    remove_runs(corpus, rng, 1)
    filler = corpus.parent / "filler"
    with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 4096)
    rc, err = finish(generate(corpus))
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and "no space left on device" in lines[0], err
    filler.unlink()
    return 0, "stopped with one line"


def check(corpus: Path, reference: Path) -> tuple[int, int, int, str]:
    """(runs lost, runs doubled, rows lost, problems) of a corpus after the rerun."""
    report = verify_corpus(corpus, deep=True)
    rows = read_manifest(corpus).to_pylist()
    ok = {r["run_id"]: r for r in rows if r["status"] == "ok"}
    bad = {p.run_id for p in report.problems}
    lost = sum(1 for s in SMOKE if s.run_id not in ok or s.run_id in bad)
    names = Counter(p.name for p in data_files(corpus) if p.parent.name != "events")
    doubled = sum(n - 1 for n in Counter(r["run_id"] for r in rows).values()) + sum(n - 1 for n in names.values())
    rows_lost = 0
    for ref in read_manifest(reference).to_pylist():
        want = pq.read_table(steps_path(reference, ref), columns=["step"]).column("step").to_pylist()
        path = steps_path(corpus, ref)
        got = pq.read_table(path, columns=["step"]).column("step").to_pylist() if path.exists() else []
        rows_lost += len(set(want) - set(got))
    return lost, doubled, rows_lost, "; ".join(str(p) for p in report.problems[:3])


@pytest.mark.parametrize(("kind", "seed"), schedule(), ids=[f"{i:02d}-{k}" for i, (k, _) in enumerate(schedule())])
def test_fault(kind: str, seed: int, reference: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(seed)
    if kind == "disk_full":
        if not can_mount_tmpfs(tmp_path):
            pytest.skip("cannot mount a tmpfs here")
        mount = tmpfs(tmp_path / "small", "2m")
    else:
        mount = contextlib.nullcontext(tmp_path)
    with mount as root:
        corpus = root / "corpus"
        shutil.copytree(reference, corpus, copy_function=shutil.copy2)
        orphans, note = 0, ""
        files = [corpus / MANIFEST, *data_files(corpus)]
        target = files[int(rng.integers(len(files)))]
        if kind == "flip":
            note = f"{target.relative_to(corpus)} at byte {flip_byte(target, rng)}"
        elif kind == "flip_page":
            steps = [p for p in data_files(corpus) if p.parent.name != "events"]
            target = steps[int(rng.integers(len(steps)))]
            note = f"{target.relative_to(corpus)} at byte {flip_byte_in_page(target)}"
        elif kind == "truncate":
            keep = float(rng.uniform(0.0, 0.99))
            truncate(target, keep)
            note = f"{target.relative_to(corpus)} to {keep:.0%}"
        elif kind == "delete_manifest":
            (corpus / MANIFEST).unlink()
        elif kind in ("delete_steps", "delete_events"):
            sub = kind.removeprefix("delete_")
            victims = [p for p in data_files(corpus) if (p.parent.name == "events") == (sub == "events")]
            target = victims[int(rng.integers(len(victims)))]
            target.unlink()
            note = str(target.relative_to(corpus))
        elif kind in ("kill_driver", "kill_worker", "sigint", "sigterm"):
            orphans, note = interrupt(corpus, rng, kind)
        elif kind == "two_drivers":
            orphans, note = two_drivers(corpus, rng)
        elif kind == "disk_full":
            orphans, note = disk_full(corpus, rng, reference)

        rc, err = finish(generate(corpus))
        lost, doubled, rows_lost, problems = check(corpus, reference)  # verify --deep, in-process
        doubled += orphans
        survived = rc == 0 and not problems and "Traceback" not in err and not (lost or doubled or rows_lost)
        RESULTS.append(Outcome(kind, survived, lost, doubled, rows_lost, note))
    assert survived, (kind, note, rc, err[-2000:], problems, lost, doubled, rows_lost)


def test_zz_closing_table() -> None:
    """The suite's closing table (printed; BENCHMARKS.md "Reliability" quotes it)."""
    by_kind: dict[str, list[Outcome]] = {}
    for r in RESULTS:
        by_kind.setdefault(r.kind, []).append(r)
    lines = ["| fault | injected | survived | runs lost | runs doubled | rows lost |", "|---|---|---|---|---|---|"]
    for kind, rs in [*sorted(by_kind.items()), ("**all**", RESULTS)]:
        lines.append(f"| {kind} | {len(rs)} | {sum(r.survived for r in rs)} | {sum(r.runs_lost for r in rs)} | "
                     f"{sum(r.runs_doubled for r in rs)} | {sum(r.rows_lost for r in rs)} |")
    table = "\n".join(lines)
    out = Path(os.environ.get("FAULTS_TABLE", "faults_table.md"))
    out.write_text(f"seed {SEED}, smoke profile\n\n{table}\n")
    print(f"\nfault-injection suite (seed {SEED}, smoke profile):\n{table}\n", file=sys.__stdout__)
    assert len(RESULTS) >= 50
    assert all(r.survived for r in RESULTS)
    assert sum(r.runs_lost + r.runs_doubled + r.rows_lost for r in RESULTS) == 0
