#!/usr/bin/env bash
# The GPU device run: the split system on a GPT-2 small-shaped model against PyTorch + PEFT on the
# same card, in one call of a few minutes. See scripts/device/README.md.
#
#   bash scripts/device/run.sh          on the device machine, from the repository root, with the
#                                       .device/ that scripts/device/pack.sh made carried along
#   bash scripts/device/run.sh --dry    here: no nvidia-smi, no GPU sampler, SwiftShader, provider
#                                       cpu, a tiny model, 2 steps (proves unpacking, start, parsing)
#
# Writes into $OUT (default /tmp/splitllm-device-out): run.log, gpu.txt, adapter.json,
# gpumem.csv, torch.json, summary.json, logs.tar.gz. Prints the table last. Every step has a
# time limit inside RUN_BUDGET_S (default 540 s) overall; a failed step prints FAILED, the steps
# that do not need it still run, and the exit status is 1.
#
# Settings (environment): PROVIDER (webgpu; cpu on --dry) for the edges and the cloud, or
# EDGE_PROVIDER / CLOUD_PROVIDER apart; ENGINE (wgsl) for the users; THREADS (4), STEPS_A (10),
# STEPS_B (5), ROUNDS (2), RUN_BUDGET_S (540), SKIP_TORCH=1, SKIP_KERNELS=1,
# BENCH_N (1,2,8: the users per edge of the scheme sweep), ONLY_1E1U=1 (the 1-edge run alone).
# When the 1-edge run fails with the cloud on a GPU provider it runs once more with the cloud on
# cpu (sim 1e1u-cloudcpu), and the 2-edge run then keeps the cloud on cpu.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
DRY=0
[[ ${1:-} == --dry ]] && DRY=1
OUT=${OUT:-/tmp/splitllm-device-out}
BUDGET_S=${RUN_BUDGET_S:-540}
W=/tmp/splitllm-run
D=/tmp/splitllm-device
if [[ $DRY == 1 ]]; then
  PROVIDER=${PROVIDER:-cpu} THREADS=${THREADS:-1} MODEL=$W/tiny-random
  B=2 T=32 ROUNDS_A=2 STEPS_A=2 ROUNDS_B=1 STEPS_B=2 SIM_LIMIT=150 KERNEL_SIZES=64,128 KERNEL_LIMIT=120
else
  PROVIDER=${PROVIDER:-webgpu} THREADS=${THREADS:-4} MODEL=/tmp/splitllm-gpt2-small
  B=4 T=128 ROUNDS_A=${ROUNDS:-2} STEPS_A=${STEPS_A:-10} ROUNDS_B=${ROUNDS:-2} STEPS_B=${STEPS_B:-5} SIM_LIMIT=150
  KERNEL_SIZES=1024,2048,4096 KERNEL_LIMIT=90
fi
ENGINE=${ENGINE:-wgsl}
ONLY_1E1U=${ONLY_1E1U:-0}

T0=$SECONDS
FAILED=()
SAMPLER=
step() { printf '\n== [%4d s] %s\n' $((SECONDS - T0)) "$*"; }
fail() {
  echo "FAILED: $*"
  FAILED+=("$*")
}
# limited LIMIT CMD...: CMD under `timeout`, cut to what the budget leaves (30 s kept for the end)
limited() {
  local limit=$1 left
  shift
  left=$((BUDGET_S - (SECONDS - T0) - 30))
  ((left < limit)) && limit=$left
  if ((limit < 5)); then
    echo "no time left for: $*"
    return 124
  fi
  timeout -k 10 "$limit" "$@"
}
unxz_to() { # FILE.xz DEST
  if command -v xz >/dev/null; then xz -dc "$1" >"$2"; else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
  fi
}
untar_xz() { # FILE.tar.xz DIR
  if command -v xz >/dev/null; then tar -C "$2" -xJf "$1"; else
    python3 -c 'import sys, tarfile
tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="fully_trusted")' "$1" "$2"
  fi
}
sys() { limited "$1" node --import tsx scripts/device/system.ts "${@:2}"; }

