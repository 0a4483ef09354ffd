#!/usr/bin/env bash
# Issue 9's benchmark: one `bench --peers` run per paper model on this CPU, untuned default build,
# random weights (CIFAR models at 3% coefficient density, ImageNet ones at 5%), batch 1 and 8, the
# artifact loaded with its defaults and the peers at the same thread count.
# Usage: bash benchmarks/cpu_models.sh [OUT_DIR] [MODEL ...]   (default: benchmarks/cpu, all models)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/cpu}"
shift || true
MODELS=("$@")
[ ${#MODELS[@]} -gt 0 ] || MODELS=(resnet18-random97 resnet56-random97 vgg16-random97 resnet50-random95 alexnet-random95)
PD=".venv/bin/penni-deploy"
mkdir -p "$OUT" out
for name in "${MODELS[@]}"; do
  arch="${name%%-*}"
  model="out/$name.state_dict.pt"
  [ -f "$model" ] || $PD example "$name" --format state_dict -o "$model"
  repeat=100
  case "$arch" in resnet50|alexnet) repeat=30 ;; esac
  echo "== $name ($(date -u +%H:%M:%S))" >&2
  $PD bench "$model" --arch "$arch" --target x86 --peers --batch 1,8 --repeat "$repeat" \
      --json "$OUT/$name.json" --plot "$OUT/$name.png" | tee "$OUT/$name.txt"
done
