/**
 * tokenEmbedding: h0[b, t] = table[ids[b, t]], ids int32 [B*T], table [V, D], h0 [B*T, D]: the
 * LLaMA family's embed_tokens, which has no position table (positions enter through RoPE inside
 * attention). The reference is llamaEmbedForward in packages/model/src/llama.ts. GPT-2's kernel
 * (embedding.ts) adds wpe[t]; this one is that gather alone (embedding.ts's kernel built without
 * its position term), so no zero position table has to be allocated and read. Forward only: the
 * embedding is frozen under LoRA.
 *
 * Token ids out of [0, V): the engine refuses them on the CPU before upload; one that gets
 * through anyway gives a NaN row (never an out-of-bounds read), as in embedding.ts.
 *
 * Bindings: 0 ids (i32), 1 table, 2 out, 3 uniform {B*T, T (unused), D, V, nan bits}.
 */
import type { Dispatch, GpuContext } from '../gpu';
import { embeddingGather } from './embedding';
import { checkKernelDims } from './rmsnorm';

export interface TokenEmbeddingBuffers {
  /** [B*T] int32 token ids */
  ids: GPUBuffer;
  /** [V, D] token embeddings */
  table: GPUBuffer;
  /** [B*T, D] output */
  out: GPUBuffer;
}

export interface TokenEmbeddingDims {
  /** rows: B * T */
  rows: number;
  D: number;
  vocabSize: number;
}

/** h0 = table[ids]. Returns [] when rows * D is 0. */
export function tokenEmbeddingForward(
  gpu: GpuContext,
  buffers: TokenEmbeddingBuffers,
  dims: TokenEmbeddingDims,
): Dispatch[] {
  checkKernelDims('tokenEmbedding', { rows: dims.rows, D: dims.D, vocabSize: dims.vocabSize }, 0);
  // T only places rows in the position table, which this gather has none of
  return embeddingGather(gpu, buffers, { rows: dims.rows, T: 1, D: dims.D, vocabSize: dims.vocabSize });
}
