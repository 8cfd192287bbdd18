#!/usr/bin/env bash
# The GPU check, in one go on a bare GPU machine, from the repository root with
# .gpu-pack/ beside it (scripts/gpu/pack.sh): unpacks node and onnxruntime-node,
# installs the Vulkan loader, says what the driver offers, then runs the check
# (services/model-runner/bench/gpu-check.ts) writing its figures to OUT_DIR.
#
#   bash scripts/gpu/check.sh OUT_DIR
# Without a GPU (to try the script): GPU_CHECK_ACCELERATOR=cpu bash scripts/gpu/check.sh OUT_DIR
set -euo pipefail
out=${1:?usage: check.sh OUT_DIR}
pack=${GPU_PACK:-.gpu-pack}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

xz -d -c "$pack/node.xz" >"$work/node" && chmod +x "$work/node"
xz -d -c "$pack/onnxruntime.tar.xz" | tar -C "$work" -xf -
cp "$pack/gpu-check.js" "$work/"
"$work/node" --version

if [ "${GPU_CHECK_ACCELERATOR:-webgpu}" != cpu ]; then
  # The loaders go into / (what the driver's Vulkan ICD expects to find); only on the GPU machine.
  for deb in "$pack"/debs/*.deb; do dpkg -x "$deb" /; done
  ldconfig
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  for icd in /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json \
    /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json; do
    if [ -f "$icd" ]; then
      echo "Vulkan ICD: $icd"
      export VK_DRIVER_FILES="$icd"
      break
    fi
  done
  egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  [ -f "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES="$egl"
fi

timeout "${GPU_CHECK_TIMEOUT_S:-420}" "$work/node" "$work/gpu-check.js" "$out" services/models/repository \
  2>&1 | tee "$out/gpu-check.log"
