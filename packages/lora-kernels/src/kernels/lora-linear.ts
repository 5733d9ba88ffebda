/**
 * loraLinear: y = x W + b + s (x A) B, s = alpha / r; W [K,N] and b [N] frozen, A [K,r] and
 * B [r,N] trained. The reference is packages/model/src/ops/lora-linear.ts.
 *
 * Forward (3 matmuls, no elementwise pass):
 *   y  = x W + b          'nn' with bias
 *   xa = x A              'nn'            [M,r], kept: dB needs it
 *   y += s xa B           'nn' accumulate, alpha = s   (the low-rank add fused into the store)
 * Backward (never forms dW: the point of LoRA on a memory-bound tier):
 *   g   = s dy B^T        'nt' alpha = s  [M,r]
 *   dx  = dy W^T          'nt'            (or dx += ..., to add into a residual gradient)
 *   dx += g A^T           'nt' accumulate
 *   dA  = x^T g           'tn'            (or dA += ..., gradient accumulation)
 *   dB  = s xa^T dy       'tn' alpha = s  (or dB += ...)
 * Without an adapter (r = 0) it is a plain linear: y = x W + b, dx = dy W^T.
 *
 * The base weight's layout is the one thing the model families store differently: GPT-2's
 * Conv1D keeps W as [in, out] = [K,N] (`weightLayout` 'in-out', the default, as above), nn.Linear
 * (the LLaMA family, llama-engine.ts) as [out, in] = [N,K] ('out-in': x W^T is 'nt' and
 * dy W is 'nn'). The LoRA products are the same for both, so this one file serves both; the bias
 * is optional (Qwen2 has q/k/v biases, Llama none unless attention_bias / mlp_bias).
 *
 * Kernel versions: those of matmul.ts; `variant` picks one for the full-size products and
 * `lowRankVariant` for the rank-r ones (a different shape of problem: one side is r wide).
 * The 'nt'/'tn' layouts read W, A, B and the activations in place: no transpose is stored.
 */
import type { Dispatch, GpuContext } from '../gpu';
import { matmul, type MatmulVariant } from './matmul';

export interface LoraLinearDims {
  /** rows (batch * sequence) */
  M: number;
  /** input features */
  K: number;
  /** output features */
  N: number;
  /** adapter rank; 0 or absent: no adapter (plain linear) */
  r?: number;
  /** s = alpha / r (required with an adapter) */
  scale?: number;
}

export interface LoraLinearForwardBuffers {
  x: GPUBuffer; // [M,K]
  W: GPUBuffer; // [K,N] ('in-out') or [N,K] ('out-in')
  b?: GPUBuffer; // [N]
  y: GPUBuffer; // [M,N] out
  A?: GPUBuffer; // [K,r]
  B?: GPUBuffer; // [r,N]
  /** [M,r] out: x A, kept for the backward */
  xa?: GPUBuffer;
}

export interface LoraLinearBackwardBuffers {
  dy: GPUBuffer; // [M,N]
  x: GPUBuffer; // [M,K], the forward input
  W: GPUBuffer; // [K,N] ('in-out') or [N,K] ('out-in')
  /** [M,K] out; absent: dx is not computed (nothing upstream needs it) */
  dx?: GPUBuffer;
  A?: GPUBuffer;
  B?: GPUBuffer;
  /** [M,r]: the forward's x A */
  xa?: GPUBuffer;
  /** [M,r] scratch for g = s dy B^T; created (once, here) when absent */
  g?: GPUBuffer;
  dA?: GPUBuffer; // [K,r] out
  dB?: GPUBuffer; // [r,N] out
}

/** How the base weight W is stored: [in, out] = [K,N] (GPT-2's Conv1D) or [out, in] = [N,K] (nn.Linear). */
export type LinearWeightLayout = 'in-out' | 'out-in';

export interface LoraLinearOptions {
  /** W's layout (default 'in-out') */
  weightLayout?: LinearWeightLayout;
  /** the variant of the full-size products (x W, dy W^T) */
  variant?: MatmulVariant;
  /**
   * the variant of the rank-r products (x A, xa B, dy B^T, g A^T, dA, dB): one side of each is
   * only r wide, and a 64x64 block wastes most of its tile there (default: `variant`)
   */
  lowRankVariant?: MatmulVariant;
}

