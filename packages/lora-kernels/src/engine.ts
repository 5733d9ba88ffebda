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
 * Browser-safe (no Node API): runs in a Web Worker and in Node (see node.ts).
 */
import {
  checkAdapterCovers,
  loraModulePath,
  loraScale,
  loraTargetDims,
  type AdamWOptions,
  type Gpt2Config,
  type Gpt2Model,
  type LoraAdapter,
  type LoraConfig,
  type LoraGrads,
  type LoraTarget,
} from '@splitllm/model';
import { GpuError, type Dispatch, type GpuContext } from './gpu';
import { adamw, createAdamwHyper, setAdamwStep, type AdamwHyper } from './kernels/adamw';
import { attentionBackward, attentionForward, attentionProbsLength, type AttentionVariant } from './kernels/attention';
import { embeddingForward } from './kernels/embedding';
import { geluBackward, geluForward } from './kernels/gelu';
import { HEAD_LOGITS_BUDGET_BYTES, headFloats, LmHead, type HeadStepResult } from './kernels/head';
import { layerNormBackward, layerNormForward, type LayerNormVariant } from './kernels/layernorm';
import { loraLinearBackward, loraLinearForward } from './kernels/lora-linear';
import { DEFAULT_MATMUL_VARIANT, type MatmulVariant } from './kernels/matmul';

/**
 * LoRA's rank-r products are skinny (one side r = 8 or so): a 64x64 block wastes most of its
 * tile there, and the 16x16 tile was about twice as fast on an H200 (0.14-0.16 ms against
 * 0.31-0.41 ms at M = 512, K or N = 768..2304, r = 8).
 */
export const DEFAULT_LOW_RANK_VARIANT: MatmulVariant = 'tiled';
import { residualAdd } from './kernels/residual';

/** Kernel variants: a per-device setting (defaults tuned for real GPUs). */
export interface KernelVariants {
  /** the full-size products (x W, dy W^T) */
  matmul?: MatmulVariant;
  /** LoRA's rank-r products (x A, xa B, dy B^T, g A^T, dA, dB) */
  lowRank?: MatmulVariant;
  layernorm?: LayerNormVariant;
  attention?: AttentionVariant;
}

/** Variants that are fastest on CPU (software Vulkan) adapters, measured on SwiftShader. */
export const SOFTWARE_ADAPTER_VARIANTS: Required<KernelVariants> = {
  matmul: 'registers',
  lowRank: 'registers',
  layernorm: 'thread',
  attention: 'naive',
};

export interface UserEngineOptions {
  /** the user segment: embedding + blocks [0, k) */
  k: number;
  lora: LoraConfig;
  /** rows per step and tokens per row: every batch has exactly this shape (pad on the right) */
  batch: number;
  seq: number;
  adamw: AdamWOptions;
  variants?: KernelVariants;
  /** at most this many rows per head chunk (default: the rule in kernels/head.ts, headChunkRows) */
  headChunkRows?: number;
}

interface LinearSlot {
  layer: number;
  target: LoraTarget;
  K: number;
  N: number;
  W: GPUBuffer;
  b: GPUBuffer;
  lora?: {
    A: GPUBuffer;
    B: GPUBuffer;
    dA: GPUBuffer;
    dB: GPUBuffer;
    mA: GPUBuffer;
    vA: GPUBuffer;
    mB: GPUBuffer;
    vB: GPUBuffer;
    xa: GPUBuffer;
  };
}

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
  linears: Record<LoraTarget, LinearSlot>;
}

