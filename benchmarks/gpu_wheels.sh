#!/usr/bin/env bash
# Download, here, the wheels that the lent GPU machine lacks, into .whl/ (ignored by git), so
# that benchmarks/gpu_session.sh can install them there without a network.
#
# The device image has Python 3.12 with torch, torchvision, cupy-cuda13x, h5py, tifffile,
# scikit-image, scikit-learn, pandas, pillow, click, pyyaml, tqdm, matplotlib and pytest (see
# the device tool's KINDS.md); what balnmp needs beyond those is listed below, at the versions
# pinned in constraints.txt. The wheels come to ~54 MB, inside the 64 MiB a call may carry.
set -euo pipefail
cd "$(dirname "$0")/.."
NEED=(cucim-cu13 imagecodecs openslide-python openslide-bin zarr numcodecs donfig
      google-crc32c openpyxl et_xmlfile)
mkdir -p .whl
for name in "${NEED[@]}"; do
    pin=$(grep -i -E "^${name}==" constraints.txt || true)
    if [[ -z "$pin" ]]; then
        echo "gpu_wheels: $name is not pinned in constraints.txt" >&2
        exit 1
    fi
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d .whl "$pin"
done
du -sh .whl
