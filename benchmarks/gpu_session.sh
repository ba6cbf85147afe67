#!/usr/bin/env bash
# Everything a lent GPU session should run, in one call of the device tool, writing logs to
# $OUT (a step that overruns its share is cut off; the logs written so far still come back):
#
#   here:   bash benchmarks/gpu_wheels.sh          # once: the wheels the device image lacks
#   device: run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=590)
#
# Then copy the numbers and the card into benchmarks/RESULTS.md. Steps, most important first:
# the CUDA tests (pytest -m gpu), the MIL benchmark (ours vs per-bag loop, 100 epochs including
# the load, the vectorised sweep), extraction (ours vs encoder-only vs naive), the biopsy-cohort
# extraction (issue 18: feed ratio with a light encoder, then resnet50_trunc end-to-end vs
# encoder-only on 40 small slides; target >= 0.9), slide reading (then a tumour-like grid
# decoded by cuCIM on the GPU, and on the CPU through blocks: which feeds better on a GPU
# node). The steps' limits add up to 560 s, inside the call's 590 with the install.
set -u
OUT=${OUT:-/tmp/balnmp-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl > "$OUT/install.log" 2>&1 || { cat "$OUT/install.log"; exit 1; }
export PYTHONPATH="$PWD:/tmp/site"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc in $((SECONDS - t0)) s" | tee -a "$OUT/steps.log"
}

step env 15 bash -c 'nvidia-smi; python3 -c "import torch, cucim, cupy, zarr, openslide;
print(\"torch\", torch.__version__, torch.cuda.get_device_name(0));
print(\"cucim\", cucim.__version__, \"cupy\", cupy.__version__, \"zarr\", zarr.__version__)"'
step gpu_tests 110 python3 -m pytest -q -m gpu -p no:cacheprovider tests
step mil 220 python3 benchmarks/mil.py --scale 1.0 --device cuda --epochs 10 \
    --bags-per-step 8 32 --long-epochs 100 --sweep-epochs 5 --skip memory
step extract 85 python3 benchmarks/extract.py --slides 8 --width 8192 --height 4096 \
    --device cuda --batch-size 256 --rounds 2
step biopsy 60 python3 benchmarks/extract.py --biopsies 40 --encoder resnet50_trunc \
    --patch-size 224 --device cuda --batch-size 256 --rounds 2
step read 30 python3 benchmarks/read.py --size 8192 --patches 1024 --workers 8
step read_grid 20 python3 benchmarks/read.py --size 8192 --patches 1024 --workers 8 \
    --order grid --backends cucim --repeats 3
step read_grid_cpu 20 python3 benchmarks/read.py --size 8192 --patches 1024 --workers 8 \
    --order grid --backends cucim --repeats 3 --decode cpu
tail -n 5 "$OUT"/*.log
