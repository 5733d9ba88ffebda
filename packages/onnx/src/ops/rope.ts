/**
 * Rotary position embedding as ONNX nodes, mirroring the reference's ops/rope.ts (Hugging Face's
 * apply_rotary_pos_emb with rotate_half: the pairs are (i, i + hd/2) of each head, not
 * interleaved). x is [N, nHeads*hd] (the q_proj / k_proj output as is, N = B*T rows), row (b, t)
 * at position t:
 *   y1 = x1 cos - x2 sin,  y2 = x2 cos + x1 sin          (x1, x2: the two halves of a head)
 * A rotation per pair, so the backward is the transposed rotation:
 *   dx1 = dy1 cos + dy2 sin,  dx2 = dy2 cos - dy1 sin
 *
 * The cos and sin tables [P, hd/2] are initializers made by the reference's ropeTable (float32
 * angle t * invFreq, cos and sin rounded to float32, Llama 3 rope_scaling already in invFreq), so
 * graph and reference rotate by the very same numbers; the graph slices the first T positions at
 * run time. P bounds the sequence length a graph accepts: a longer one fails in onnxruntime (the
 * sliced table no longer broadcasts against the activations), so callers build the table for the
 * longest sequence they run (at most max_position_embeddings).
 */
import type { RopeTable } from '@splitllm/model';
import type { GraphBuilder } from '../graph-builder';

/** The tables of one graph, sliced to the current sequence length. */
export interface RopeNodes {
  /** hd / 2 */
  half: number;
  /** [T, 1, hd/2], broadcasting against [B, T, nHeads, hd/2] */
  cos: string;
  sin: string;
}

/**
 * The table's cos and sin as initializers `rope.cos` / `rope.sin` (once per graph) and their
 * first T rows, T read at run time from `like` ([B, T, ...]; once per graph and value).
 */
export function ropeTableNodes(g: GraphBuilder, table: RopeTable, like: string): RopeNodes {
  const init = g.cached('rope-table', () => ({
    table,
    cos: g.initializer('rope.cos', 'float32', [table.T, table.half], table.cos),
    sin: g.initializer('rope.sin', 'float32', [table.T, table.half], table.sin),
  }));
  if (init.table !== table) throw new Error(`graph "${g.name}": one RoPE table per graph`);
  return g.cached(`rope:${like}`, () => {
    const t = g.op('Shape', [like], { start: 1, end: 2 }, 'seq_len');
    const rows = (v: string, hint: string) =>
      g.op('Unsqueeze', [g.op('Slice', [v, g.int64s([0]), t, g.int64s([0])]), g.int64s([1])], {}, hint);
    return { half: table.half, cos: rows(init.cos, 'rope_cos'), sin: rows(init.sin, 'rope_sin') };
  });
}

/** Rotates every head of x [N, width] (headsShape: int64 [B, T, nHeads, hd]); sign -1 is the inverse. */
function rotate(g: GraphBuilder, x: string, R: RopeNodes, headsShape: string, width: number, sign: 1 | -1): string {
  const xh = g.op('Reshape', [x, headsShape]);
  const [x1, x2] = g.node('Split', [xh, g.int64s([R.half, R.half])], 2, { axis: -1 });
  const c1 = g.op('Mul', [x1, R.cos]);
  const c2 = g.op('Mul', [x2, R.cos]);
  const s1 = g.op('Mul', [x1, R.sin]);
  const s2 = g.op('Mul', [x2, R.sin]);
  const y1 = g.op(sign === 1 ? 'Sub' : 'Add', [c1, s2]);
  const y2 = g.op(sign === 1 ? 'Add' : 'Sub', [c2, s1]);
  return g.op('Reshape', [g.op('Concat', [y1, y2], { axis: -1 }), g.int64s([-1, width])], {}, 'rope');
}

export function ropeForwardNodes(g: GraphBuilder, x: string, R: RopeNodes, headsShape: string, width: number): string {
  return rotate(g, x, R, headsShape, width, 1);
}

/** dx from dy (the rotation transposed); needs nothing from the forward but the tables. */
export function ropeBackwardNodes(
  g: GraphBuilder,
  dy: string,
  R: RopeNodes,
  headsShape: string,
  width: number,
): string {
  return rotate(g, dy, R, headsShape, width, -1);
}
