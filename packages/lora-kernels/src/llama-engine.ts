/**
 * LlamaUserSegmentEngine: the user tier's training step on WebGPU for the LLaMA family (Llama,
 * Qwen2), the counterpart of engine.ts's GPT-2 UserSegmentEngine with the same public surface.
 * embed_tokens + blocks [0, k) with LoRA on any of q/k/v/o/gate/up/down_proj, forward, backward
 * from the gradient of the output activation, AdamW on the adapter. The reference it mirrors is
 * llamaEmbedForward / llamaBlocksForward / llamaBlocksBackward in packages/model/src/llama.ts
 * (what userSegmentForward / userSegmentBackward run for this family), block for block:
 *
 *   h0 = embed_tokens[ids]                                   (kernels/token-embedding: no position table)
 *   per block l:  n1 = rmsnorm(x_l; input_layernorm)
 *                 q, k, v = q_proj(n1), k_proj(n1), v_proj(n1)  (nn.Linear [out, in]: kernels/lora-linear)
 *                 q, k rotated in place (rope, the reference's table uploaded once)
 *                 att = gqa(q, k, v);  a = x_l + o_proj(att)
 *                 n2 = rmsnorm(a; post_attention_layernorm)
 *                 h = swiglu(gate_proj(n2), up_proj(n2));  x_{l+1} = a + down_proj(h)
 * Biases only where the config has them (q/k/v: qkvBias, Qwen2; o: oBias; MLP: mlpBias).
 *
 * As in engine.ts, everything lives on the GPU and is created once: frozen weights, the LoRA
 * parameters with their gradients and AdamW moments, every activation the backward needs (per
 * block), shared scratch for the backward; dispatch lists are recorded once. Per step only the
 * token ids go up, h1 = x_k comes down, dL/dh1 goes up. The o_proj and down_proj outputs go
 * through one shared scratch (the backward never reads them). Like engine.ts, this file only
 * builds the segment: the LoRA pairs, the linears (kernels/lora-linear.ts with W [out, in]), the
 * step and everything after construction are engine-base.ts's UserEngineBase.
 *
 * Backward of block l, with d = dL/dx_{l+1} in one residual-gradient buffer:
 *   down_proj: dh = d W (+ LoRA dA, dB)     swiglu: dgate, dup
 *   gate_proj: dn2 = dgate W;  up_proj: dn2 += dup W
 *   post_attention_layernorm backward adds into d                -> d = dL/da
 *   o_proj: datt = d W       gqa backward: dq, dk, dv       rope^T in place on dq, dk
 *   q_proj: dn1 = dq W;  k_proj, v_proj: dn1 += ...
 *   input_layernorm backward adds into d                         -> d = dL/dx_l
 * Block 0 computes only what one of its LoRA pairs uses (the embedding is frozen): no dn1 and no
 * input_layernorm backward ever; without q/k/v pairs no attention backward; without o/q/k/v pairs
 * not dL/da either, and so on down the MLP.
 *
 * The head (labels on the device: the final norm, lm_head.weight [V, D] or embed_tokens.weight
 * when tied, the cross-entropy, forward and backward to dL/dhL; see kernels/llama-head.ts) runs
 * on its own buffers; a tied head reads the embedding buffer already here. headStep between a
 * forward and its backward leaves the saved activations alone.
 *
 * Browser-safe (no Node API): runs in a Web Worker and in Node (see node.ts).
 */
import {
  CodedError,
  checkAdapterCovers,
  checkLoraTargetsFit,
  FamilyError,
  isLlamaConfig,
  LLAMA_LORA_TARGETS,
  llamaRopeTable,
  loraTargetDims,
  type AnyModel,
  type LlamaConfig,
  type LlamaLoraTarget,
  type LoraAdapter,
} from '@splitllm/model';
import {
  checkSegmentShape,
  constructInErrorScopes,
  UserEngineBase,
  type LinearSlot,
  type UserEngineOptions,
} from './engine-base';
import type { Dispatch, GpuContext } from './gpu';
import { gqaAttentionBackward, gqaAttentionForward, gqaAttentionProbsLength } from './kernels/gqa-attention';
import { budgetChunkRows } from './kernels/head';
import { llamaHeadFloats, LlamaLmHead } from './kernels/llama-head';
import { residualAdd } from './kernels/residual';
import { rmsNormBackward, rmsNormForward } from './kernels/rmsnorm';
import { ropeBackward, ropeForward, uploadRopeTable } from './kernels/rope';
import { swigluBackward, swigluForward } from './kernels/swiglu';
import { tokenEmbeddingForward } from './kernels/token-embedding';

