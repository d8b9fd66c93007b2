#!/bin/sh
# bench/gpu.py on the device machine: the command a `device` run calls (see bench/README.md).
# Arguments: the seconds the run may take (default 480) and, optionally, the parts to run.
# Carried with it: .whl (the MONAI wheel) and .devdata/isbi2012/train (the ISBI slices).
set -e
budget=${1:-480}
shift $(( $# > 0 ? 1 : 0 ))
if ls .whl/monai-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .whl/monai-*.whl
fi
export PYTHONPATH="/tmp/site:$PWD/src" USEG_DATA="$PWD/.devdata" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
if [ $# -gt 0 ]; then
    exec python3 bench/gpu.py --out "$OUT/gpu.json" --budget-s "$budget" --parts "$@"
fi
exec python3 bench/gpu.py --out "$OUT/gpu.json" --budget-s "$budget"
