#!/usr/bin/env bash
# Set up (if needed), then the main job on the bundled default model: write the example PENNI
# ResNet18 (RANDOM weights, 97% of coefficients zero), compile it for this CPU, run it, and
# compare its speed with PyTorch eager and plain TVM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
PD=.venv/bin/penni-deploy
$PD example resnet18-random97 -o out/resnet18-random97.pt --sample-input out/x.npy
$PD compile out/resnet18-random97.pt --target x86 -o out/resnet18.penni --report
$PD run out/resnet18.penni --input out/x.npy --output out/y.npy
# The bench rebuilds the network from a state_dict so it can also time PyTorch on the dense and
# two-stage forms.
$PD example resnet18-random97 --format state_dict -o out/resnet18-random97.state_dict.pt
$PD bench out/resnet18-random97.state_dict.pt --arch resnet18 --target x86 --batch 1,8 --repeat 50 --json out/bench.json