/** Bytes this engine would allocate (to say clearly when a model does not fit). */
export function userEngineBytes(c: Gpt2Config, o: Pick<UserEngineOptions, 'k' | 'lora' | 'batch' | 'seq'>): number {
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
  floats += headFloats(c, M, Math.max(1, Math.min(M, Math.floor(HEAD_LOGITS_BUDGET_BYTES / (4 * c.vocabSize)))));
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

export class UserSegmentEngine {
  readonly config: Gpt2Config;
  readonly options: UserEngineOptions;
  private readonly gpu: GpuContext;
  private readonly ids: GPUBuffer;
  private readonly blocks: BlockBuffers[] = [];
  private readonly out: GPUBuffer; // h1 = x_k
  private readonly dRes: GPUBuffer; // residual-stream gradient, [M,D]
  private readonly hyper: AdamwHyper;
  private readonly forwardDispatches: Dispatch[];
  private readonly backwardDispatches: Dispatch[];
  private readonly optimizerDispatches: Dispatch[];
  private readonly head: LmHead;
  private readonly all: GPUBuffer[] = [];
  private stepCount = 0;
  private haveForward = false;
  private haveGrads = false;

  private constructor(gpu: GpuContext, model: Gpt2Model, adapter: LoraAdapter, o: UserEngineOptions) {
    this.gpu = gpu;
    this.config = model.config;
    this.options = o;
    const c = model.config;
    const { k, batch: B, seq: T } = o;
    const M = B * T;
    const D = c.nEmbd;
    const I = c.nInner;
    const H = c.nHead;
    const r = o.lora.r;
    const scale = loraScale(o.lora);
    const v = o.variants ?? {};
    const mm = { variant: v.matmul ?? DEFAULT_MATMUL_VARIANT, lowRankVariant: v.lowRank ?? DEFAULT_LOW_RANK_VARIANT };
    const ln = { variant: v.layernorm };
    const at = { variant: v.attention };

    const weight = (name: string): GPUBuffer => {
      const t = model.weights.get(name);
      if (!t) throw new Error(`user segment: the model has no tensor ${name}`);
      return this.keep(gpu.storage(t.data, name));
    };
    const act = (floats: number, label: string) => this.keep(gpu.storage(floats * 4, label));

    this.ids = this.keep(gpu.storage(M * 4, 'ids'));
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

    for (let l = 0; l < k; l++) {
      const p = `h.${l}.`;
      const linears = {} as Record<LoraTarget, LinearSlot>;
      for (const target of ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'] as const) {
        const [K, N] = loraTargetDims(c, target);
        const slot: LinearSlot = {
          layer: l,
          target,
          K,
          N,
          W: weight(`${p + target}.weight`),
          b: weight(`${p + target}.bias`),
        };
        if (o.lora.targets.includes(target)) {
          const name = loraModulePath(l, target);
          const pair = adapter.layers.get(name)!; // checkEngineAdapter ran in create()
          slot.lora = {
            A: this.keep(gpu.storage(pair.A.data, `${name}.A`)),
            B: this.keep(gpu.storage(pair.B.data, `${name}.B`)),
            dA: act(K * r, `${name}.dA`),
            dB: act(r * N, `${name}.dB`),
            mA: act(K * r, `${name}.mA`),
            vA: act(K * r, `${name}.vA`),
            mB: act(r * N, `${name}.mB`),
            vB: act(r * N, `${name}.vB`),
            xa: act(M * r, `${name}.xa`),
          };
        }
        linears[target] = slot;
      }
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
      this.blocks.push(blk);
      const next = act(M * D, `x${l + 1}`);
      const lin = (s: LinearSlot, xIn: GPUBuffer, y: GPUBuffer) =>
        loraLinearForward(
          gpu,
          { x: xIn, W: s.W, b: s.b, y, A: s.lora?.A, B: s.lora?.B, xa: s.lora?.xa },
          { M, K: s.K, N: s.N, r: s.lora ? r : 0, scale },
          mm,
        );
      fwd.push(
        ...layerNormForward(
          gpu,
          { x, gamma: blk.ln1.gamma, beta: blk.ln1.beta, y: blk.ln1.y, mean: blk.ln1.mean, rstd: blk.ln1.rstd },
          { M, D, eps: c.layerNormEpsilon },
          ln,
        ),
        ...lin(linears['attn.c_attn'], blk.ln1.y, blk.qkv),
        ...attentionForward(gpu, { qkv: blk.qkv, out: blk.att, probs: blk.probs }, { B, T, D, H }, at),
        ...lin(linears['attn.c_proj'], blk.att, blk.proj),
        ...residualAdd(gpu, { a: x, b: blk.proj, out: blk.a }, { n: M * D }),
        ...layerNormForward(
          gpu,
          { x: blk.a, gamma: blk.ln2.gamma, beta: blk.ln2.beta, y: blk.ln2.y, mean: blk.ln2.mean, rstd: blk.ln2.rstd },
          { M, D, eps: c.layerNormEpsilon },
          ln,
        ),
        ...lin(linears['mlp.c_fc'], blk.ln2.y, blk.f),
        ...geluForward(gpu, { x: blk.f, y: blk.g }, { n: M * I }),
        ...lin(linears['mlp.c_proj'], blk.g, blk.mlpOut),
        ...residualAdd(gpu, { a: blk.a, b: blk.mlpOut, out: next }, { n: M * D }),
      );
      x = next;
    }
    this.out = x;
    this.forwardDispatches = fwd;

    // backward: shared scratch for every block
    this.dRes = act(M * D, 'dRes');
    const dMlpIn = act(M * I, 'dg');
    const dF = act(M * I, 'df');
    const dN = act(M * D, 'dn');
    const dAtt = act(M * D, 'datt');
    const dQkv = act(M * 3 * D, 'dqkv');
    const dScores = act(probsLen, 'dscores');
    const gScratch = act(M * r, 'lora-g');
    const bwd: Dispatch[] = [];
    const linBack = (s: LinearSlot, xIn: GPUBuffer, dy: GPUBuffer, dx: GPUBuffer | undefined) =>
      loraLinearBackward(
        gpu,
        {
          dy,
          x: xIn,
          W: s.W,
          dx,
          A: s.lora?.A,
          B: s.lora?.B,
          xa: s.lora?.xa,
          g: gScratch,
          dA: s.lora?.dA,
          dB: s.lora?.dB,
        },
        { M, K: s.K, N: s.N, r: s.lora ? r : 0, scale },
        mm,
      );
    for (let l = k - 1; l >= 0; l--) {
      const blk = this.blocks[l];
      const L = blk.linears;
      bwd.push(
        ...linBack(L['mlp.c_proj'], blk.g, this.dRes, dMlpIn),
        ...geluBackward(gpu, { x: blk.f, dy: dMlpIn, dx: dF }, { n: M * I }),
        ...linBack(L['mlp.c_fc'], blk.ln2.y, dF, dN),
        ...layerNormBackward(
          gpu,
          { x: blk.a, gamma: blk.ln2.gamma, mean: blk.ln2.mean, rstd: blk.ln2.rstd, dy: dN, dx: this.dRes },
          { M, D },
          { ...ln, accumulate: true },
        ),
        ...linBack(L['attn.c_proj'], blk.att, this.dRes, dAtt),
        ...attentionBackward(
          gpu,
          { qkv: blk.qkv, probs: blk.probs, dout: dAtt, dscores: dScores, dqkv: dQkv },
          { B, T, D, H },
          at,
        ),
      );
      if (l > 0) {
        bwd.push(
          ...linBack(L['attn.c_attn'], blk.ln1.y, dQkv, dN),
          ...layerNormBackward(
            gpu,
            { x: blk.x, gamma: blk.ln1.gamma, mean: blk.ln1.mean, rstd: blk.ln1.rstd, dy: dN, dx: this.dRes },
            { M, D },
            { ...ln, accumulate: true },
          ),
        );
      } else {
        bwd.push(...linBack(L['attn.c_attn'], blk.ln1.y, dQkv, undefined));
      }
    }
    this.backwardDispatches = bwd;

    this.hyper = createAdamwHyper(gpu, o.adamw);
    const opt: Dispatch[] = [];
    for (const s of this.slots()) {
      const q = s.lora!;
      opt.push(...adamw(gpu, { p: q.A, g: q.dA, m: q.mA, v: q.vA, hyper: this.hyper }, { n: s.K * r }));
      opt.push(...adamw(gpu, { p: q.B, g: q.dB, m: q.mB, v: q.vB, hyper: this.hyper }, { n: r * s.N }));
    }
    this.optimizerDispatches = opt;

    this.head = new LmHead(
      gpu,
      c,
      { wte, gamma: weight('ln_f.weight'), beta: weight('ln_f.bias') },
      { rows: M, chunkRows: o.headChunkRows, matmul: mm.variant, rowVariant: v.layernorm },
    );
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
    const { k, batch, seq } = options;
    if (!(Number.isInteger(k) && k >= 1 && k <= c.nLayer))
      throw new Error(`user segment k = ${k} must be in [1, ${c.nLayer}]`);
    if (!(Number.isInteger(batch) && batch >= 1 && Number.isInteger(seq) && seq >= 1))
      throw new Error(`batch ${batch} x seq ${seq} must be positive integers`);
    if (seq > c.nPositions) throw new Error(`sequence length ${seq} exceeds the model's n_positions ${c.nPositions}`);
    checkEngineAdapter(c, options, adapter);
    gpu.device.pushErrorScope('out-of-memory');
    gpu.device.pushErrorScope('validation');
    let engine: UserSegmentEngine | undefined;
    let thrown: unknown;
    try {
      engine = new UserSegmentEngine(gpu, model, adapter, options);
    } catch (e) {
      thrown = e;
    }
    const validation = await gpu.device.popErrorScope();
    const oom = await gpu.device.popErrorScope();
    const need = `${(userEngineBytes(c, options) / 2 ** 20).toFixed(1)} MiB`;
    if (thrown) {
      if (thrown instanceof GpuError && thrown.code === 'DOES_NOT_FIT') {
        throw new GpuError(
          'DOES_NOT_FIT',
          `the user segment (${need} on the GPU) does not fit this adapter: ${thrown.message}`,
        );
      }
      throw thrown;
    }
    if (oom) {
      engine?.destroy();
      throw new GpuError(
        'DOES_NOT_FIT',
        `the user segment needs ${need} of GPU memory and the device ran out: ${oom.message}`,
      );
    }
    if (validation) {
      engine?.destroy();
      throw new GpuError('GPU_VALIDATION', `building the user segment failed validation: ${validation.message}`);
    }
    return engine!;
  }

  private keep(b: GPUBuffer): GPUBuffer {
    this.all.push(b);
    return b;
  }

  private *slots(): Generator<LinearSlot> {
    for (const blk of this.blocks) for (const s of Object.values(blk.linears)) if (s.lora) yield s;
  }

  /** Token ids of one batch, [batch * seq], each in [0, vocab). */
  private uploadIds(inputIds: Int32Array): void {
    const { batch, seq } = this.options;
    if (inputIds.length !== batch * seq)
      throw new Error(`the engine takes batches of ${batch} x ${seq} tokens, got ${inputIds.length}`);
    const V = this.config.vocabSize;
    for (let i = 0; i < inputIds.length; i++) {
      const t = inputIds[i];
      if (!(t >= 0 && t < V)) throw new Error(`token id ${t} at position ${i} is outside the vocabulary [0, ${V})`);
    }
    this.gpu.write(this.ids, inputIds);
  }

  /** Forward: returns h1 = x_k [batch*seq, D]; keeps what the backward needs on the GPU. */
  async forward(inputIds: Int32Array): Promise<Float32Array> {
    this.uploadIds(inputIds);
    this.gpu.run(this.forwardDispatches);
    this.haveForward = true;
    this.haveGrads = false;
    return this.gpu.readF32(this.out, this.options.batch * this.options.seq * this.config.nEmbd);
  }

  /** Backward of the last forward from dL/dh1; the LoRA gradients stay on the GPU. */
  backward(dh1: Float32Array): void {
    if (!this.haveForward) throw new Error('backward needs a forward first');
    const n = this.options.batch * this.options.seq * this.config.nEmbd;
    if (dh1.length !== n) throw new Error(`dL/dh1 has ${dh1.length} values, expected ${n}`);
    for (let i = 0; i < n; i++)
      if (!Number.isFinite(dh1[i])) throw new Error(`dL/dh1 holds a non-finite value at ${i}`);
    this.gpu.write(this.dRes, dh1);
    this.gpu.run(this.backwardDispatches);
    this.haveGrads = true;
  }

  /** One AdamW update of every LoRA matrix from the last backward's gradients. */
  step(lr = this.options.adamw.lr): void {
    if (!this.haveGrads) throw new Error('step needs a backward first');
    this.stepCount++;
    setAdamwStep(this.gpu, this.hyper, this.stepCount, lr);
    this.gpu.run(this.optimizerDispatches);
    this.haveGrads = false;
  }

  /**
   * Labels on the device: loss (mean over counted targets), count and dL/dhL [batch*seq, D] from
   * the last hidden state hL [batch*seq, D] and the targets [batch*seq] (IGNORE_INDEX not counted).
   * Frozen weights only: the adapter, the optimizer and the last forward's activations are untouched.
   */
  headStep(hL: Float32Array, targets: Int32Array): Promise<HeadStepResult> {
    return this.head.step(hL, targets);
  }

  /** Next-token logits [V] from one position's last hidden state [D] (generation). */
  headLogits(h: Float32Array): Promise<Float32Array> {
    return this.head.logitsOf(h);
  }

  /** Rows per head chunk on this adapter (see headChunkRows). */
  get headChunkRows(): number {
    return this.head.chunkRows;
  }

  /** Steps taken so far. */
  get steps(): number {
    return this.stepCount;
  }

  /** Waits for all submitted GPU work (for timing). */
  finish(): Promise<void> {
    return this.gpu.finish();
  }

  async readGrads(): Promise<LoraGrads> {
    const out: LoraGrads = new Map();
    for (const s of this.slots()) {
      const q = s.lora!;
      const r = this.options.lora.r;
      out.set(loraModulePath(s.layer, s.target), {
        A: await this.gpu.readF32(q.dA, s.K * r),
        B: await this.gpu.readF32(q.dB, r * s.N),
      });
    }
    return out;
  }

  /** The current adapter (for upload at the end of a round). */
  async readAdapter(): Promise<LoraAdapter> {
    const layers: LoraAdapter['layers'] = new Map();
    const r = this.options.lora.r;
    for (const s of this.slots()) {
      const q = s.lora!;
      layers.set(loraModulePath(s.layer, s.target), {
        A: { shape: [s.K, r], data: await this.gpu.readF32(q.A, s.K * r) },
        B: { shape: [r, s.N], data: await this.gpu.readF32(q.B, r * s.N) },
      });
    }
    return { config: { ...this.options.lora, targets: [...this.options.lora.targets] }, layers };
  }

  /** Replaces the adapter (a new round's global version) and resets the optimizer. */
  setAdapter(adapter: LoraAdapter): void {
    checkEngineAdapter(this.config, this.options, adapter); // before any write: all or nothing
    for (const s of this.slots()) {
      const pair = adapter.layers.get(loraModulePath(s.layer, s.target))!;
      const q = s.lora!;
      const r = this.options.lora.r;
      this.gpu.write(q.A, pair.A.data);
      this.gpu.write(q.B, pair.B.data);
      for (const [b, n] of [
        [q.mA, s.K * r],
        [q.vA, s.K * r],
        [q.mB, r * s.N],
        [q.vB, r * s.N],
      ] as const)
        this.gpu.write(b, new Float32Array(n));
    }
    this.stepCount = 0;
    this.haveForward = false;
    this.haveGrads = false;
  }

  destroy(): void {
    this.head.destroy();
    for (const b of this.all) b.destroy();
    this.all.length = 0;
  }
}
