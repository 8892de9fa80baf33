#!/usr/bin/env bash
# The GPU figures of docs/gpu-benchmark.md in one command, sized for a short GPU lease (docs/gpu-benchmark.md,
# "Running it on a lent GPU", says how to call it, what to carry and how long to allow).
#
#   bash infra/gpu-bench.sh            # on the GPU machine: parts 1, 2 (without compile), 4 and 5
#   bash infra/gpu-bench.sh --smoke    # here, on a CPU: the same script at tiny sizes (a dry run of it)
#
# Environment: OUT (where results go; default ./gpu-bench-out), PARTS (default 1,2,4,5; part 3 needs Ray,
# whose wheel is too large to carry), COMPILE (no | yes | both; default no: compiling SDXL's UNet at three
# batch sizes takes minutes a short lease does not have), LIMIT (seconds for the benchmark; default 290,
# inside a 330 s device call), PYTHON (default python3). Extra arguments go to `latentmill bench gpu`.
# Results in $OUT: gpu-benchmark.md (this repository's doc with the measured section replaced after every
# part, so a run stopped at LIMIT keeps what it finished), profiles.gpu.yaml, log.txt, env.txt.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-bench-out}
PARTS=${PARTS:-1,2,4,5}
COMPILE=${COMPILE:-no}
LIMIT=${LIMIT:-290}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"

# Wheels carried in .whl (diffusers and what it needs beyond the GPU image): installed outside the
# image's own packages, which stay as they are.
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || { echo "gpu-bench: installing .whl/*.whl failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
    "$PYTHON" -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" 2>&1
} >"$OUT/env.txt"
cat "$OUT/env.txt"
if ! "$PYTHON" -c "import diffusers" 2>/dev/null; then
    echo "gpu-bench: diffusers is not importable here; carry its wheels in .whl (docs/gpu-benchmark.md)" >&2
    exit 2
fi

cp docs/gpu-benchmark.md "$OUT/gpu-benchmark.md"
timeout --kill-after=10 "$LIMIT" "$PYTHON" -m jobs.bench.gpu --parts "$PARTS" --compile "$COMPILE" \
    --out "$OUT/gpu-benchmark.md" --profile-out "$OUT/profiles.gpu.yaml" "$@" 2>&1 | tee "$OUT/log.txt"
status=${PIPESTATUS[0]}
if [ "$status" = 124 ] || [ "$status" = 137 ]; then
    echo "gpu-bench: stopped at LIMIT=${LIMIT}s; $OUT/gpu-benchmark.md holds the parts that finished" >&2
fi
exit "$status"
