/**
 * UserSegmentEngine: the user tier's training step on WebGPU. Embedding + blocks [0, k) with
 * LoRA, forward, backward from the gradient of the output activation, AdamW on the adapter.
 * The reference it mirrors is `userSegmentForward` / `userSegmentBackward` in
 * packages/model/src/model.ts, block for block:
 *
 *   h0 = wte[ids] + wpe[pos]
 *   per block l:  n1 = ln_1(x_l);  qkv = c_attn(n1);  att = attention(qkv);  a = x_l + c_proj(att)
 *                 n2 = ln_2(a);    f = c_fc(n2);      g = gelu(f);          x_{l+1} = a + mlp.c_proj(g)
 *
 * Everything lives on the GPU and is created once: frozen weights (uploaded at creation), the
 * LoRA parameters with their gradients and AdamW moments, every activation the backward needs
 * (per block), and shared scratch for the backward. Per step only the token ids go up, the
 * activation h1 = x_k comes down, dL/dh1 goes up, and nothing else crosses the bus until
 * someone reads the adapter. Dispatch lists are recorded once (bind groups are reused).
 *
 * Backward of block l, with d = dL/dx_{l+1} held in one residual-gradient buffer:
 *   mlp.c_proj: dg = d W^T (+ LoRA dA, dB)     gelu: df = gelu'(f) dg      mlp.c_fc: dn2 = df W^T
 *   ln_2 backward adds into d              -> d = dL/da
 *   attn.c_proj: datt = d W^T              attention: dqkv              c_attn: dn1 = dqkv W^T
 *   ln_1 backward adds into d              -> d = dL/dx_l
 * Block 0 skips c_attn's dx and ln_1's backward: the embeddings are frozen.
 *
 * The head (labels on the device: ln_f, the tied LM head wte^T and the cross-entropy, forward
 * and backward to dL/dhL; see kernels/head.ts) runs on its own buffers, on the wte already here
 * and ln_f uploaded with the segment: headStep between a forward and its backward leaves the
 * saved activations alone.
 *
 * What both families' engines do the same way (the LoRA pairs, the AdamW step, the call order,
 * reading and replacing the adapter, create()'s error scopes) is engine-base.ts's UserEngineBase;
 * this file builds GPT-2's segment on it.
 *
 * Browser-safe (no Node API): runs in a Web Worker and in Node (see node.ts).
 */
