#!/usr/bin/env python3
"""Samples device memory per process until stopped (SIGTERM/SIGINT), for scripts/device/run.sh.

    python3 scripts/device/gpumem.py --out FILE [--interval 0.25]

Writes CSV lines `time_s,pid,used_mib` (time_s: Unix time); pid 0 is the whole card's used memory. The first line
names the source. NVML (nvidia-ml-py) is asked for both compute and graphics processes: a Vulkan
process (Dawn: the WGSL users, onnxruntime's WebGPU provider) is listed as a graphics process,
which `nvidia-smi --query-compute-apps` leaves out. Without NVML it falls back to nvidia-smi
(compute processes and the card's total only).
"""

import argparse
import signal
import subprocess
import sys
import time

stop = False


def on_signal(_sig, _frame):
    global stop
    stop = True


def nvml_sampler():
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)

    def sample():
        rows = {}
        for fn in (pynvml.nvmlDeviceGetComputeRunningProcesses, pynvml.nvmlDeviceGetGraphicsRunningProcesses):
            try:
                procs = fn(handle)
            except pynvml.NVMLError:
                continue
            for p in procs:
                used = p.usedGpuMemory
                if used is None:
                    continue
                rows[p.pid] = max(rows.get(p.pid, 0), used / 2**20)
        rows[0] = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
        return rows

    return "nvml (compute + graphics processes)", sample


def smi_sampler():
    def query(args):
        out = subprocess.run(["nvidia-smi", *args, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10)
        return [line.split(",") for line in out.stdout.strip().splitlines() if line.strip()]

    def sample():
        rows = {}
        for pid, used in query(["--query-compute-apps=pid,used_memory"]):
            try:
                rows[int(pid)] = float(used)
            except ValueError:
                pass
        for (used,) in query(["--query-gpu=memory.used"])[:1]:
            rows[0] = float(used)
        return rows

    return "nvidia-smi (compute processes only)", sample


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--interval", type=float, default=0.25)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        source, sample = nvml_sampler()
    except Exception as e:  # no pynvml, or NVML refused
        print(f"gpumem: NVML unavailable ({e}); using nvidia-smi", file=sys.stderr)
        source, sample = smi_sampler()
    n = 0
    with open(args.out, "w") as f:
        f.write(f"# {source}\ntime_s,pid,used_mib\n")
        while not stop:
            try:
                rows = sample()
            except Exception as e:
                print(f"gpumem: sample failed: {e}", file=sys.stderr)
                rows = {}
            t = time.time()
            for pid, used in sorted(rows.items()):
                f.write(f"{t:.2f},{pid},{used:.0f}\n")
            f.flush()
            n += 1
            time.sleep(args.interval)
    print(f"gpumem: {n} samples ({source}) in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
