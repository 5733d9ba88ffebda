/**
 * Grouped-query causal self-attention core of LLaMA / Qwen2 as ONNX nodes, mirroring the
 * reference's ops/gqa-attention.ts: from the (rotated) q [N, H*hd] and k, v [N, Hkv*hd] (N = B*T
 * rows) to the concatenated heads [N, H*hd]. Query head h reads kv head floor(h / G), G = H / Hkv
 * (transformers' repeat_kv).
 *
 *   s = q k^T / sqrt(hd), masked to j <= i;  p = softmax(s);  o = p v
 *   dv = p^T do,  dp = do v^T,  ds = p (dp - rowsum(p dp)) / sqrt(hd),  dq = ds k,  dk = ds^T q
 *
 * Grouped matmuls instead of repeating the kv heads: the G query heads of a group are
 * consecutive, so q as [B, H, T, hd] reshapes for free to [B, Hkv, G*T, hd], and one batched
 * MatMul against k [B, Hkv, hd, T] gives every score of the group. No repeated copy of k or v is
 * made, and in the backward dk = ds^T q and dv = p^T do contract over the G*T rows of a group,
 * which sums the group's query heads into their kv head inside the matmul. Scores and
 * probabilities are reshaped to [B, H, T, T] (again free) for the mask and the softmax, and the
 * probabilities are kept in that layout (the reference's cache layout). With G = 1 the grouping
 * reshapes are skipped and this is GPT-2's attention on separate q, k, v.
 *
 * B and T are read at run time from a [B, T, ...] value; every reshape target is built from them
 * (no -1 or 0 placeholders), so a batch of 0 rows (the idle half of a step graph) runs too. The
 * causal mask is built from T (ConstantOfShape -> Trilu -> Cast), and masked scores are replaced
 * (Where), not offset, so unmasked ones are untouched.
 */
import { tensorAttr, type GraphBuilder } from '../graph-builder';

/** Run-time shapes of the heads, shared by every attention (and RoPE) in a graph. */
export interface GqaLayout {
  nHead: number;
  nKvHead: number;
  headDim: number;
  /** int64 [4]: B, T, nHead, headDim (q rows as heads) */
  qHeadsShape: string;
  /** int64 [4]: B, T, nKvHead, headDim (k, v rows as heads) */
  kvHeadsShape: string;
  /** int64 [4]: B, nHead, T, headDim; absent when G = 1 */
  headsShape?: string;
  /** int64 [4]: B, nKvHead, G*T, headDim (a group's query heads stacked); absent when G = 1 */
  groupedShape?: string;
  /** int64 [4]: B, nKvHead, G*T, T; absent when G = 1 */
  groupedScoresShape?: string;
  /** int64 [4]: B, nHead, T, T; absent when G = 1 */
  scoresShape?: string;
  /** bool [T, T], true where key j <= query i */
  mask: string;
}

const MASKED = -1e30;

/** The layout for activations shaped like `like` ([B, T, ...]); built once per graph and value. */
export function gqaLayoutNodes(
  g: GraphBuilder,
  like: string,
  nHead: number,
  nKvHead: number,
  headDim: number,
): GqaLayout {
  if (!(Number.isInteger(nKvHead) && nKvHead > 0 && nHead % nKvHead === 0))
    throw new Error(`gqa attention: ${nHead} query heads cannot share ${nKvHead} kv heads`);
  return g.cached(`gqa-layout:${like}:${nHead}:${nKvHead}:${headDim}`, () => {
    const group = nHead / nKvHead;
    const b = g.op('Shape', [like], { start: 0, end: 1 }, 'batch');
    const t = g.op('Shape', [like], { start: 1, end: 2 }, 'seq_len');
    const cat = (parts: string[], hint: string) => g.op('Concat', parts, { axis: 0 }, hint);
    const ones = g.op('ConstantOfShape', [cat([t, t], 'tt')], {
      value: tensorAttr('float32', [1], Float32Array.of(1)),
    });
    const mask = g.op('Cast', [g.op('Trilu', [ones], { upper: 0 })], { to: 9 /* BOOL */ }, 'causal_mask');
    const layout: GqaLayout = {
      nHead,
      nKvHead,
      headDim,
      qHeadsShape: cat([b, t, g.int64s([nHead, headDim])], 'q_heads_shape'),
      kvHeadsShape: cat([b, t, g.int64s([nKvHead, headDim])], 'kv_heads_shape'),
      mask,
    };
    if (group > 1) {
      const gt = g.op('Mul', [t, g.int64s([group])], {}, 'group_seq');
      layout.headsShape = cat([b, g.int64s([nHead]), t, g.int64s([headDim])], 'heads_shape');
      layout.groupedShape = cat([b, g.int64s([nKvHead]), gt, g.int64s([headDim])], 'grouped_shape');
      layout.groupedScoresShape = cat([b, g.int64s([nKvHead]), gt, t], 'grouped_scores_shape');
      layout.scoresShape = cat([b, g.int64s([nHead]), t, t], 'scores_shape');
    }
    return layout;
  });
}

