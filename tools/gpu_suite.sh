#!/usr/bin/env bash
# The GPU suite, in one command, on a bare H100/H200 with that machine's own torch and nvcc and no
# network:  bash tools/gpu_suite.sh OUTDIR
#
# Builds the package in place with the CUDA kernels forced on, then runs: the CUDA tests,
# compute-sanitizer memcheck on small op calls, bench_elbo.py on CUDA (events and graph replays),
# bench_train.py on CUDA (three models, eager and --compile), bench_ensemble.py on CUDA (1, 8 and 32
# CHyVAE members), a short ensemble sweep, and a short CHyVAE and beta-VAE training. Logs and one JSON summary (summary.json: each step's exit status and seconds, the
# device, the versions; rewritten after every step) go into OUTDIR. Each step has its own time limit, about
# twice what it took on the H200 (benchmarks/results/gpu_suite_h200*), and the limits add up to 540 s, so
# the suite fits one 600-second device call (GPU_SUITE_ONLY picks steps for a shorter lease). Exit status: 0 when every step passed, 1 when one failed,
# 2 (with one line) when no GPU is found.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:?usage: tools/gpu_suite.sh OUTDIR}"
PY="${PYTHON:-python3}"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q "GPU"; then
  echo "gpu_suite: no GPU found (nvidia-smi lists none); nothing to run"
  exit 2
fi
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
STEPS="$OUTDIR/steps.tsv"
: >"$STEPS"
SUITE_T0=$(date +%s)

# run_step NAME LIMIT_S COMMAND...: runs COMMAND with a time limit, output to OUTDIR/NAME.log.
# GPU_SUITE_ONLY="build tests_cuda ..." runs only the steps named there (for a short device lease).
run_step() {
  local name="$1" limit="$2"
  shift 2
  if [ -n "${GPU_SUITE_ONLY:-}" ] && ! [[ " $GPU_SUITE_ONLY " == *" $name "* ]]; then
    echo "=== $name: skipped (not in GPU_SUITE_ONLY)" | tee -a "$OUTDIR/suite.log"
    return 0
  fi
  local t0 rc
  t0=$(date +%s%N)
  echo "=== $name (limit ${limit}s): $*" | tee -a "$OUTDIR/suite.log"
  PYTHONUNBUFFERED=1 timeout -k 10 "$limit" "$@" >"$OUTDIR/$name.log" 2>&1
  rc=$?
  local secs
  secs=$(( ($(date +%s%N) - t0) / 1000000 ))
  secs="$((secs / 1000)).$(printf '%03d' $((secs % 1000)))"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$secs" >>"$STEPS"
  tail -n 25 "$OUTDIR/$name.log" | tee -a "$OUTDIR/suite.log"
  echo "=== $name: exit $rc in ${secs}s" | tee -a "$OUTDIR/suite.log"
  "$PY" tools/gpu_summary.py "$OUTDIR" "$SUITE_T0" >/dev/null 2>&1 || true  # where the suite stands, now
  return 0
}

nvidia-smi >"$OUTDIR/nvidia-smi.txt" 2>&1

# 1. Build in place against this machine's torch, CUDA forced (fails rather than building CPU-only).
export CHYVAE_EXT_FORCE_CUDA=1
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
run_step build 120 "$PY" -m pip install --no-build-isolation --no-deps -v -e .
run_step build_info 20 "$PY" -c "import chyvae_ext, torch, json; print(json.dumps(chyvae_ext.build_info())); print(torch.cuda.get_device_name(), torch.cuda.get_device_capability())"

# 2. The CUDA tests, the emulated kernels and the compile/no-sync tests (the latter run on the CPU).
run_step tests_cuda 45 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py

# 3. compute-sanitizer memcheck on small calls of every kernel path.
SANITIZER="$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)"
if [ -n "$SANITIZER" ]; then
  run_step memcheck 25 "$SANITIZER" --tool memcheck --error-exitcode 3 "$PY" tools/cuda_smoke.py
else
  echo "compute-sanitizer not found" >"$OUTDIR/memcheck.log"
  printf 'memcheck\t127\t0\n' >>"$STEPS"
fi

# 4. The regulariser per minibatch on CUDA: events and graph replays.
run_step bench_elbo 40 "$PY" benchmarks/bench_elbo.py --device cuda --batch 64 1024 4096 --dims 10 32 \
  --dtypes float32 --repeats 7 --cuda-variants thread warp unrolled --json "$OUTDIR/bench_elbo_cuda.json"

# 5. Training steps on CUDA: the three models eager (fp32, bf16; fused against reference), then
#    eager against --compile (bf16, CUDA graphs).
run_step bench_train 35 "$PY" benchmarks/bench_train.py --device cuda --repeats 5 \
  --json "$OUTDIR/bench_train_cuda.json"
run_step bench_train_compiled 100 "$PY" benchmarks/bench_train.py --device cuda --repeats 5 --precisions bf16 \
  --compile --compile-only --json "$OUTDIR/bench_train_cuda_compiled.json"

# 6. Ensembles on CUDA: member-steps/s of 1, 8 and 32 CHyVAE members at batch 50 against lone runs
#    (the grouped convolutions the GPU uses), then a short ensemble training of four members.
run_step bench_ensemble 60 "$PY" benchmarks/bench_ensemble.py --device cuda --members 1 8 32 --models chyvae \
  --precisions fp32 bf16 --repeats 3 --json "$OUTDIR/bench_ensemble_cuda.json"
"$PY" - "$OUTDIR/runs/ensemble" <<'EOF_GRID'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1]); root.mkdir(parents=True, exist_ok=True)
(root / "grid.json").write_text(json.dumps({"out": ".", "seeds": [0, 1], "runs": [{"model": "chyvae", "nu": [12, 200]}],
    "common": {"device": "cuda", "steps": 300, "log_every": 100, "eval_every": 300, "metrics": "factor_vae"}}))
EOF_GRID
run_step train_ensemble 40 "$PY" -m chyvae_ext.experiments sweep --grid "$OUTDIR/runs/ensemble/grid.json" --ensemble

# 7. Short trainings on CUDA: CHyVAE and beta-VAE, run directories under OUTDIR/runs.
run_step train_chyvae 30 "$PY" -m chyvae_ext.train --model chyvae --device cuda --steps 400 --log-every 100 \
  --eval-every 400 --metrics factor_vae --out "$OUTDIR/runs/chyvae"
run_step train_betavae 25 "$PY" -m chyvae_ext.train --model betavae --device cuda --steps 400 --log-every 100 \
  --eval-every 400 --metrics none --out "$OUTDIR/runs/betavae"

# Summary: one JSON object with every step's exit status and seconds (written after every step too, so
# that a suite stopped at its lease's limit still brings one back), the versions and the benchmarks' JSON.
"$PY" tools/gpu_summary.py "$OUTDIR" "$SUITE_T0" --final