/** A caller's input the engine refuses (shapes, ids, call order, the model's tensors); the message says which. */
export class LlamaEngineError extends CodedError<'BAD_ENGINE_INPUT'> {
  constructor(message: string) {
    super('BAD_ENGINE_INPUT', message);
  }
}

interface BlockBuffers {
  x: GPUBuffer; // block input [M,D]
  inputNorm: { weight: GPUBuffer; y: GPUBuffer; rstd: GPUBuffer };
  q: GPUBuffer; // [M, H*hd], rotated in place
  k: GPUBuffer; // [M, Hkv*hd], rotated in place
  v: GPUBuffer; // [M, Hkv*hd]
  probs: GPUBuffer; // [B,H,T,T]
  att: GPUBuffer; // [M, H*hd]
  a: GPUBuffer; // [M,D]
  postNorm: { weight: GPUBuffer; y: GPUBuffer; rstd: GPUBuffer };
  gate: GPUBuffer; // [M,F]
  up: GPUBuffer; // [M,F]
  act: GPUBuffer; // [M,F] silu(gate) * up
  linears: Record<LlamaLoraTarget, LinearSlot>;
}

function hasBias(c: LlamaConfig, target: LlamaLoraTarget): boolean {
  if (target === 'q_proj' || target === 'k_proj' || target === 'v_proj') return c.qkvBias;
  if (target === 'o_proj') return c.oBias;
  return c.mlpBias;
}

function llamaConfigOf(model: AnyModel): LlamaConfig {
  const c = model.config;
  if (!isLlamaConfig(c))
    throw new FamilyError('the LLaMA user-segment engine runs LLaMA-family models only; this model is GPT-2');
  return c;
}

/** Bytes this engine would allocate (to say clearly when a model does not fit). */
export function llamaUserEngineBytes(
  c: LlamaConfig,
  o: Pick<UserEngineOptions, 'k' | 'lora' | 'batch' | 'seq' | 'variants'>,
): number {
  const M = o.batch * o.seq;
  const D = c.hiddenSize;
  const F = c.intermediateSize;
  const Q = c.nHead * c.headDim;
  const KV = c.nKvHead * c.headDim;
  const r = o.lora.r;
  const probs = gqaAttentionProbsLength({ B: o.batch, H: c.nHead, T: o.seq });
  let floats = c.vocabSize * D * (c.tieWordEmbeddings ? 1 : 2) + D; // embed_tokens, lm_head, norm
  let perBlock = 2 * D; // the two norms
  for (const t of LLAMA_LORA_TARGETS) {
    const [K, N] = loraTargetDims(c, t);
    perBlock += K * N + (hasBias(c, t) ? N : 0);
    if (o.lora.targets.includes(t)) perBlock += 4 * (K + N) * r + M * r; // A, B, grads, moments; xa
  }
  // x, n1, rstd1, q, k, v, probs, att, a, n2, rstd2, gate, up, act
  perBlock += M * (D + D + 1 + Q + 2 * KV + Q + D + D + 1 + 3 * F) + probs;
  floats += o.k * perBlock + M * D + M * D + M; // blocks, h1, the o/down output scratch, ids
  floats += M * (D + 3 * F + D + Q + Q + 2 * KV) + probs + M * r; // backward scratch
  floats += o.seq * c.headDim; // rope cos / sin
  // the head: chunk rows as headChunkRows gives on an adapter whose binding limit is over the budget
  floats += llamaHeadFloats(c, M, budgetChunkRows(M, c.vocabSize), o.variants?.headSplitK);
  return floats * 4;
}

/**
 * The options and the adapter belong to this engine: LoRA targets of the LLaMA family, the same
 * LoRA config, shapes that fit the model, and a pair for every targeted module of blocks [0, k).
 */
function checkEngineAdapter(c: LlamaConfig, o: Pick<UserEngineOptions, 'k' | 'lora'>, adapter: LoraAdapter): void {
  checkLoraTargetsFit(c, o.lora);
  checkAdapterCovers(c, o.lora, adapter, 0, o.k, 'LLaMA user-segment engine');
}

export class LlamaUserSegmentEngine extends UserEngineBase {
  readonly config: LlamaConfig;

