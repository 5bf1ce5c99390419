#!/usr/bin/env bash
# `convnet serve` under sustained load (issue 41): LeNet-5 trained on the embedded digits,
# one 28×28 PNG test digit POSTed to /api/predict by wrk (Debian's package) on the same
# machine. Prints the batch-1 latency (one connection), then 64 connections for 30 s twice,
# with the server's resident memory after warm-up and after each run, and wrk's errors.
#   bench/serve_load.sh [seconds]     (default 30 s per loaded run)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
bin=${CONVNET:-${CARGO_TARGET_DIR:-target}/release/convnet}
[ -x "$bin" ] || cargo build --release --quiet
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
$bin train --quiet --epochs 1 --out "$work/lenet5" >/dev/null
$bin serve --model "$work/lenet5" --port 0 >"$work/serve.log" &
pid=$!
for _ in $(seq 100); do grep -q http "$work/serve.log" && break; sleep 0.1; done
url=$(grep -o 'http://[^ ]*' "$work/serve.log")
curl -s -o "$work/example.png" "${url}api/examples/0"
rss() { awk '/VmRSS/ {printf "%.1f MB\n", $2 / 1024}' "/proc/$pid/status"; }
lscpu | grep 'Model name'
echo "resident memory at start: $(rss)"
echo "== batch-1 latency: 1 connection, 10 s"
IMAGE="$work/example.png" wrk -t1 -c1 -d10s --latency -s bench/serve_post.lua "$url" \
  | grep -E "Requests/sec|Non-2xx|Socket errors|^ +(50|99)%"
echo "== warm-up: 64 connections, 5 s"
IMAGE="$work/example.png" wrk -t2 -c64 -d5s -s bench/serve_post.lua "$url" >/dev/null
echo "resident memory after warm-up: $(rss)"
for run in 1 2; do
  echo "== run $run: 64 connections, ${secs} s"
  IMAGE="$work/example.png" wrk -t2 -c64 -d"${secs}s" --latency -s bench/serve_post.lua "$url" \
    | grep -E "requests in|Requests/sec|Non-2xx|Socket errors|^ +(50|90|99)%"
  echo "resident memory after run $run: $(rss)"
done
kill -TERM $pid
wait $pid && echo "SIGTERM: exit status 0"
