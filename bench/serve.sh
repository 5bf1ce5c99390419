#!/usr/bin/env bash
# Predictions per second and latency percentiles of `convnet serve` under 32 concurrent
# clients (wrk, from Debian's package, on the same machine), for LeNet-5 and ResNet-20 runs
# trained briefly on the embedded digits (the speed does not depend on the weights' values).
#   bench/serve.sh [seconds]     (default 10 s per model)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet
bin=target/release/convnet
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
$bin train --quiet --epochs 1 --out "$work/lenet5" >/dev/null
$bin train --quiet --model resnet20 --epochs 1 --out "$work/resnet20" >/dev/null
for model in lenet5 resnet20; do
  $bin serve --model "$work/$model" --port 0 >"$work/$model.log" &
  for _ in $(seq 100); do grep -q http "$work/$model.log" && break; sleep 0.1; done
  url=$(grep -o 'http://[^ ]*' "$work/$model.log")
  curl -s -o "$work/example.png" "${url}api/examples/0"
  for api in /api/predict "/api/predict?activations=1"; do
    echo "== $model, POST $api, 32 clients, ${secs} s"
    IMAGE="$work/example.png" API="$api" wrk -t2 -c32 -d"${secs}s" --latency \
      -s bench/serve_post.lua "$url" | grep -E "Requests/sec|Non-2xx|Socket errors|^ +(50|90|99)%"
  done
  kill %1 && wait %1 2>/dev/null || true
done
