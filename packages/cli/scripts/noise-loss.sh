#!/bin/bash
# The price of activation noise (docs/privacy.md): for each sigma, `simulate` trains 3 rounds (2 edges,
# 4 demo users, 20 steps a turn, wasm engine) with the tabs adding noise of that sigma to h1, then
# `eval` scores the final global adapter on the demo users' held-out SOTU text, without noise.
# Prints one line per sigma; the base model's loss first. Takes about 4 minutes per sigma on 2 cores.
#   bash packages/cli/scripts/noise-loss.sh [SIGMA...]   (default: 0 2 8 32)
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=$(mktemp -d)
cat packages/assets/data/sotu/heldout/*.txt > "$out/heldout.txt"
loss() { node -e 'const j = JSON.parse(require("fs").readFileSync(0, "utf8")); console.log(j.loss.toFixed(3))'; }
echo "base model: held-out loss $(pnpm -s splitllm eval --text "$out/heldout.txt" --json | loss)"
for s in "${@:-0 2 8 32}"; do
  for sigma in $s; do
    pnpm -s splitllm simulate --edges 2 --users 4 --rounds 3 --steps-per-user 20 \
      --data packages/assets/data/sotu/train --seed 1 --noise "$sigma" --engine wasm --out "$out/sim-$sigma" \
      --json > "$out/sim-$sigma.jsonl"
    last=$(tail -1 "$out/sim-$sigma.jsonl" | node -e 'console.log(JSON.parse(require("fs").readFileSync(0,"utf8")).loss.toFixed(3))')
    held=$(pnpm -s splitllm eval --text "$out/heldout.txt" --adapter "$out/sim-$sigma" --json | loss)
    echo "sigma $sigma: training loss of round 3 $last, held-out loss $held"
  done
done