finish() {
  if [[ -n $SAMPLER ]]; then
    kill "$SAMPLER" 2>/dev/null
    wait "$SAMPLER" 2>/dev/null
  fi
  step "report"
  local sims=() f
  for f in "$W"/sim-*.json; do [[ -f $f ]] && sims+=(--sim "$f") && cp "$f" "$W/logs/"; done
  tar -C "$W" -czf "$OUT/logs.tar.gz" logs 2>/dev/null || true
  if command -v node >/dev/null && [[ -d node_modules/.pnpm ]]; then
    timeout 60 node --import tsx scripts/device/system.ts report "${sims[@]}" --torch "$OUT/torch.json" \
      --mem "$OUT/gpumem.csv" --gpu "$OUT/gpu.txt" --adapter "$OUT/adapter.json" --json "$OUT/summary.json" ||
      fail "report"
  fi
  echo
  if ((${#FAILED[@]})); then
    printf 'FAILED steps (%d): %s\n' "${#FAILED[@]}" "$(IFS=';'; echo "${FAILED[*]}")"
    echo "run.sh: FAILED after $((SECONDS - T0)) s"
    return 1
  fi
  echo "run.sh: all steps passed in $((SECONDS - T0)) s"
}

main() {
  step "start: $(date -u +%FT%TZ), $(uname -srm), $( (. /etc/os-release && echo "$PRETTY_NAME") 2>/dev/null)," \
    "$(nproc) cores, dry=$DRY, provider=$PROVIDER, engine=$ENGINE, budget ${BUDGET_S} s"
  rm -rf "$W"
  mkdir -p "$W/logs" "$D/bin"

  step "card and driver"
  if [[ $DRY == 1 ]]; then
    echo "dry run: no nvidia-smi" | tee "$OUT/gpu.txt"
  elif limited 30 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit \
    --format=csv,noheader >"$OUT/gpu.txt"; then
    cat "$OUT/gpu.txt"
    limited 30 nvidia-smi | head -20
    python3 -B scripts/device/gpumem.py --out "$OUT/gpumem.csv" --interval 0.25 &
    SAMPLER=$!
    sleep 2
    if kill -0 "$SAMPLER" 2>/dev/null && [[ -s $OUT/gpumem.csv ]]; then
      echo "device memory sampler: pid $SAMPLER, $(head -1 "$OUT/gpumem.csv")"
    else
      fail "device memory sampler (scripts/device/gpumem.py)"
      SAMPLER=
    fi
  else
    fail "nvidia-smi"
  fi

  step "PyTorch + PEFT baseline"
  if [[ ${SKIP_TORCH:-0} == 1 ]]; then
    echo "skipped (SKIP_TORCH=1)"
  elif [[ $DRY == 1 ]]; then
    if python3 -c 'import torch, transformers, peft' 2>/dev/null; then
      limited 120 python3 -B scripts/device/torch_baseline.py --device cpu --tiny --warmup 1 --steps 2 \
        --json "$OUT/torch.json" || fail "torch baseline (cpu)"
    else
      echo "dry run: torch, transformers or peft is not installed here; skipped"
    fi
  else
    limited 150 env PYTHONUNBUFFERED=1 python3 -B scripts/device/torch_baseline.py --json "$OUT/torch.json" ||
      fail "torch baseline"
  fi

  step "unpack Node and node_modules from .device/"
  [[ -s .device/node.xz && -s .device/node_modules.tar.xz ]] || {
    fail ".device/ is missing: run scripts/device/pack.sh here and carry .device"
    return
  }
  if [[ $DRY == 1 && -d node_modules/.pnpm ]]; then
    fail "dry run in a tree with its own node_modules: run it on a copy (scripts/device/README.md)"
    return
  fi
  head -8 .device/MANIFEST 2>/dev/null
  if ! { unxz_to .device/node.xz "$D/bin/node" && chmod +x "$D/bin/node" &&
    untar_xz .device/node_modules.tar.xz "$ROOT"; }; then
    fail "unpack"
    return
  fi
  export PATH=$D/bin:$PATH XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
  echo "node: $(command -v node) $(node --version);" \
    "node_modules: $(find node_modules/.pnpm -maxdepth 1 | wc -l) entries"

  # ws masks and unmasks every client frame: natively with bufferutil, in JavaScript without it
  (cd apps/edge-server && node -e 'let how = "bufferutil (native)";
    if (process.env.WS_NO_BUFFER_UTIL) how = "JavaScript (WS_NO_BUFFER_UTIL is set)";
    else try { require(require.resolve("bufferutil", { paths: [require.resolve("ws")] })); }
    catch (e) { how = "JavaScript (bufferutil: " + e.message.split("\n")[0] + ")"; }
    console.log("ws frame masking: " + how);') || fail "ws frame masking check"

  step "Vulkan loader"
  if [[ $DRY == 1 ]]; then
    local x
    x=$(mktemp -d)
    for f in .device/debs/*.deb; do dpkg -x "$f" "$x" || fail "dpkg -x $f"; done
    echo "the debs unpack (into $x, not /): $(find "$x" -name 'lib*.so*' -printf '%f ' | head -c 400)"
    rm -rf "$x"
    export VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json
  else
    for f in .device/debs/*.deb; do dpkg -x "$f" / || fail "dpkg -x $f"; done
    ldconfig
    local icd=
    for c in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json \
      /etc/vulkan/icd.d/nvidia_icd.json; do
      [[ -f $c ]] && icd=$c && break
    done
    [[ -n $icd ]] || icd=$(timeout 30 find /usr /etc /opt -name 'nvidia_icd*.json' 2>/dev/null | head -1)
    if [[ -n $icd ]]; then
      export VK_ICD_FILENAMES=$icd VK_DRIVER_FILES=$icd
      echo "NVIDIA Vulkan ICD: $icd: $(tr -d '\n ' <"$icd" | head -c 300)"
    else
      fail "no NVIDIA Vulkan ICD json found (the loader's defaults are left to find one)"
    fi
    local egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
    [[ -f $egl ]] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl
    # the ICD names libGLX_nvidia.so.0 by name: where ldconfig does not know it, the driver's folder
    if ! ldconfig -p | grep -q libGLX_nvidia && [[ -d /usr/local/nvidia/lib64 ]]; then
      export LD_LIBRARY_PATH=/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
      echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH (libGLX_nvidia is not in ldconfig's cache)"
    fi
  fi
  ldconfig -p | grep -E 'libvulkan\.so|libGLX_nvidia|libGLdispatch|libnvidia-gpucomp' | head -8

  step "WebGPU adapter (Dawn)"
  local expect=()
  [[ $DRY == 1 ]] || expect=(--expect nvidia)
  if ! sys 60 adapter --json "$OUT/adapter.json" "${expect[@]}"; then
    fail "WebGPU adapter"
    [[ $ENGINE == wgsl ]] && return
  fi

  # issue 18, part 2: the WGSL matmul variants at n^3 (GFLOPS, checked against the reference at the first
  # size), then the user segment's step and its head at GPT-2 small shapes: the variants and the head's
  # split-K timed on this adapter, and the variant chosen before 'blocked8x8' existed without split-K,
  # each with its per-kernel profile (the head's per chunk)
  if [[ ${SKIP_KERNELS:-0} == 1 ]]; then
    step "WGSL matmul variants and the engine's step: skipped (SKIP_KERNELS=1)"
  else
    step "WGSL matmul variants"
    limited "$KERNEL_LIMIT" node --import tsx packages/lora-kernels/scripts/bench-kernels.ts --sizes="$KERNEL_SIZES" \
      --variants=blocked,blocked8x8,registers --runs=10 --budget-ms=3000 || fail "matmul variants"
    step "user segment step (engine)"
    local small=()
    [[ $DRY == 1 ]] || small=(--gpt2-small --seq "$T")
    limited "$KERNEL_LIMIT" node --import tsx packages/lora-kernels/scripts/bench-engine.ts --steps 10 --profile \
      "${small[@]}" || fail "engine step (variants timed)"
    limited "$KERNEL_LIMIT" node --import tsx packages/lora-kernels/scripts/bench-engine.ts --steps 10 --profile \
      --matmul blocked --head-split-k 1 "${small[@]}" || fail "engine step (matmul blocked, no split-K)"
  fi

  step "checkpoint"
  local tiny=()
  [[ $DRY == 1 ]] && tiny=(--tiny)
  sys 120 model --out "$MODEL" "${tiny[@]}" || {
    fail "checkpoint"
    return
  }

  local cloud_provider=${CLOUD_PROVIDER:-$PROVIDER} edge_provider=${EDGE_PROVIDER:-$PROVIDER}
  local common=(--model "$MODEL" --engine "$ENGINE" --batch "$B" --seq "$T" --threads "$THREADS")
  # sim NAME LABEL ARGS...: one configuration, its logs kept under $W/logs/NAME
  sim() {
    local name=$1 label=$2
    shift 2
    step "simulate: $label (batch $B x $T; users $ENGINE, edges $edge_provider, cloud $cloud_provider)"
    sys $((SIM_LIMIT + 20)) sim --name "$name" "$@" "${common[@]}" --edge-provider "$edge_provider" \
      --cloud-provider "$cloud_provider" --dir "$W/$name" --json "$W/sim-$name.json" --timeout-s "$SIM_LIMIT"
    local rc=$?
    cp -r "$W/$name/logs" "$W/logs/$name" 2>/dev/null
    return $rc
  }
  local a=(--edges 1 --users 1 --users-per-edge 1 --rounds "$ROUNDS_A" --steps "$STEPS_A")
  local b=(--edges 2 --users 4 --users-per-edge 2 --rounds "$ROUNDS_B" --steps "$STEPS_B")
  if ! sim 1e1u "1 edge, 1 user, $ROUNDS_A rounds x $STEPS_A steps" "${a[@]}"; then
    fail "simulate 1 edge, 1 user (edges $edge_provider, cloud $cloud_provider)"
    # the cloud's tail (LM head, cross-entropy) is the graph least tried on a GPU provider: once more
    # with the cloud on cpu, so that the users' and the edges' figures still come back
    [[ $cloud_provider == cpu ]] && return
    cloud_provider=cpu
    sim 1e1u-cloudcpu "1 edge, 1 user, the cloud on cpu" "${a[@]}" || {
      fail "simulate 1 edge, 1 user (edges $edge_provider, cloud cpu)"
      return
    }
  fi
  if [[ $ONLY_1E1U == 1 ]]; then
    step "2 edges, 4 users and the scheme sweep: skipped (ONLY_1E1U=1)"
    return
  fi
  sim 2e4u "2 edges, 4 users, 2 per edge per round, $ROUNDS_B rounds x $STEPS_B steps" "${b[@]}" ||
    fail "simulate 2 edges, 4 users (edges $edge_provider, cloud $cloud_provider)"

  # issue 16, part 5: the scheme benchmark on the card, hierarchical vs sfl at GPT-2 small's shape, N 1,2,8,
  # E 1, 1 round x 2 steps; then each point's device memory (gpumem.csv joined by pid and time)
  local bench_model=random:gpt2-small bench_n=${BENCH_N:-1,2,8}
  [[ $DRY == 1 ]] && bench_model=shipped bench_n=1,2
  step "bench: hierarchical vs sfl, $bench_model, N $bench_n, E 1 (edges and cloud on $edge_provider, users $ENGINE)"
  limited 200 node --import tsx packages/cli/src/main.ts bench --model "$bench_model" \
    --schemes hierarchical,sfl --users-per-edge "$bench_n" --edges 1 --rounds 1 --steps-per-user 2 \
    --provider "$edge_provider" --engine "$ENGINE" --max-users 8 --timeout 80 --out "$W/bench" ||
    fail "bench sweep (hierarchical vs sfl)"
  cp "$W/bench/results.json" "$OUT/bench-results.json" 2>/dev/null
  for p in "$W"/bench/points/*/logs; do
    [[ -d $p ]] && mkdir -p "$W/logs/bench" && cp -r "$p" "$W/logs/bench/$(basename "$(dirname "$p")")"
  done
  cp "$W/bench/results.md" "$W/logs/bench-results.md" 2>/dev/null
  step "bench: device memory per point (gpumem.csv joined by pid)"
  if [[ -s $OUT/gpumem.csv && -s $W/bench/results.json ]]; then
    limited 30 node --import tsx scripts/device/bench-gpumem.ts --results "$W/bench/results.json" \
      --mem "$OUT/gpumem.csv" --markdown "$W/logs/bench-gpumem.md" || fail "bench-gpumem"
  else
    echo "no gpumem.csv or no bench results.json: nothing to join"
  fi
}

mkdir -p "$OUT"
{
  main
  finish
} 2>&1 | tee "$OUT/run.log"
exit "${PIPESTATUS[0]}"