/** [N, nh*hd] -> [B, nh, T, hd] (perm [0,2,1,3]) or [B, nh, hd, T] (perm [0,2,3,1]). */
function toHeads(g: GraphBuilder, x: string, headsShape: string, perm: number[]): string {
  return g.op('Transpose', [g.op('Reshape', [x, headsShape])], { perm });
}

/** [B, nh, T, hd] -> [N, nh*hd] */
function fromHeads(g: GraphBuilder, x: string, width: number): string {
  return g.op('Reshape', [g.op('Transpose', [x], { perm: [0, 2, 1, 3] }), g.int64s([-1, width])]);
}

/** x reshaped to `shape` (the heads regrouped, see the header), or x as is when G = 1 (no shape). */
function grouped(g: GraphBuilder, x: string, shape: string | undefined): string {
  return shape ? g.op('Reshape', [x, shape]) : x;
}

/** [B, Hkv, G*T, hd] -> [B, H, T, hd], a no-op when G = 1. */
function ungrouped(g: GraphBuilder, x: string, L: GqaLayout): string {
  return L.headsShape ? g.op('Reshape', [x, L.headsShape]) : x;
}

const scaleOf = (L: GqaLayout) => 1 / Math.sqrt(L.headDim);

export function gqaAttentionForwardNodes(
  g: GraphBuilder,
  q: string,
  k: string,
  v: string,
  L: GqaLayout,
): { y: string; probs: string } {
  const qg = grouped(g, toHeads(g, q, L.qHeadsShape, [0, 2, 1, 3]), L.groupedShape); // [B, Hkv, G*T, hd]
  const kT = toHeads(g, k, L.kvHeadsShape, [0, 2, 3, 1]); // [B, Hkv, hd, T]
  const vh = toHeads(g, v, L.kvHeadsShape, [0, 2, 1, 3]); // [B, Hkv, T, hd]
  const scores = grouped(g, g.op('Mul', [g.op('MatMul', [qg, kT]), g.scalar(scaleOf(L))]), L.scoresShape);
  const masked = g.op('Where', [L.mask, scores, g.scalar(MASKED)]);
  const probs = g.op('Softmax', [masked], { axis: -1 }, 'attn_probs'); // [B, H, T, T]
  const o = g.op('MatMul', [grouped(g, probs, L.groupedScoresShape), vh]); // [B, Hkv, G*T, hd]
  const y = fromHeads(g, ungrouped(g, o, L), L.nHead * L.headDim);
  return { y, probs };
}

/**
 * dq [N, H*hd], dk and dv [N, Hkv*hd] from the forward's (rotated) q, k, v, its probabilities
 * [B, H, T, T] and the output gradient dy [N, H*hd].
 */
export function gqaAttentionBackwardNodes(
  g: GraphBuilder,
  q: string,
  k: string,
  v: string,
  probs: string,
  dy: string,
  L: GqaLayout,
): { dq: string; dk: string; dv: string } {
  const swap = [0, 1, 3, 2];
  const qg = grouped(g, toHeads(g, q, L.qHeadsShape, [0, 2, 1, 3]), L.groupedShape); // [B, Hkv, G*T, hd]
  const kh = toHeads(g, k, L.kvHeadsShape, [0, 2, 1, 3]); // [B, Hkv, T, hd]
  const vT = toHeads(g, v, L.kvHeadsShape, [0, 2, 3, 1]); // [B, Hkv, hd, T]
  const dog = grouped(g, toHeads(g, dy, L.qHeadsShape, [0, 2, 1, 3]), L.groupedShape); // [B, Hkv, G*T, hd]
  const pg = grouped(g, probs, L.groupedScoresShape); // [B, Hkv, G*T, T]
  // contractions over the G*T rows of a group: the group's query heads sum into their kv head
  const dv = g.op('MatMul', [g.op('Transpose', [pg], { perm: swap }), dog]); // [B, Hkv, T, hd]
  const dp = g.op('MatMul', [dog, vT]); // [B, Hkv, G*T, T]
  const rowDot = g.op('ReduceSum', [g.op('Mul', [dp, pg]), g.int64s([-1])], { keepdims: 1 });
  const ds = g.op('Mul', [g.op('Mul', [pg, g.op('Sub', [dp, rowDot])]), g.scalar(scaleOf(L))]);
  const dq = g.op('MatMul', [ds, kh]); // [B, Hkv, G*T, hd]
  const dk = g.op('MatMul', [g.op('Transpose', [ds], { perm: swap }), qg]); // [B, Hkv, T, hd]
  const qWidth = L.nHead * L.headDim;
  const kvWidth = L.nKvHead * L.headDim;
  return {
    dq: fromHeads(g, ungrouped(g, dq, L), qWidth),
    dk: fromHeads(g, dk, kvWidth),
    dv: fromHeads(g, dv, kvWidth),
  };
}