  private constructor(gpu: GpuContext, model: AnyModel, c: LlamaConfig, adapter: LoraAdapter, o: UserEngineOptions) {
    super(gpu, o, { width: c.hiddenSize, vocabSize: c.vocabSize });
    this.config = c;
    const { k, batch: B, seq: T } = o;
    const M = B * T;
    const D = c.hiddenSize;
    const F = c.intermediateSize;
    const H = c.nHead;
    const Hkv = c.nKvHead;
    const hd = c.headDim;
    const { row: rn, attention: at } = this;
    const gqaDims = { B, T, H, Hkv, headDim: hd };
    const weight = (name: string, floats: number) => this.weight(model.weights, name, 'LLaMA user segment', floats);
    const act = (floats: number, label: string) => this.act(floats, label);
    // nn.Linear keeps W as [out, in]
    const linear = this.linearOps('out-in');

    const embed = weight('embed_tokens.weight', c.vocabSize * D);
    const rope = uploadRopeTable(gpu, llamaRopeTable(c, T));
    this.keep(rope.cos);
    this.keep(rope.sin);
    const probsLen = gqaAttentionProbsLength({ B, H, T });
    const branchOut = act(M * D, 'branch-out'); // o_proj, then down_proj output, before the residual add

    const fwd: Dispatch[] = [];
    let x = act(M * D, 'h0');
    fwd.push(
      ...tokenEmbeddingForward(gpu, { ids: this.ids, table: embed, out: x }, { rows: M, D, vocabSize: c.vocabSize }),
    );

    const blocks: BlockBuffers[] = [];
    for (let l = 0; l < k; l++) {
      const p = `layers.${l}.`;
      // checkEngineAdapter ran in create()
      const linears = this.blockLinears(c, l, LLAMA_LORA_TARGETS, adapter, (name, target, K, N) => ({
        W: weight(`${name}.weight`, N * K),
        b: hasBias(c, target) ? weight(`${name}.bias`, N) : undefined,
      }));
      const blk: BlockBuffers = {
        x,
        inputNorm: { weight: weight(`${p}input_layernorm.weight`, D), y: act(M * D, 'n1'), rstd: act(M, 'rstd1') },
        q: act(M * H * hd, 'q'),
        k: act(M * Hkv * hd, 'k'),
        v: act(M * Hkv * hd, 'v'),
        probs: act(probsLen, 'probs'),
        att: act(M * H * hd, 'att'),
        a: act(M * D, 'a'),
        postNorm: {
          weight: weight(`${p}post_attention_layernorm.weight`, D),
          y: act(M * D, 'n2'),
          rstd: act(M, 'rstd2'),
        },
        gate: act(M * F, 'gate'),
        up: act(M * F, 'up'),
        act: act(M * F, 'act'),
        linears,
      };
      blocks.push(blk);
      const next = act(M * D, `x${l + 1}`);
      const L = linears;
      fwd.push(
        ...rmsNormForward(
          gpu,
          { x, weight: blk.inputNorm.weight, y: blk.inputNorm.y, rstd: blk.inputNorm.rstd },
          { M, D, eps: c.rmsNormEps },
          rn,
        ),
        ...linear.forward(L.q_proj, blk.inputNorm.y, blk.q),
        ...linear.forward(L.k_proj, blk.inputNorm.y, blk.k),
        ...linear.forward(L.v_proj, blk.inputNorm.y, blk.v),
        ...ropeForward(gpu, { x: blk.q, table: rope }, { B, T, nHeads: H, headDim: hd }),
        ...ropeForward(gpu, { x: blk.k, table: rope }, { B, T, nHeads: Hkv, headDim: hd }),
        ...gqaAttentionForward(gpu, { q: blk.q, k: blk.k, v: blk.v, out: blk.att, probs: blk.probs }, gqaDims, at),
        ...linear.forward(L.o_proj, blk.att, branchOut),
        ...residualAdd(gpu, { a: x, b: branchOut, out: blk.a }, { n: M * D }),
        ...rmsNormForward(
          gpu,
          { x: blk.a, weight: blk.postNorm.weight, y: blk.postNorm.y, rstd: blk.postNorm.rstd },
          { M, D, eps: c.rmsNormEps },
          rn,
        ),
        ...linear.forward(L.gate_proj, blk.postNorm.y, blk.gate),
        ...linear.forward(L.up_proj, blk.postNorm.y, blk.up),
        ...swigluForward(gpu, { gate: blk.gate, up: blk.up, h: blk.act }, { n: M * F }),
        ...linear.forward(L.down_proj, blk.act, branchOut),
        ...residualAdd(gpu, { a: blk.a, b: branchOut, out: next }, { n: M * D }),
      );
      x = next;
    }

    // backward: shared scratch for every block
    const dAct = act(M * F, 'dact');
    const dGate = act(M * F, 'dgate');
    const dUp = act(M * F, 'dup');
    const dN = act(M * D, 'dn');
    const dAtt = act(M * H * hd, 'datt');
    const dQ = act(M * H * hd, 'dq');
    const dK = act(M * Hkv * hd, 'dk');
    const dV = act(M * Hkv * hd, 'dv');
    const dScores = act(probsLen, 'dscores');
    const back = linear.backward;
    const bwd: Dispatch[] = [];
    for (let l = k - 1; l >= 0; l--) {
      const blk = blocks[l];
      const L = blk.linears;
      const first = l === 0;
      const has = (t: LlamaLoraTarget) => L[t].lora !== undefined;
      // what a gradient is needed for: past block 0 everything flows on; in block 0 only a LoRA
      // pair upstream of it uses it (the embedding is frozen)
      const needQkv = !first || has('q_proj') || has('k_proj') || has('v_proj');
      const needDa = needQkv || has('o_proj');
      const needDAct = needDa || has('gate_proj') || has('up_proj');
      // MLP branch: x' = a + down(swiglu(gate(n2), up(n2)))
      bwd.push(...back(L.down_proj, blk.act, this.dRes, needDAct ? dAct : undefined));
      if (needDAct) {
        bwd.push(
          ...swigluBackward(gpu, { gate: blk.gate, up: blk.up, dh: dAct, dgate: dGate, dup: dUp }, { n: M * F }),
          ...back(L.gate_proj, blk.postNorm.y, dGate, needDa ? dN : undefined),
          ...back(L.up_proj, blk.postNorm.y, dUp, needDa ? dN : undefined, true),
        );
      }
      if (needDa) {
        bwd.push(
          ...rmsNormBackward(
            gpu,
            { x: blk.a, weight: blk.postNorm.weight, rstd: blk.postNorm.rstd, dy: dN, dx: this.dRes },
            { M, D },
            { ...rn, accumulate: true },
          ),
        );
      }
      // attention branch: a = x + o(gqa(rope(q(n1)), rope(k(n1)), v(n1)))
      bwd.push(...back(L.o_proj, blk.att, this.dRes, needQkv ? dAtt : undefined));
      if (!needQkv) continue;
      bwd.push(
        ...gqaAttentionBackward(
          gpu,
          { q: blk.q, k: blk.k, v: blk.v, probs: blk.probs, dout: dAtt, dscores: dScores, dq: dQ, dk: dK, dv: dV },
          gqaDims,
          at,
        ),
      );
      if (!first || has('q_proj'))
        bwd.push(...ropeBackward(gpu, { dy: dQ, table: rope }, { B, T, nHeads: H, headDim: hd }));
      if (!first || has('k_proj'))
        bwd.push(...ropeBackward(gpu, { dy: dK, table: rope }, { B, T, nHeads: Hkv, headDim: hd }));
      const dn1 = first ? undefined : dN;
      bwd.push(
        ...back(L.q_proj, blk.inputNorm.y, dQ, dn1),
        ...back(L.k_proj, blk.inputNorm.y, dK, dn1, true),
        ...back(L.v_proj, blk.inputNorm.y, dV, dn1, true),
      );
      if (!first) {
        bwd.push(
          ...rmsNormBackward(
            gpu,
            { x: blk.x, weight: blk.inputNorm.weight, rstd: blk.inputNorm.rstd, dy: dN, dx: this.dRes },
            { M, D },
            { ...rn, accumulate: true },
          ),
        );
      }
    }

    const headWeights = {
      head: c.tieWordEmbeddings ? embed : weight('lm_head.weight', c.vocabSize * D),
      norm: weight('norm.weight', D),
    };
    const head = new LlamaLmHead(gpu, c, headWeights, this.headOptions());
    this.ready({ out: x, forward: fwd, backward: bwd, head });
  }

  /**
   * Uploads the frozen user segment and the adapter, builds every pipeline and dispatch. Throws
   * FamilyError for a GPT-2 model, and GpuError('DOES_NOT_FIT') naming the tensor when a buffer
   * exceeds the adapter's limits or the device runs out of memory.
   */
  static async create(
    gpu: GpuContext,
    model: AnyModel,
    adapter: LoraAdapter,
    options: UserEngineOptions,
  ): Promise<LlamaUserSegmentEngine> {
    const c = llamaConfigOf(model);
    checkSegmentShape(
      options,
      c.nLayer,
      { max: c.maxPositionEmbeddings, setting: 'max_position_embeddings' },
      (m) => new LlamaEngineError(m),
    );
    checkEngineAdapter(c, options, adapter);
    return constructInErrorScopes(
      gpu,
      () => new LlamaUserSegmentEngine(gpu, model, c, adapter, options),
      () => llamaUserEngineBytes(c, options),
    );
  }

  protected inputError(message: string): Error {
    return new LlamaEngineError(message);
  }

  protected checkAdapter(adapter: LoraAdapter): void {
    checkEngineAdapter(this.config, this.options, adapter);
  }
}
