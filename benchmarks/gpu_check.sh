#!/usr/bin/env bash
# The whole GPU check of issue 27 in one call, from the repository root:
#
#   benchmarks/gpu_check.sh                      # on the GPU machine: every stage
#   benchmarks/gpu_check.sh --stage deps,test,bench  # one 10-minute device call (~7 min) ...
#   benchmarks/gpu_check.sh --stage deps,generate    # ... and the next (lm_gpu ~5.4 min, analyze ~0.5)
#   benchmarks/gpu_check.sh --cpu-rehearsal      # here: the same stages, device=cpu and the tiny model
#
# Stages (comma-separated, default all):
#   deps      install what the GPU image lacks (polars, duckdb: any wheel in --wheels DIR when offline; issue 27 used
#             polars 1.31 + duckdb 1.3.2 manylinux wheels, 56 MB, carried onto the machine), and check that
#             torch sees the card (rehearsal: that it runs on the CPU)
#   test      pytest tests/test_lm.py -k cuda (rehearsal: -k "cuda or compile", the CUDA tests skip)
#   bench     benchmarks/bench_lm_overhead.py: plain vs telemetry x torch.compile off/on, alternated, >= 3 repeats,
#             plus one torch-profiler run of the telemetry loop (its top lines: where the overhead goes)
#   generate  stabilitybench generate --profile lm_gpu --workers 1 (rehearsal: the same matrix, tiny model, CPU),
#             timed; then stabilitybench analyze on it and a per-run table
#
# Everything lands in $OUT (the device tool's output folder; default: a new temp folder): gpu_check.md (the tables
# for BENCHMARKS.md), lm_overhead.json, lm_profile.txt, corpus/, results/, logs. Exit status: the first failure.
set -uo pipefail

REHEARSAL=0
STAGES="deps,test,bench,generate"
WHEELS=""
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"  # dense bf16 of an H100/H200 SXM
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu-rehearsal) REHEARSAL=1 ;;
    --stage) STAGES="$2"; shift ;;
    --wheels) WHEELS="$2"; shift ;;
    --peak-tflops) PEAK_TFLOPS="$2"; shift ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT" || exit 2
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the checkout, installed or not
export STABILITYBENCH_CACHE="${STABILITYBENCH_CACHE:-$OUT/cache}"  # the BPE, trained once per check
SB=("$PY" -m stabilitybench)
REPORT="$OUT/gpu_check.md"
STATUS=0
: > "$REPORT"

say() { echo "== $*" | tee -a "$REPORT"; }
has() { $PY -c "import $1" 2>/dev/null; }
want() { [[ ",$STAGES," == *",$1,"* || "$STAGES" == all ]]; }
fail() { echo "FAILED: $*" | tee -a "$REPORT"; [[ $STATUS -ne 0 ]] || STATUS=1; }

if [[ $REHEARSAL -eq 1 ]]; then
  HP='{"model": "tiny", "device": "cpu", "block_size": 64}'
  BENCH_ARGS=(--steps 8 --warmup 2 --repeats 3)
  MODE="CPU rehearsal (device=cpu, tiny model)"
else
  HP='{"model": "small", "device": "cuda"}'  # the real batch shape: 480 x 1,024 tokens in K = 40 microbatches of 12
  BENCH_ARGS=(--steps 5 --warmup 2 --repeats 3)  # ~3 s per eager update of 491,520 tokens
  MODE="GPU"
fi
say "gpu_check: $MODE, stages $STAGES, python $($PY -c 'import sys; print(sys.version.split()[0])'), out $OUT"

# ---------------------------------------------------------------------------------------------------- deps
if want deps; then
  for pkg in "polars>=1.0:polars" "duckdb>=1.0:duckdb"; do  # the project's ranges; issue 27 used 1.31 / 1.3.2
    req="${pkg%%:*}"; mod="${pkg##*:}"
    if has "$mod"; then continue; fi
    say "installing $req"
    if [[ -n "$WHEELS" ]]; then
      $PY -m pip install --quiet --no-index --find-links "$WHEELS" "$req" || fail "pip install $req from $WHEELS"
    else
      $PY -m pip install --quiet "$req" || fail "pip install $req (offline? pass --wheels DIR)"
    fi
  done
  for mod in torch transformers tokenizers pyarrow polars duckdb scipy statsmodels sklearn; do
    has "$mod" || fail "python cannot import $mod"
  done
  $PY - <<'EOF' 2>&1 | tee -a "$REPORT"
import torch
print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
         if torch.cuda.is_available() else ""))
EOF
  if [[ $REHEARSAL -eq 0 ]] && ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    fail "torch sees no CUDA device"; exit 1
  fi
fi

