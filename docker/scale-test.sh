#!/usr/bin/env bash
# `make scale-test`: docker/compose.scale.yaml with 2 replicas behind HAProxy, loaded, one replica killed
# mid-run (docker/scale_client.py checks what clients and replicas saw), then torn down.
# Usage: CONTAINER=podman|docker IMAGE=captioner:latest docker/scale-test.sh  (the image must be built)
set -euo pipefail
cd "$(dirname "$0")/.."
CONTAINER=${CONTAINER:-docker}
IMAGE=${IMAGE:-captioner:latest}
HAPROXY_IMAGE=${HAPROXY_IMAGE:-docker.io/library/haproxy:2.6}
PYTHON=${PYTHON:-python3}
if [ -z "${COMPOSE:-}" ]; then
  if [ "$CONTAINER" = podman ]; then COMPOSE=podman-compose; else COMPOSE="docker compose"; fi
fi
free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export IMAGE HAPROXY_IMAGE SCALE_PREFIX=captioner-scale-$$ BALANCER_PORT=$(free_port) BALANCER_STATS_PORT=$(free_port)
# Each replica gets half the cores here (both run on this machine); on real hosts leave it 0 (= all).
export CAPTIONER_TORCH_THREADS=${CAPTIONER_TORCH_THREADS:-$(( ($(nproc) + 1) / 2 ))}
PROJECT=$SCALE_PREFIX
compose() { $COMPOSE -p "$PROJECT" -f docker/compose.scale.yaml "$@"; }

# No registry (this project's sandbox): build the stand-in for the official HAProxy image once.
if ! $CONTAINER image inspect "$HAPROXY_IMAGE" >/dev/null 2>&1 && ! $CONTAINER pull -q "$HAPROXY_IMAGE" >/dev/null 2>&1; then
  echo "no $HAPROXY_IMAGE and no registry: building docker/offline/haproxy.Containerfile as that tag"
  $CONTAINER build ${CONTAINER_BUILD_FLAGS:-} -f docker/offline/haproxy.Containerfile -t "$HAPROXY_IMAGE" docker/offline
fi

cleanup() { compose down -t 5 >/dev/null 2>&1 || true; }
trap cleanup EXIT
start=$(date +%s)
compose up -d >/dev/null
"$PYTHON" docker/scale_client.py --url "http://127.0.0.1:$BALANCER_PORT" --stats "http://127.0.0.1:$BALANCER_STATS_PORT/stats" \
  --metrics-cmd "$CONTAINER exec $SCALE_PREFIX-{n} python -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/metrics').read().decode())\"" \
  --kill-cmd "$CONTAINER kill $SCALE_PREFIX-2" || { compose logs --tail 20 >&2 || true; exit 1; }
# Slow clients against the balancer (tests/abuse.py): HAProxy and the surviving replica's nginx hold them off.
"$PYTHON" -m tests.abuse --url "http://127.0.0.1:$BALANCER_PORT" --slow 64 --deadline 15 \
  || { compose logs --tail 20 >&2 || true; exit 1; }
echo "scale test took $(( $(date +%s) - start )) s"
