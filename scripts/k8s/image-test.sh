#!/usr/bin/env bash
# Builds the services' CPU images with podman from a locally made base image (no registry is
# reachable here), runs each one with runc on the host network as a Kubernetes pod would run it
# (uid 10001, read-only root filesystem, /tmp a tmpfs, no capabilities), asks its gRPC health
# service on 127.0.0.1 for SERVING, then stops it with SIGTERM and expects a clean exit.
#
#   scripts/k8s/image-test.sh [service...]     # default: tokenizer model-runner orchestrator
#
# Environment:
#   IMAGE_TEST_TAG        tag of the built images (default: test)
#   IMAGE_TEST_PRUNE=1    remove the built images at the end (by default they stay: with the
#                         layer cache the next build takes seconds); untagged layers older than a
#                         day are always pruned
#   MAAS_BASE_IMAGE       use this base instead of making one (e.g. node:20-bookworm-slim)
#
# Network rule: containers use --network=host only (never podman's bridge network) and every
# server binds 127.0.0.1 on a free port chosen here.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
SERVICES=("$@")
[[ ${#SERVICES[@]} -gt 0 ]] || SERVICES=(tokenizer model-runner orchestrator)
TAG="${IMAGE_TEST_TAG:-test}"
NODE_VERSION="$(node -p process.versions.node)"
BASE_IMAGE="${MAAS_BASE_IMAGE:-localhost/maas-node-base:${NODE_VERSION}-bookworm}"
WORK="$(mktemp -d)"
CONTAINERS=()
cleanup() {
  for name in "${CONTAINERS[@]}"; do podman rm -f -t 0 "$name" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
RUN_FLAGS=(--runtime runc --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 --network=host)

log() { printf '[image-test %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
seconds() { echo $(($(date +%s) - $1)); }

ensure_tools() {
  local missing=()
  for tool in podman buildah runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing podman buildah runc debootstrap (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq podman buildah skopeo runc debootstrap >/dev/null
  fi
}

# A Debian bookworm base with this machine's node and npm at the paths of the official node image
# (/usr/local/bin), made once and kept in podman's image store.
ensure_base() {
  if podman image exists "$BASE_IMAGE"; then
    return
  fi
  [[ "$BASE_IMAGE" == localhost/maas-node-base:* ]] || {
    log "base image $BASE_IMAGE is not in the local store and no registry is reachable"
    exit 1
  }
  local start rootfs npm_dir
  start=$(date +%s)
  rootfs="$(mktemp -d /var/tmp/maas-rootfs.XXXXXX)"
  log "making $BASE_IMAGE with debootstrap (about a minute, once)"
  debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
  npm_dir="$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")"
  mkdir -p "$rootfs/usr/local/bin" "$rootfs/usr/local/lib/node_modules"
  cp "$(readlink -f "$(command -v node)")" "$rootfs/usr/local/bin/node"
  cp -a "$npm_dir" "$rootfs/usr/local/lib/node_modules/npm"
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  # Where egress goes through a TLS-inspecting proxy, npm inside the build needs this machine's CA
  # bundle, as a corporate base image would carry it. Only this local test base gets it.
  local ca_env=() ca_file="${NODE_EXTRA_CA_CERTS:-/etc/ssl/certs/ca-certificates.crt}"
  if [[ -f "$ca_file" ]]; then
    mkdir -p "$rootfs/etc/ssl/certs"
    cp "$ca_file" "$rootfs/etc/ssl/certs/maas-build-ca.crt"
    ca_env=(--change 'ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/maas-build-ca.crt')
  fi
  tar -C "$rootfs" -c . | podman import "${ca_env[@]}" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV NODE_VERSION=$NODE_VERSION" \
    --change 'CMD ["node"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  log "base image ready in $(seconds "$start") s"
}

# One snapshot of the build context for the three builds: files edited meanwhile would otherwise
# invalidate the shared build stage between them. In a git checkout the snapshot holds the files git
# sees (tracked or not ignored), which .dockerignore then narrows.
snapshot_context() {
  CONTEXT="$ROOT"
  if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    CONTEXT="$WORK/context"
    mkdir -p "$CONTEXT"
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard -- \
      package.json package-lock.json .npmrc tsconfig.json tsconfig.base.json .dockerignore services |
      while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done |
      tar --null -T - -cf -) | tar -C "$CONTEXT" -xf -
  fi
}

build_image() {
  local service=$1 start
  start=$(date +%s)
  log "building localhost/maas-$service:$TAG"
  # Host network for npm ci and apt-get during RUN steps; the layer cache is shared by the three builds.
  # VARIANT is passed although it is the default: buildah 1.28 resolves `FROM runtime-${VARIANT}`
  # to a stage only when the argument is given.
  # nice: the builds yield the CPU to test suites running beside this one.
  nice -n 15 podman build --quiet --network=host --runtime runc \
    --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 \
    -f "$CONTEXT/services/Dockerfile" \
    --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "SERVICE=$service" \
    --build-arg VARIANT=cpu \
    -t "localhost/maas-$service:$TAG" "$CONTEXT" >"$WORK/build-$service.log" 2>&1 || {
    log "building $service failed:"
    tail -n 60 "$WORK/build-$service.log" >&2
    return 1
  }
  log "built localhost/maas-$service:$TAG in $(seconds "$start") s ($(podman image inspect --format '{{.Size}}' "localhost/maas-$service:$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
}

free_port() {
  node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"
}

health() {
  node -e "require('@maas/shared/testing').checkHealth(process.argv[1]).then((s)=>console.log(s),()=>console.log('UNREACHABLE'))" "$1"
}

run_image() {
  local service=$1 image="localhost/maas-$service:$TAG" name="maas-image-test-$service-$$"
  local grpc_port metrics_port start status extra=()
  grpc_port=$(free_port)
  metrics_port=$(free_port)
  [[ "$(podman image inspect --format '{{.Config.User}}' "$image")" == 10001:10001 ]] || {
    log "$image does not run as 10001:10001"
    return 1
  }
  if [[ $service == orchestrator ]]; then
    # Downstreams are unreachable here (nothing listens on port 1): the orchestrator still reports
    # SERVING once its catalogue has models, and answers UNAVAILABLE per call.
    extra=(-e AUTH_MODE=disabled -e TOKENIZER_ADDRESS=127.0.0.1:1 -e RUNNER_ADDRESS=127.0.0.1:1)
  fi
  log "running $image on 127.0.0.1:$grpc_port"
  start=$(date +%s)
  podman run -d --name "$name" "${RUN_FLAGS[@]}" \
    --read-only --tmpfs /tmp:rw,size=64m --cap-drop=ALL --security-opt no-new-privileges \
    -e GRPC_HOST=127.0.0.1 -e "GRPC_PORT=$grpc_port" \
    -e METRICS_HOST=127.0.0.1 -e "METRICS_PORT=$metrics_port" \
    -e SHUTDOWN_DRAIN_MS=2000 -e LOG_LEVEL=info "${extra[@]}" \
    "$image" >/dev/null
  CONTAINERS+=("$name")
  status=UNREACHABLE
  for _ in $(seq 1 240); do
    status=$(health "127.0.0.1:$grpc_port")
    [[ $status == SERVING ]] && break
    if [[ "$(podman inspect --format '{{.State.Running}}' "$name")" != true ]]; then
      break
    fi
    sleep 0.5
  done
  if [[ $status != SERVING ]]; then
    log "$service did not report SERVING (last: $status); its log:"
    podman logs "$name" >&2 || true
    return 1
  fi
  log "$service SERVING after $(seconds "$start") s"
  curl_metrics "$metrics_port" || {
    log "$service: no process metrics on 127.0.0.1:$metrics_port/metrics"
    return 1
  }
  # SIGTERM reaches node through tini: the service drains and exits 0 well within the timeout.
  podman stop -t 20 "$name" >/dev/null
  local code
  code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
  if [[ $code != 0 ]]; then
    log "$service exited $code on SIGTERM; its log:"
    podman logs "$name" >&2 || true
    return 1
  fi
  podman rm -f "$name" >/dev/null
  log "$service stopped cleanly on SIGTERM"
}

curl_metrics() {
  node -e "require('@maas/shared/testing').scrapeMetrics(Number(process.argv[1])).then((t)=>process.exit(t.includes('process_cpu_seconds_total')?0:1),()=>process.exit(1))" "$1"
}

main() {
  local start
  start=$(date +%s)
  ensure_tools
  # The health check uses @maas/shared/testing from its compiled output.
  [[ -f services/shared/dist/src/testing.js ]] || npx tsc -b services/shared
  ensure_base
  snapshot_context
  for service in "${SERVICES[@]}"; do build_image "$service"; done
  for service in "${SERVICES[@]}"; do run_image "$service"; done
  if [[ "${IMAGE_TEST_PRUNE:-0}" == 1 ]]; then
    for service in "${SERVICES[@]}"; do podman rmi -f "localhost/maas-$service:$TAG" >/dev/null; done
  fi
  # Every source change leaves the previous build's untagged layers behind (about 2 GB); a day-old
  # one is no longer a useful cache.
  podman image prune -f --filter until=24h >/dev/null 2>&1 || true
  log "ok: ${SERVICES[*]} in $(seconds "$start") s"
}

main