# ---------------------------------------------------------------------------------------------------- test
if want test; then
  K="cuda"; [[ $REHEARSAL -eq 1 ]] && K="cuda or compile"
  say "pytest tests/test_lm.py -k '$K'"
  t0=$(date +%s)
  $PY -m pytest tests/test_lm.py -k "$K" -q -p no:cacheprovider 2>&1 | tail -5 | tee -a "$REPORT"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || fail "pytest -k '$K'"
  say "pytest: $(( $(date +%s) - t0 )) s"
fi

# ---------------------------------------------------------------------------------------------------- bench
if want bench; then
  say "bench_lm_overhead: plain vs telemetry x compile off/on, alternated"
  t0=$(date +%s)
  $PY benchmarks/bench_lm_overhead.py "${BENCH_ARGS[@]}" --compile both --hparams "$HP" --peak-tflops "$PEAK_TFLOPS" \
      --out "$OUT/lm_overhead.json" --profile-out "$OUT/lm_profile.txt" 2>"$OUT/bench.stderr" | tee -a "$REPORT"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || { fail "bench_lm_overhead"; tail -20 "$OUT/bench.stderr"; }
  if [[ -s "$OUT/lm_profile.txt" ]]; then
    say "torch profiler, one telemetry run (top lines)"
    head -n 18 "$OUT/lm_profile.txt" | tee -a "$REPORT"
  fi
  say "bench: $(( $(date +%s) - t0 )) s"
fi

# ---------------------------------------------------------------------------------------------------- generate
if want generate; then
  PROFILE=lm_gpu
  if [[ $REHEARSAL -eq 1 ]]; then  # the lm_gpu matrix with the tiny model on the CPU, 40 updates of 16 x 64 tokens
    PROFILE="$OUT/lm_gpu_rehearsal.toml"
    $PY - "$PROFILE" <<'EOF'
import sys
from importlib.resources import files
text = (files("stabilitybench.generate.profiles") / "lm_gpu.toml").read_text()
old = 'hparams = { model = "small", device = "cuda", batch_size = 48, grad_accum = 4, eval_every = 5, logit_every = 2 }'
new = 'hparams = { model = "tiny", device = "cpu", block_size = 64, eval_every = 5, logit_every = 2 }'
assert old in text, "lm_gpu.toml's hparams line changed: update the rehearsal"
text = text.replace(old, new).replace("total_steps = 1_966_080", "total_steps = 40_960")
open(sys.argv[1], "w").write(text)
EOF
  fi
  say "stabilitybench generate --profile $PROFILE --workers 1"
  t0=$(date +%s.%N)
  "${SB[@]}" generate --profile "$PROFILE" --out "$OUT/corpus" --workers 1 > "$OUT/generate.log" 2>&1 \
      || { fail "generate"; tail -20 "$OUT/generate.log"; }
  gen_s=$(python3 -c "print(round($(date +%s.%N) - $t0, 1))")
  say "generate: $gen_s s wall for the whole profile (budget on one H100/H200: <= 360 s)"
  t0=$(date +%s)
  "${SB[@]}" analyze --corpus "$OUT/corpus" --out "$OUT/results" > "$OUT/analyze.log" 2>&1 \
      && say "analyze: accepted the corpus ($(( $(date +%s) - t0 )) s)" \
      || { fail "analyze"; tail -20 "$OUT/analyze.log"; }
  $PY - "$OUT/corpus" <<'EOF' 2>&1 | tee -a "$REPORT"
import sys
import polars as pl
corpus = sys.argv[1]
runs = pl.read_parquet(f"{corpus}/manifest.parquet")
steps = pl.read_parquet(f"{corpus}/steps/**/*.parquet", hive_partitioning=False)
per = steps.group_by("run_id").agg(
    pl.col("val_loss").drop_nulls().last().alias("final_val"), pl.col("train_loss").max().alias("max_train"),
    pl.col("tokens_per_s").median().alias("tok_s"))
t = runs.join(per, on="run_id", how="left").sort("perturbation", "seed")
print(f"{runs.height} runs, {(runs['status'] == 'ok').sum()} ok")
print("| perturbation | magnitude | seed | status | updates | final val_loss | max train_loss | median tokens/s | s |")
print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
for r in t.iter_rows(named=True):
    f = lambda x, d=3: "-" if x is None else f"{x:,.{d}f}"  # noqa: E731
    print(f"| {r['perturbation']} | {f(r['magnitude'], 2)} | {r['seed']} | {r['status']} | {r['n_updates']} | "
          f"{f(r['final_val'])} | {f(r['max_train'])} | {f(r['tok_s'], 0)} | {f(r['run_wall_time_s'], 1)} |")
if (runs["status"] != "ok").any():
    sys.exit(1)
EOF
  [[ ${PIPESTATUS[0]} -eq 0 ]] || fail "some lm_gpu runs did not finish"
fi

say "gpu_check: $([[ $STATUS -eq 0 ]] && echo passed || echo FAILED); tables in $REPORT"
exit $STATUS