import {
  checkAdapterCovers,
  LORA_TARGETS,
  loraTargetDims,
  type Gpt2Config,
  type Gpt2LoraTarget,
  type Gpt2Model,
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
import { attentionBackward, attentionForward, attentionProbsLength } from './kernels/attention';
import { embeddingForward } from './kernels/embedding';
import { geluBackward, geluForward } from './kernels/gelu';
import { budgetChunkRows, headFloats, LmHead } from './kernels/head';
import { layerNormBackward, layerNormForward } from './kernels/layernorm';
import { residualAdd } from './kernels/residual';

export {
  DEFAULT_LOW_RANK_VARIANT,
  SOFTWARE_ADAPTER_VARIANTS,
  type KernelVariants,
  type UserEngineOptions,
} from './engine-base';

interface BlockBuffers {
  x: GPUBuffer; // block input [M,D]
  ln1: { gamma: GPUBuffer; beta: GPUBuffer; y: GPUBuffer; mean: GPUBuffer; rstd: GPUBuffer };
  qkv: GPUBuffer; // [M,3D]
  probs: GPUBuffer; // [B,H,T,T]
  att: GPUBuffer; // [M,D]
  proj: GPUBuffer; // [M,D] c_proj output (before the residual add)
  a: GPUBuffer; // [M,D]
  ln2: { gamma: GPUBuffer; beta: GPUBuffer; y: GPUBuffer; mean: GPUBuffer; rstd: GPUBuffer };
  f: GPUBuffer; // [M,I] c_fc output
  g: GPUBuffer; // [M,I] gelu(f)
  mlpOut: GPUBuffer; // [M,D]
  linears: Record<Gpt2LoraTarget, LinearSlot>;
}

/** Bytes this engine would allocate (to say clearly when a model does not fit). */
export function userEngineBytes(
  c: Gpt2Config,
  o: Pick<UserEngineOptions, 'k' | 'lora' | 'batch' | 'seq' | 'variants'>,
): number {
  const M = o.batch * o.seq;
  const D = c.nEmbd;
  const I = c.nInner;
  const probs = o.batch * c.nHead * o.seq * o.seq;
  let floats = c.vocabSize * D + c.nPositions * D;
  const perBlockWeights = 4 * D + D * 3 * D + 3 * D + D * D + D + D * I + I + I * D + D;
  let loraFloats = 0;
  for (const t of o.lora.targets) {
    const [K, N] = loraTargetDims(c, t);
    loraFloats += 4 * (K + N) * o.lora.r + M * o.lora.r; // A, B, their grads, 2 moments each, xa
  }
  const perBlockActs = M * (D + D + 3 * D + D + D + D + D + I + I + D) + 4 * M + probs;
  floats += o.k * (perBlockWeights + perBlockActs + loraFloats * 2);
  floats += M * (D + D + I + I + 3 * D + D + D) + probs + M * o.lora.r; // backward scratch
  floats += 2 * D; // ln_f
  // the head: chunk rows as headChunkRows gives on an adapter whose binding limit is over the budget
  floats += headFloats(c, M, budgetChunkRows(M, c.vocabSize), o.variants?.headSplitK);
  return floats * 4;
}

/**
 * The adapter belongs to this engine: the same LoRA config, shapes that fit the model
 * (checkAdapterFits), arrays as long as their shapes, and a pair for every targeted module of
 * blocks [0, k).
 */
function checkEngineAdapter(c: Gpt2Config, o: Pick<UserEngineOptions, 'k' | 'lora'>, adapter: LoraAdapter): void {
  checkAdapterCovers(c, o.lora, adapter, 0, o.k, 'user-segment engine');
}

export class UserSegmentEngine extends UserEngineBase {
  readonly config: Gpt2Config;

  private constructor(gpu: GpuContext, model: Gpt2Model, adapter: LoraAdapter, o: UserEngineOptions) {
    const c = model.config;
    super(gpu, o, { width: c.nEmbd, vocabSize: c.vocabSize });
    this.config = c;
    const { k, batch: B, seq: T } = o;
    const M = B * T;
    const D = c.nEmbd;
    const I = c.nInner;
    const H = c.nHead;
    const { row: ln, attention: at } = this;
    const weight = (name: string) => this.weight(model.weights, name, 'user segment');
    const act = (floats: number, label: string) => this.act(floats, label);
    const linear = this.linearOps('in-out');

    const wte = weight('wte.weight');
    const wpe = weight('wpe.weight');
    const probsLen = attentionProbsLength({ B, T, D, H });

    const fwd: Dispatch[] = [];
    let x = act(M * D, 'h0');
    fwd.push(
      ...embeddingForward(
        gpu,
        { ids: this.ids, wte, wpe, out: x },
        { B, T, D, vocabSize: c.vocabSize, nPositions: c.nPositions },
      ),
    );

    const blocks: BlockBuffers[] = [];
    for (let l = 0; l < k; l++) {
      const p = `h.${l}.`;
      // checkEngineAdapter ran in create()
      const linears = this.blockLinears(c, l, LORA_TARGETS, adapter, (name) => ({
        W: weight(`${name}.weight`),
        b: weight(`${name}.bias`),
      }));
      const blk: BlockBuffers = {
        x,
        ln1: {
          gamma: weight(`${p}ln_1.weight`),
          beta: weight(`${p}ln_1.bias`),
          y: act(M * D, 'n1'),
          mean: act(M, 'mean1'),
          rstd: act(M, 'rstd1'),
        },
        qkv: act(M * 3 * D, 'qkv'),
        probs: act(probsLen, 'probs'),
        att: act(M * D, 'att'),
        proj: act(M * D, 'proj'),
        a: act(M * D, 'a'),
        ln2: {
          gamma: weight(`${p}ln_2.weight`),
          beta: weight(`${p}ln_2.bias`),
          y: act(M * D, 'n2'),
          mean: act(M, 'mean2'),
          rstd: act(M, 'rstd2'),
        },
        f: act(M * I, 'f'),
        g: act(M * I, 'g'),
        mlpOut: act(M * D, 'mlp'),
        linears,
      };
      blocks.push(blk);
      const next = act(M * D, `x${l + 1}`);
      fwd.push(
        ...layerNormForward(
          gpu,
          { x, gamma: blk.ln1.gamma, beta: blk.ln1.beta, y: blk.ln1.y, mean: blk.ln1.mean, rstd: blk.ln1.rstd },
          { M, D, eps: c.layerNormEpsilon },
          ln,
        ),
        ...linear.forward(linears['attn.c_attn'], blk.ln1.y, blk.qkv),
        ...attentionForward(gpu, { qkv: blk.qkv, out: blk.att, probs: blk.probs }, { B, T, D, H }, at),
        ...linear.forward(linears['attn.c_proj'], blk.att, blk.proj),
        ...residualAdd(gpu, { a: x, b: blk.proj, out: blk.a }, { n: M * D }),
        ...layerNormForward(
          gpu,
          { x: blk.a, gamma: blk.ln2.gamma, beta: blk.ln2.beta, y: blk.ln2.y, mean: blk.ln2.mean, rstd: blk.ln2.rstd },
          { M, D, eps: c.layerNormEpsilon },
          ln,
        ),
        ...linear.forward(linears['mlp.c_fc'], blk.ln2.y, blk.f),
        ...geluForward(gpu, { x: blk.f, y: blk.g }, { n: M * I }),
        ...linear.forward(linears['mlp.c_proj'], blk.g, blk.mlpOut),
        ...residualAdd(gpu, { a: blk.a, b: blk.mlpOut, out: next }, { n: M * D }),
      );
      x = next;
    }

    // backward: shared scratch for every block
    const dMlpIn = act(M * I, 'dg');
    const dF = act(M * I, 'df');
    const dN = act(M * D, 'dn');
    const dAtt = act(M * D, 'datt');
    const dQkv = act(M * 3 * D, 'dqkv');
    const dScores = act(probsLen, 'dscores');
    const bwd: Dispatch[] = [];
    for (let l = k - 1; l >= 0; l--) {
      const blk = blocks[l];
      const L = blk.linears;
      bwd.push(
        ...linear.backward(L['mlp.c_proj'], blk.g, this.dRes, dMlpIn),
        ...geluBackward(gpu, { x: blk.f, dy: dMlpIn, dx: dF }, { n: M * I }),
        ...linear.backward(L['mlp.c_fc'], blk.ln2.y, dF, dN),
        ...layerNormBackward(
          gpu,
          { x: blk.a, gamma: blk.ln2.gamma, mean: blk.ln2.mean, rstd: blk.ln2.rstd, dy: dN, dx: this.dRes },
          { M, D },
          { ...ln, accumulate: true },
        ),
        ...linear.backward(L['attn.c_proj'], blk.att, this.dRes, dAtt),
        ...attentionBackward(
          gpu,
          { qkv: blk.qkv, probs: blk.probs, dout: dAtt, dscores: dScores, dqkv: dQkv },
          { B, T, D, H },
          at,
        ),
      );
      if (l > 0) {
        bwd.push(
          ...linear.backward(L['attn.c_attn'], blk.ln1.y, dQkv, dN),
          ...layerNormBackward(
            gpu,
            { x: blk.x, gamma: blk.ln1.gamma, mean: blk.ln1.mean, rstd: blk.ln1.rstd, dy: dN, dx: this.dRes },
            { M, D },
            { ...ln, accumulate: true },
          ),
        );
      } else {
        bwd.push(...linear.backward(L['attn.c_attn'], blk.ln1.y, dQkv, undefined));
      }
    }

    const lnF = { wte, gamma: weight('ln_f.weight'), beta: weight('ln_f.bias') };
    this.ready({ out: x, forward: fwd, backward: bwd, head: new LmHead(gpu, c, lnF, this.headOptions()) });
  }

  /**
   * Uploads the frozen user segment and the adapter, builds every pipeline and dispatch. Throws
   * GpuError('DOES_NOT_FIT') naming the tensor when a buffer exceeds the adapter's limits or the
   * device runs out of memory.
   */
  static async create(
    gpu: GpuContext,
    model: Gpt2Model,
    adapter: LoraAdapter,
    options: UserEngineOptions,
  ): Promise<UserSegmentEngine> {
    const c = model.config;
    checkSegmentShape(options, c.nLayer, { max: c.nPositions, setting: 'n_positions' }, (m) => new Error(m));
    checkEngineAdapter(c, options, adapter);
    return constructInErrorScopes(
      gpu,
      () => new UserSegmentEngine(gpu, model, adapter, options),
      () => userEngineBytes(c, options),
    );
  }

  protected inputError(message: string): Error {
    return new Error(message);
  }

  protected checkAdapter(adapter: LoraAdapter): void {
    checkEngineAdapter(this.config, this.options, adapter);
  }
}
