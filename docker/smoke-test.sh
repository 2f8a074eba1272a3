#!/usr/bin/env bash
# Build-independent smoke test of a captioner image: start it on a loopback port, wait for /readyz,
# caption a real photo, check a bad input gets 415, hold off slow clients, check it runs as non-root, stop
# it with SIGTERM.
# Fails loudly on any step.  Usage: CONTAINER=docker IMAGE=captioner:latest docker/smoke-test.sh
set -euo pipefail
CONTAINER=${CONTAINER:-docker}
IMAGE=${IMAGE:-captioner:latest}
PORT=${SMOKE_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
NAME=captioner-smoke-$$
PHOTO=${PHOTO:-tests/fixtures/chelsea.jpg}
URL=http://127.0.0.1:$PORT

fail() { echo "SMOKE TEST FAILED: $*" >&2; $CONTAINER logs "$NAME" 2>&1 | tail -30 >&2 || true; exit 1; }
cleanup() { $CONTAINER rm -f "$NAME" >/dev/null 2>&1 || true; }
trap cleanup EXIT

size=$($CONTAINER image inspect "$IMAGE" --format '{{.Size}}')
echo "image $IMAGE: $((size / 1000000)) MB"

start=$(date +%s.%N)
$CONTAINER run -d --name "$NAME" -p "127.0.0.1:$PORT:8000" "$IMAGE" >/dev/null || fail "container did not start"
for _ in $(seq 1 240); do
  if curl -fsS "$URL/readyz" >/dev/null 2>&1; then break; fi
  [ "$($CONTAINER inspect -f '{{.State.Running}}' "$NAME")" = "true" ] || fail "container exited before it was ready"
  if curl -s "$URL/readyz" 2>/dev/null | grep -q 'Error:'; then fail "model failed to load: $(curl -s "$URL/readyz")"; fi
  sleep 0.5
done
curl -fsS "$URL/readyz" >/dev/null || fail "not ready after 120 s"
ready=$(date +%s.%N)
python3 -c "print(f'ready {$ready - $start:.1f} s after start')"

body=$(curl -fsS -F "image=@$PHOTO" "$URL/v1/captions") || fail "captioning a real photo failed"
echo "$body" | python3 -c 'import json,sys; d=json.load(sys.stdin); c=d["captions"][0]["text"]; assert c, d; print("caption:", c)' \
  || fail "unexpected response: $body"

code=$(curl -s -o /tmp/smoke-bad.json -w '%{http_code}' -H 'Content-Type: image/jpeg' --data-binary 'not an image' "$URL/v1/captions")
[ "$code" = 415 ] || fail "bad input got HTTP $code, expected 415"
grep -q '"code"' /tmp/smoke-bad.json || fail "error body is not the JSON error format"
echo "bad input: HTTP $code"

# Slow and abusive clients (tests/abuse.py): 64 connections stalled in their headers and 64 in their bodies
# (a normal request answered within 2 s, the stalled ones closed within 15 s), the other abusive inputs (a
# 4xx or a close each), 1,000 idle keep-alive connections; the container's memory before and after.
rss() { $CONTAINER exec "$NAME" python -c "import glob
print(sum(int(l.split()[1]) for f in glob.glob('/proc/[0-9]*/status') for l in open(f) if l.startswith('VmRSS:')) // 1024)"; }
before=$(rss)
python3 -m tests.abuse --url "$URL" --slow 64 --deadline 15 --abusive --idle 1000 || fail "slow or abusive clients were not contained"
echo "container RSS (all processes): $before MB before the slow clients, $(rss) MB after"

uid=$($CONTAINER exec "$NAME" id -u)
[ "$uid" != 0 ] || fail "container runs as root"
echo "runs as uid $uid"

t0=$(date +%s)
$CONTAINER stop -t 30 "$NAME" >/dev/null || fail "stop failed"
code=$($CONTAINER inspect -f '{{.State.ExitCode}}' "$NAME")
echo "stopped with SIGTERM in $(( $(date +%s) - t0 )) s, exit code $code"
[ "$code" = 0 ] || fail "gunicorn did not exit cleanly on SIGTERM (exit $code)"
echo "SMOKE TEST PASSED"
