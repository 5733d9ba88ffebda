#!/usr/bin/env python3
"""The PyTorch + PEFT baseline the split system is compared with (scripts/device/run.sh runs it).

    python3 scripts/device/torch_baseline.py [--device cuda] [--json FILE]
    python3 scripts/device/torch_baseline.py --device cpu --tiny --warmup 1 --steps 2   # a quick check

GPT-2 small (GPT2Config's defaults: 12 layers x 768, vocabulary 50257; random weights, dropout
off, as in the split system) with LoRA r=8, alpha 16, no dropout on the attention projections
(`attn.c_attn`, `attn.c_proj`: the split system's default targets; PEFT would match a bare
`c_proj` in the MLP too), fan_in_fan_out=True (GPT-2's Conv1D), fp32 (IEEE matmuls), AdamW
(lr 5e-3, betas 0.9/0.999, eps 1e-8, no weight decay: the split system's), batch 4 x 128 random
tokens, loss on the shifted sequence. 10 warm-up steps, then 50 timed steps, each timed with
CUDA events (on the CPU with perf_counter). Prints the figures and writes them as JSON.
"""

import argparse
import json
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=float, default=16)
    ap.add_argument("--targets", default="attn.c_attn,attn.c_proj")
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (off by default: fp32)")
    ap.add_argument("--tiny", action="store_true", help="2 layers x 64, vocabulary 1024 (a CPU check)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

    import peft
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    started = time.time()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("torch_baseline: CUDA is not available")
    # fp32 matmuls are IEEE by default; only --tf32 changes that, through one API only (PyTorch >= 2.9
    # raises when the legacy allow_tf32 flags and the new fp32_precision ones are mixed)
    mm = torch.backends.cuda.matmul
    new_api = hasattr(mm, "fp32_precision")
    if args.tf32:
        if new_api:
            mm.fp32_precision = "tf32"
        else:
            mm.allow_tf32 = True
    matmul_precision = mm.fp32_precision if new_api else ("tf32" if mm.allow_tf32 else "ieee")
    torch.manual_seed(0)
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)

    drop = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    if args.tiny:
        cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=128, vocab_size=1024, **drop)
    else:
        cfg = GPT2Config(**drop)
    model = GPT2LMHeadModel(cfg).to(dev, dtype=torch.float32)
    targets = [t for t in args.targets.split(",") if t]
    lora = LoraConfig(
        r=args.rank,
        lora_alpha=args.alpha,
        lora_dropout=0.0,
        target_modules=targets,
        fan_in_fan_out=True,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model.train()
    trainable, total = model.get_nb_trainable_parameters()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    gen = torch.Generator(device="cpu").manual_seed(1)
    pool = [torch.randint(0, cfg.vocab_size, (args.batch, args.seq), generator=gen).to(dev) for _ in range(8)]
    weights_mib = torch.cuda.memory_allocated(dev) / 2**20 if cuda else None

    def step(i):
        x = pool[i % len(pool)]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for i in range(args.warmup):
        loss = step(i)
    if cuda:
        torch.cuda.synchronize(dev)
    ms = []
    t_wall = time.perf_counter()
    if cuda:
        def event():
            return torch.cuda.Event(enable_timing=True)

        events = [(event(), event()) for _ in range(args.steps)]
        for i, (a, b) in enumerate(events):
            a.record()
            loss = step(i)
            b.record()
        torch.cuda.synchronize(dev)
        ms = [a.elapsed_time(b) for a, b in events]
    else:
        for i in range(args.steps):
            t0 = time.perf_counter()
            loss = step(i)
            ms.append((time.perf_counter() - t0) * 1000)
    wall_ms = (time.perf_counter() - t_wall) * 1000 / max(1, args.steps)
    final_loss = float(loss.detach().float().cpu())

    med = statistics.median(ms)
    out = {
        "pid": os.getpid(),
        "started_at": started,
        "ended_at": time.time(),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "attn_implementation": getattr(model.base_model.model.config, "_attn_implementation", None),
        "dtype": f"fp32, matmul {matmul_precision}",
        "model": "tiny (2 x 64)" if args.tiny else "GPT-2 small (12 x 768, random)",
        "params_total": total,
        "params_trainable": trainable,
        "rank": args.rank,
        "alpha": args.alpha,
        "targets": ",".join(targets),
        "optimizer": f"AdamW lr {args.lr}",
        "batch": args.batch,
        "seq": args.seq,
        "warmup": args.warmup,
        "steps": args.steps,
        "median_ms": med,
        "min_ms": min(ms),
        "mean_ms": statistics.fmean(ms),
        "wall_ms_per_step": wall_ms,
        "tokens_per_s": args.batch * args.seq * 1000 / med,
        "weights_mib": weights_mib,
        "peak_allocated_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None,
        "peak_reserved_mib": torch.cuda.max_memory_reserved(dev) / 2**20 if cuda else None,
        "final_loss": final_loss,
        "ms": [round(x, 3) for x in ms],
    }
    print(
        f"torch+peft on {out['device_name']} ({out['dtype']}, attention {out['attn_implementation']}): "
        f"{trainable:,} of {total:,} parameters trainable; batch {args.batch} x {args.seq}; "
        f"median {med:.2f} ms/step, min {min(ms):.2f}, wall {wall_ms:.2f} "
        f"({out['tokens_per_s']:.0f} tokens/s) over {args.steps} steps after {args.warmup}; "
        f"peak allocated {out['peak_allocated_mib'] or 0:.0f} MiB, reserved {out['peak_reserved_mib'] or 0:.0f} MiB; "
        f"final loss {final_loss:.3f}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
