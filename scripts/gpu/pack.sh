#!/usr/bin/env bash
# Assembles what the GPU check needs on a bare GPU machine (no Node.js, nothing
# downloadable) into one git-ignored folder, well under the 64 MiB a device run
# may carry: this machine's node binary and onnxruntime-node's Linux binding,
# xz-compressed; the check bundled into one file; the Vulkan loader and the
# vendor-neutral GL/EGL libraries as Debian packages. The models travel with
# the repository (services/models/repository is committed).
#
#   bash scripts/gpu/pack.sh            # → .gpu-pack/
#   then, on the GPU machine, from the repository root:
#   bash scripts/gpu/check.sh OUT_DIR   # (device tool: carry [".gpu-pack"])
set -euo pipefail
cd "$(dirname "$0")/../.."
pack=.gpu-pack
rm -rf "$pack"
mkdir -p "$pack/debs"

npx tsc -b services/model-runner
# One file: the check and everything it imports but onnxruntime-node (native, carried beside it).
npx esbuild services/model-runner/dist/bench/gpu-check.js --bundle --minify --platform=node --target=node20 \
  --external:onnxruntime-node --alias:grpc-health-check=./scripts/gpu/bundle-stubs/grpc-health-check.js \
  --outfile="$pack/gpu-check.js" --log-level=warning

xz -T0 -9 -c "$(command -v node)" >"$pack/node.xz"
ort=node_modules/onnxruntime-node
tar -cf - "$ort/package.json" "$ort/dist" "$ort/bin/napi-v6/linux/x64" \
  node_modules/onnxruntime-common/package.json node_modules/onnxruntime-common/dist |
  xz -T0 -9 >"$pack/onnxruntime.tar.xz"

# Debian's packages for the architecture of the GPU machine (amd64), into the pack.
lists=$(mktemp -d)
apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
mkdir -p "$lists/partial"
apt-get "${apt_opts[@]}" update -qq
(cd "$pack/debs" && apt-get "${apt_opts[@]}" download -qq \
  libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 2>/dev/null)
rm -rf "$lists"

cp scripts/gpu/check.sh "$pack/"
du -b -s "$pack" | awk '{ printf "%s: %.1f MiB (limit 64)\n", $2, $1 / 1048576 }'
ls -la "$pack" "$pack/debs"
