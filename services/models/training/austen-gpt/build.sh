#!/usr/bin/env bash
# Reproduces services/models/repository/austen-gpt (tokenizer.json, model.onnx, config.json) from scratch,
# using Debian packages only:
#
#   bash services/models/training/austen-gpt/build.sh
#
# Steps: install packages -> corpus (rdata.py reads janeaustenr's R data) -> BPE tokenizer (bpe.py) ->
# training (train.py, resumable, ~30 min on 2 cores) -> evaluation + ONNX export (export.py) ->
# checks with @huggingface/tokenizers and onnxruntime-node (verify.mjs, in a scratch npm folder).
# Environment: TRAIN_STEPS (default in train.py), TRAIN_THREADS (2), TOKCHECK_DIR (/tmp/tokcheck),
# SKIP_VERIFY=1 to skip the Node checks.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="$here/.cache"
mkdir -p "$cache"
py=/usr/bin/python3 # Debian's python, which has python3-torch; not the pyenv python3 first on PATH

need=()
for pkg in python3-torch python3-onnx python3-regex r-cran-janeaustenr; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# Debian's torch links the reference BLAS (~4 GFLOP/s). OpenBLAS from Debian's own package, unpacked
# (not installed) and put first on the library path, gives ~70 GFLOP/s on 2 cores.
blas="$cache/openblas/usr/lib/x86_64-linux-gnu/openblas-openmp"
if [ ! -e "$blas/libblas.so.3" ]; then
  (cd "$cache" && rm -f libopenblas0-openmp_*.deb && apt-get download libopenblas0-openmp && dpkg -x libopenblas0-openmp_*.deb openblas)
fi
export LD_LIBRARY_PATH="$blas${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OMP_NUM_THREADS="${TRAIN_THREADS:-2}"
# Sleep instead of spinning at OpenMP barriers: on a shared, busy machine spinning threads made a
# training step 3-5x slower (7-15 CPU-seconds instead of 2).
export OMP_WAIT_POLICY=PASSIVE

cd "$here"
"$py" corpus.py                       # .cache/corpus/{train,heldout}.json
"$py" bpe.py                          # ../../repository/austen-gpt/1/tokenizer.json, .cache/ids.json
mkdir -p "$cache/run"
nice -n 10 "$py" train.py 2>&1 | tee -a "$cache/run/train.log"   # .cache/run/model.pt (resumes from a checkpoint)
nice -n 10 "$py" export.py 2>&1 | tee "$cache/run/export.log"    # model.onnx, config.json, .cache/stats.json

if [ "${SKIP_VERIFY:-0}" != 1 ]; then
  scratch="${TOKCHECK_DIR:-/tmp/tokcheck}"
  if [ ! -d "$scratch/node_modules/@huggingface/tokenizers" ] || [ ! -d "$scratch/node_modules/onnxruntime-node" ]; then
    mkdir -p "$scratch"
    (cd "$scratch" && { [ -f package.json ] || npm init -y >/dev/null; } &&
      ONNXRUNTIME_NODE_INSTALL=skip npm i --no-audit --no-fund @huggingface/tokenizers onnxruntime-node --onnxruntime-node-install=skip)
  fi
  TOKCHECK_DIR="$scratch" node verify.mjs all   # .cache/verify.json
fi
