#!/usr/bin/env bash
# Set up (if needed), then the main job: compile the bundled trained PENNI ResNet20 for this CPU,
# run it, and time it; then the paper's headline shape (ResNet18, 97% of coefficients zero, random
# weights), tuned, against PyTorch eager, plain TVM and the peer engines.
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
# 2. ResNet18 with 97%-sparse coefficients (random weights): tuned for this machine (resumable; a
#    second run reuses out/tuning), then benchmarked against every CPU peer that is installed
#    (DeepSparse after `bash scripts/setup_deepsparse.sh`), tuned and untuned, same threads.
$PD tune out/resnet18-random97.state_dict.pt --arch resnet18 --target x86 --db out/tuning --trials 170 --dense-trials 32
$PD bench out/resnet18-random97.state_dict.pt --arch resnet18 --target x86 --tuning-db out/tuning --peers \
    --batch 1,8 --repeat 100 --json out/bench.json --plot out/bench.png