export interface LoraLinearBackwardOptions extends LoraLinearOptions {
  /** dx += ... (e.g. into the residual stream's gradient) instead of dx = ... */
  accumulateDx?: boolean;
  /** dA += ..., dB += ... (gradient accumulation over micro-batches) instead of = */
  accumulateGrads?: boolean;
}

function adapterRank(dims: LoraLinearDims): number {
  const r = dims.r ?? 0;
  if (r > 0 && !(typeof dims.scale === 'number' && Number.isFinite(dims.scale))) {
    throw new Error(`loraLinear: an adapter (r = ${r}) needs a finite scale (alpha / r), got ${dims.scale}`);
  }
  return r;
}

function need<T>(v: T | undefined, what: string): T {
  if (v === undefined) throw new Error(`loraLinear: ${what} is required with an adapter (r > 0)`);
  return v;
}

/** Dispatches of the forward: y = x W + b (+ s (x A) B, writing xa = x A). */
export function loraLinearForward(
  gpu: GpuContext,
  buf: LoraLinearForwardBuffers,
  dims: LoraLinearDims,
  options: LoraLinearOptions = {},
): Dispatch[] {
  const { M, K, N } = dims;
  const r = adapterRank(dims);
  const variant = options.variant;
  const low = options.lowRankVariant ?? variant;
  // 'in-out': x W ('nn'); 'out-in': W read in place as [N,K], C[m,n] = sum_k x[m,k] W[n,k] ('nt')
  const layout = options.weightLayout === 'out-in' ? 'nt' : 'nn';
  const out = matmul(gpu, { a: buf.x, b: buf.W, c: buf.y, bias: buf.b }, { M, K, N }, { layout, variant });
  if (r === 0) return out;
  const A = need(buf.A, 'A');
  const B = need(buf.B, 'B');
  const xa = need(buf.xa, 'xa');
  return [
    ...out,
    ...matmul(gpu, { a: buf.x, b: A, c: xa }, { M, K, N: r }, { variant: low }),
    ...matmul(gpu, { a: xa, b: B, c: buf.y }, { M, K: r, N }, { variant: low, accumulate: true, alpha: dims.scale }),
  ];
}

/** Dispatches of the backward: dx (when asked), dA and dB (with an adapter); never dW. */
export function loraLinearBackward(
  gpu: GpuContext,
  buf: LoraLinearBackwardBuffers,
  dims: LoraLinearDims,
  options: LoraLinearBackwardOptions = {},
): Dispatch[] {
  const { M, K, N } = dims;
  const r = adapterRank(dims);
  const variant = options.variant;
  const low = options.lowRankVariant ?? variant;
  const out: Dispatch[] = [];
  let g: GPUBuffer | undefined;
  if (r > 0) {
    g = buf.g ?? gpu.storage(M * r * 4, 'lora-g');
    // g = s dy B^T   (dy [M,N], B [r,N])
    out.push(
      ...matmul(
        gpu,
        { a: buf.dy, b: need(buf.B, 'B'), c: g },
        { M, K: N, N: r },
        { layout: 'nt', variant: low, alpha: dims.scale },
      ),
    );
  }
  if (buf.dx) {
    // dx = dy W^T: 'nt' for W [K,N]; 'nn' for W [N,K] (contraction over N)
    out.push(
      ...matmul(
        gpu,
        { a: buf.dy, b: buf.W, c: buf.dx },
        { M, K: N, N: K },
        { layout: options.weightLayout === 'out-in' ? 'nn' : 'nt', variant, accumulate: options.accumulateDx },
      ),
    );
    // dx += g A^T   (A [K,r])
    if (g)
      out.push(
        ...matmul(
          gpu,
          { a: g, b: need(buf.A, 'A'), c: buf.dx },
          { M, K: r, N: K },
          { layout: 'nt', variant: low, accumulate: true },
        ),
      );
  }
  if (g) {
    const acc = options.accumulateGrads;
    // dA = x^T g     (x [M,K] read as [K,M]^T)
    out.push(
      ...matmul(
        gpu,
        { a: buf.x, b: g, c: need(buf.dA, 'dA') },
        { M: K, K: M, N: r },
        { layout: 'tn', variant: low, accumulate: acc },
      ),
    );
    // dB = s xa^T dy (xa [M,r])
    out.push(
      ...matmul(
        gpu,
        { a: need(buf.xa, 'xa'), b: buf.dy, c: need(buf.dB, 'dB') },
        { M: r, K: M, N },
        { layout: 'tn', variant: low, accumulate: acc, alpha: dims.scale },
      ),
    );
  }
  return out;
}
