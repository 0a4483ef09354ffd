#!/usr/bin/env bash
# Set up (if needed), then the main job: compile the bundled trained PENNI ResNet20 for this CPU,
# run it, and time it; then the paper's headline shape (ResNet18, 97% of coefficients zero, random
# weights) against PyTorch eager and plain TVM.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p out
PD=.venv/bin/penni-deploy
# 1. The bundled model: PENNI ResNet20 trained by `penni-deploy compress` on CIFAR-10 (JPEG q75 copy).
$PD compile examples/resnet20-penni.pt --target x86 -o out/resnet20.penni --report
$PD example resnet18-random97 --format state_dict -o out/resnet18-random97.state_dict.pt --sample-input out/x.npy
$PD run out/resnet20.penni --input out/x.npy --output out/y.npy
$PD bench examples/resnet20-penni.pt --target x86 --batch 1 --repeat 50 --json out/bench-resnet20.json
# 2. ResNet18 with 97%-sparse coefficients (random weights): rebuilt from a state_dict so the bench
#    can also time PyTorch on the dense and two-stage forms.
$PD bench out/resnet18-random97.state_dict.pt --arch resnet18 --target x86 --batch 1,8 --repeat 50 --json out/bench.json --plot out/bench.png
