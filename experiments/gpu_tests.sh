#!/usr/bin/env bash
# The test suite on a machine with a GPU (the device machines: torch 2.11, Python 3.12, 16 cores),
# where a visible accelerator changes library defaults that a CPU run never exercises (FSDP2's
# default mesh, for one). The tests themselves run on the CPU. Parallel with pytest-xdist when it
# is installed, one thread per worker (8 workers at 16 threads each ran slower than 2 cores here).
# Each failure is printed by name the moment it happens (the summary pytest prints at the end is
# lost when a time limit cuts the run short); the full log goes to GPU_TESTS_DIR (default
# results/gpu_tests), or to $OUT where it is set (the device machines).
#   bash experiments/gpu_tests.sh
#   WORKERS=12 LIMIT_S=240 bash experiments/gpu_tests.sh
set -uo pipefail
cd "$(dirname "$0")/.."
DIR="${OUT:-${GPU_TESTS_DIR:-results/gpu_tests}}"
mkdir -p "$DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
par=(); python -c "import xdist" 2>/dev/null && par=(-n "${WORKERS:-12}")
nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null || echo "no GPU visible"
python -c "import sys, torch, transformers, numpy; print(sys.version.split()[0], torch.__version__, transformers.__version__, numpy.__version__, 'cuda' if torch.cuda.is_available() else 'cpu')"
timeout "${LIMIT_S:-240}" python -m pytest -v -p no:cacheprovider "${par[@]}" -rfE --tb=short 2>&1 \
  | tee "$DIR/pytest.log" | grep -E "FAILED|ERROR|^E |[0-9]+ (passed|failed)"
status=${PIPESTATUS[0]}
echo "pytest exit $status (124: cut off by LIMIT_S=${LIMIT_S:-240}); full log: $DIR/pytest.log"
exit "$status"
