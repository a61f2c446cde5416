#!/bin/sh
# The lab at full budget on a GPU machine (python3 with a CUDA build of torch, numpy,
# scikit-learn, rich and matplotlib; nothing is installed): every experiment, or the ones
# named, with --device cuda. The full budget has only ever run on a CPU (docs/lab/).
#
# Fashion-MNIST (the article experiment) must travel with the tree. Once, here:
#   echo /.fmnist/ >> .git/info/exclude; mkdir -p .fmnist
#   cp /usr/share/datasets/fashion-mnist/*.gz .fmnist/      # 30 MB
# then name .fmnist in the device tool's carry. Results (figures and JSON) come back as
# one archive, $OUT/lab.tgz, beside the printed table in $OUT/lab.txt.
#
# Run from the repository root: sh benchmarks/gpu_lab.sh [NAME ...]
set -u
out=${OUT:-gpu-lab}
mkdir -p "$out/lab"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export GRADHEALTH_FASHION_MNIST="${GRADHEALTH_FASHION_MNIST:-$PWD/.fmnist}"
python3 -m gradhealth.cli lab "$@" --device cuda --out "$out/lab" 2>&1 | tee "$out/lab.txt"
tar czf "$out/lab.tgz" -C "$out" lab && rm -rf "$out/lab"
