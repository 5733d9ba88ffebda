/**
 * Causal multi-head self-attention core as ONNX nodes, mirroring ops/attention.ts: from the
 * fused qkv [N, 3D] (N = B*T rows; q, k, v in column blocks, head h owns hd = D/H columns of
 * each) to the concatenated heads [N, D].
 *
 *   s = q k^T / sqrt(hd), masked to j <= i;  p = softmax(s);  o = p v
 *   dv = p^T do,  dp = do v^T,  ds = p (dp - rowsum(p dp)) / sqrt(hd),  dq = ds k,  dk = ds^T q
 *
 * B and T are read at run time from a [B, T, ...] value, and the causal mask is built from T
 * (ConstantOfShape -> Trilu -> Cast), so one graph serves every batch size and length.
 * Masked scores are replaced (Where), not offset, so unmasked ones are untouched.
 */
import { tensorAttr, type GraphBuilder } from '../graph-builder';

/** Run-time layout of the heads, shared by every attention in a graph. */
export interface AttentionLayout {
  nHead: number;
  /** model width D */
  width: number;
  /** int64 [4]: B, T, nHead, headDim */
  headsShape: string;
  /** bool [T, T], true where key j <= query i */
  mask: string;
}

const MASKED = -1e30;

/** The layout for activations shaped like `like` ([B, T, ...]); built once per graph. */
export function attentionLayoutNodes(g: GraphBuilder, like: string, width: number, nHead: number): AttentionLayout {
  if (width % nHead !== 0) throw new Error(`attention: width ${width} is not divisible by ${nHead} heads`);
  return g.cached(`attention-layout:${like}:${width}:${nHead}`, () => {
    const bt = g.op('Shape', [like], { start: 0, end: 2 }, 'bt');
    const headsShape = g.op('Concat', [bt, g.int64s([nHead, width / nHead])], { axis: 0 }, 'heads_shape');
    const t = g.op('Shape', [like], { start: 1, end: 2 }, 'seq_len');
    const tt = g.op('Concat', [t, t], { axis: 0 });
    const ones = g.op('ConstantOfShape', [tt], { value: tensorAttr('float32', [1], Float32Array.of(1)) });
    const lower = g.op('Trilu', [ones], { upper: 0 });
    const mask = g.op('Cast', [lower], { to: 9 /* BOOL */ }, 'causal_mask');
    return { nHead, width, headsShape, mask };
  });
}

/** [N, D] -> [B, H, T, hd] (perm [0,2,1,3]) or [B, H, hd, T] (perm [0,2,3,1]). */
function toHeads(g: GraphBuilder, x: string, L: AttentionLayout, perm: number[]): string {
  return g.op('Transpose', [g.op('Reshape', [x, L.headsShape])], { perm });
}

/** [B, H, T, hd] -> [N, D] */
function fromHeads(g: GraphBuilder, x: string, L: AttentionLayout): string {
  return g.op('Reshape', [g.op('Transpose', [x], { perm: [0, 2, 1, 3] }), g.int64s([-1, L.width])]);
}

function splitQkv(g: GraphBuilder, qkv: string, L: AttentionLayout): [string, string, string] {
  const D = L.width;
  const [q, k, v] = g.node('Split', [qkv, g.int64s([D, D, D])], 3, { axis: -1 });
  return [q, k, v];
}

export function attentionForwardNodes(g: GraphBuilder, qkv: string, L: AttentionLayout): { y: string; probs: string } {
  const [q, k, v] = splitQkv(g, qkv, L);
  const qh = toHeads(g, q, L, [0, 2, 1, 3]);
  const kT = toHeads(g, k, L, [0, 2, 3, 1]);
  const vh = toHeads(g, v, L, [0, 2, 1, 3]);
  const scores = g.op('Mul', [g.op('MatMul', [qh, kT]), g.scalar(1 / Math.sqrt(L.width / L.nHead))]);
  const masked = g.op('Where', [L.mask, scores, g.scalar(MASKED)]);
  const probs = g.op('Softmax', [masked], { axis: -1 }, 'attn_probs');
  return { y: fromHeads(g, g.op('MatMul', [probs, vh]), L), probs };
}

/** dqkv [N, 3D] from the forward's qkv and probs [B, H, T, T] and the output gradient dy [N, D]. */
export function attentionBackwardNodes(
  g: GraphBuilder,
  qkv: string,
  probs: string,
  dy: string,
  L: AttentionLayout,
): string {
  const [q, k, v] = splitQkv(g, qkv, L);
  const qh = toHeads(g, q, L, [0, 2, 1, 3]);
  const kh = toHeads(g, k, L, [0, 2, 1, 3]);
  const vT = toHeads(g, v, L, [0, 2, 3, 1]);
  const doh = toHeads(g, dy, L, [0, 2, 1, 3]);
  const swap = [0, 1, 3, 2];
  const dv = g.op('MatMul', [g.op('Transpose', [probs], { perm: swap }), doh]);
  const dp = g.op('MatMul', [doh, vT]);
  const rowDot = g.op('ReduceSum', [g.op('Mul', [dp, probs]), g.int64s([-1])], { keepdims: 1 });
  const ds = g.op('Mul', [g.op('Mul', [probs, g.op('Sub', [dp, rowDot])]), g.scalar(1 / Math.sqrt(L.width / L.nHead))]);
  const dq = g.op('MatMul', [ds, kh]);
  const dk = g.op('MatMul', [g.op('Transpose', [ds], { perm: swap }), qh]);
  return g.op('Concat', [fromHeads(g, dq, L), fromHeads(g, dk, L), fromHeads(g, dv, L)], { axis: -1 }, 'attn_dqkv');
}
