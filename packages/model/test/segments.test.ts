/**
 * Model segments on the shipped model: each tier's file round-trips exactly, the three tiers
 * cover the model (wte twice: the head is tied), the segments alone train to the same loss as
 * the whole model, and malformed files are refused with SEGMENT_BAD.
 */
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { gpt2ConfigToJson } from '../src/config';
import { initLoraAdapter, type LoraAdapter } from '../src/lora';
import {
  cloudSegmentStep,
  edgeSegmentBackward,
  edgeSegmentForward,
  gpt2ForwardBackward,
  userSegmentBackward,
  userSegmentForward,
  type Gpt2Model,
  type SplitPlan,
  type TokenBatch,
} from '../src/model';
import { loadGpt2Dir } from '../src/node/index';
import { IGNORE_INDEX } from '../src/ops/cross-entropy';
import { Rng } from '../src/rng';
import { readSafetensorsWithMetadata, writeSafetensors } from '../src/formats/safetensors';
import { decodeSegment, encodeSegment, SegmentError, segmentWeightNames, TIERS, type Tier } from '../src/segments';
import { gpt2ModelOf } from '../src/family';
import { type LlamaConfig, parseLlamaConfig } from '../src/llama-config';
import { randomLlamaWeights } from '../src/llama';
import type { Tensor } from '../src/tensor';

const shipped: Gpt2Model = loadGpt2Dir(fileURLToPath(new URL('../../assets/models/moby-tiny', import.meta.url)));
const plan: SplitPlan = { k: 1, m: 3 };
const tiers: Tier[] = ['user', 'edge', 'cloud'];

function sameBits(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const x = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const y = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) return false;
  return true;
}

/** Re-encodes a segment after `edit` changed its metadata or tensors (to build bad files). */
function rewrite(
  bytes: Uint8Array,
  edit: (meta: Record<string, string>, tensors: Map<string, Tensor>) => void,
): Uint8Array {
  const { metadata, tensors } = readSafetensorsWithMetadata(bytes);
  const meta = { ...metadata! };
  edit(meta, tensors);
  return writeSafetensors(tensors, meta);
}

function rejects(bytes: Uint8Array, message: RegExp, expectTier?: Tier): void {
  let err: unknown;
  try {
    decodeSegment(bytes, expectTier);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(SegmentError);
  expect((err as SegmentError).code).toBe('SEGMENT_BAD');
  expect((err as SegmentError).message).toMatch(message);
}

describe('model segments', () => {
  const bytes = new Map(tiers.map((t) => [t, encodeSegment(shipped, plan, t)] as const));

  it('round-trip exactly, tier by tier', () => {
    for (const tier of tiers) {
      const d = decodeSegment(bytes.get(tier)!, tier);
      expect(d.tier).toBe(tier);
      expect(d.plan).toEqual(plan);
      expect(d.model.config).toEqual(shipped.config);
      const names = segmentWeightNames(shipped.config, plan, tier);
      expect([...d.model.weights.keys()]).toEqual(names);
      for (const name of names) {
        const want = shipped.weights.get(name)!;
        const got = d.model.weights.get(name)!;
        expect(got.shape).toEqual(want.shape);
        expect(sameBits(got.data, want.data), name).toBe(true);
      }
    }
    // zero-copy: the weights are views into the downloaded bytes
    expect(decodeSegment(bytes.get('user')!).model.weights.get('wte.weight')!.data.buffer).toBe(
      bytes.get('user')!.buffer,
    );
    // no tier check asked: any tier decodes
    expect(decodeSegment(bytes.get('edge')!).tier).toBe('edge');
  });

  it('the tiers partition the model, except the head (wte, ln_f): both the user and the cloud hold it', () => {
    const user = segmentWeightNames(shipped.config, plan, 'user');
    const edge = segmentWeightNames(shipped.config, plan, 'edge');
    const cloud = segmentWeightNames(shipped.config, plan, 'cloud');
    expect(user).toEqual(
      expect.arrayContaining(['wte.weight', 'wpe.weight', 'h.0.ln_1.weight', 'h.0.mlp.c_proj.bias', 'ln_f.weight']),
    );
    expect(user.some((n) => n.startsWith('h.1.'))).toBe(false);
    expect(edge.every((n) => n.startsWith('h.1.') || n.startsWith('h.2.'))).toBe(true);
    expect(cloud).toEqual(expect.arrayContaining(['wte.weight', 'ln_f.weight', 'ln_f.bias', 'h.3.attn.c_attn.weight']));
    const all = [...user, ...edge, ...cloud];
    const head = ['wte.weight', 'ln_f.weight', 'ln_f.bias'];
    for (const name of head)
      expect(
        all.filter((n) => n === name),
        name,
      ).toHaveLength(2);
    const others = all.filter((n) => !head.includes(n));
    expect(new Set(others).size).toBe(others.length);
    expect(new Set(all)).toEqual(new Set(shipped.weights.keys()));
    expect(() => segmentWeightNames(shipped.config, { k: 3, m: 2 }, 'user')).toThrow(/split plan k=3, m=2 is invalid/);
  });

  it("the decoded segments alone give the whole model's loss and gradients, bit for bit", () => {
    const c = shipped.config;
    const [user, edge, cloud] = tiers.map((t) => gpt2ModelOf(decodeSegment(bytes.get(t)!, t).model, 'a test'));
    // B random too, so every LoRA pair changes the output
    const adapter: LoraAdapter = initLoraAdapter(c, { r: 4, alpha: 8, targets: ['attn.c_attn', 'mlp.c_fc'] }, 3);
    const rng = new Rng(4);
    for (const p of adapter.layers.values()) rng.fillNormal(p.B.data, 0.05);
    const B = 2;
    const T = 24;
    const batch: TokenBatch = { B, T, inputIds: new Int32Array(B * T), targets: new Int32Array(B * T) };
    for (let i = 0; i < B * T; i++) {
      batch.inputIds[i] = rng.int(c.vocabSize);
      batch.targets[i] = i % 7 === 6 ? IGNORE_INDEX : rng.int(c.vocabSize);
    }
    const chain = (u: Gpt2Model, e: Gpt2Model, cl: Gpt2Model) => {
      const uf = userSegmentForward(u, adapter, batch, plan);
      const ef = edgeSegmentForward(e, adapter, uf.h1, B, T, plan);
      const cs = cloudSegmentStep(cl, adapter, ef.h2, batch.targets, B, T, plan);
      const eb = edgeSegmentBackward(e, adapter, ef.state, cs.dh2);
      const ug = userSegmentBackward(u, adapter, uf.state, eb.dh1);
      return { loss: cs.loss, grads: new Map([...ug, ...eb.loraGrads, ...cs.loraGrads]) };
    };
    const split = chain(user, edge, cloud);
    const full = chain(shipped, shipped, shipped);
    const central = gpt2ForwardBackward(shipped, adapter, batch);
    expect(Number.isFinite(split.loss)).toBe(true);
    expect(split.loss).toBe(full.loss);
    expect(split.loss).toBe(central.loss);
    expect([...split.grads.keys()].sort()).toEqual([...central.loraGrads.keys()].sort());
    for (const [path, g] of central.loraGrads) {
      expect(sameBits(split.grads.get(path)!.A, g.A), `${path} dA`).toBe(true);
      expect(sameBits(split.grads.get(path)!.B, g.B), `${path} dB`).toBe(true);
    }
  });

  it('refuses the wrong tier, missing, extra and mis-shaped tensors, and bad metadata', () => {
    const user = bytes.get('user')!;
    rejects(user, /this is the user segment, the edge segment was expected/, 'edge');
    rejects(bytes.get('cloud')!, /this is the cloud segment, the user segment was expected/, 'user');
    rejects(
      rewrite(user, (_, t) => t.delete('h.0.attn.c_proj.bias')),
      /the user segment \(k=1, m=3\) is missing "h\.0\.attn\.c_proj\.bias"/,
    );
    rejects(
      rewrite(user, (_, t) => t.delete('ln_f.bias')),
      /the user segment \(k=1, m=3\) is missing "ln_f\.bias"/,
    );
    rejects(
      rewrite(user, (_, t) => t.set('h.1.attn.c_attn.weight', shipped.weights.get('h.1.attn.c_attn.weight')!)),
      /the user segment \(k=1, m=3\) must not hold "h\.1\.attn\.c_attn\.weight"/,
    );
    rejects(
      rewrite(user, (_, t) => t.set('h.1.ln_1.bias', shipped.weights.get('h.1.ln_1.bias')!)),
      /must not hold "h\.1\.ln_1\.bias"/,
    );
    rejects(
      rewrite(user, (_, t) => t.set('h.0.ln_1.weight', { shape: [64], data: new Float32Array(64) })),
      /"h\.0\.ln_1\.weight" is \[64\], the config needs \[128\]/,
    );
    rejects(
      rewrite(user, (_, t) => t.set('h.0.ln_1.weight', { shape: [2, 64], data: new Float32Array(128) })),
      /"h\.0\.ln_1\.weight" is \[2, 64\], the config needs \[128\]/,
    );
    // metadata
    rejects(writeSafetensors(readSafetensorsWithMetadata(user).tensors), /no __metadata__: not a splitllm segment/);
    rejects(
      rewrite(user, (m) => (m.format = 'pt')),
      /"format" is "pt", expected "splitllm-segment"/,
    );
    rejects(
      rewrite(user, (m) => (m.tier = 'browser')),
      /"tier" is "browser", expected one of user, edge, cloud/,
    );
    rejects(
      rewrite(user, (m) => delete m.tier),
      /"tier" is undefined/,
    );
    rejects(
      rewrite(user, (m) => (m.k = '1.5')),
      /"k" must be a non-negative integer, got "1\.5"/,
    );
    rejects(
      rewrite(user, (m) => delete m.m),
      /"m" must be a non-negative integer, got undefined/,
    );
    rejects(
      rewrite(user, (m) => {
        m.k = '3';
        m.m = '2';
      }),
      /split plan k=3, m=2 is invalid for 4 layers/,
    );
    rejects(
      rewrite(user, (m) => (m.m = '5')),
      /split plan k=1, m=5 is invalid for 4 layers/,
    );
    rejects(
      rewrite(user, (m) => delete m.config),
      /metadata has no "config"/,
    );
    rejects(
      rewrite(user, (m) => (m.config = '{not json')),
      /"config" is not a usable model config/,
    );
    rejects(
      rewrite(user, (m) => (m.config = JSON.stringify({ ...gpt2ConfigToJson(shipped.config), n_head: 3 }))),
      /"config" is not a usable model config: .*n_embd 128 is not divisible by n_head 3/,
    );
    // a config that disagrees with the tensors: the shapes say so
    rejects(
      rewrite(user, (m) => (m.config = JSON.stringify({ ...gpt2ConfigToJson(shipped.config), vocab_size: 1000 }))),
      /"wte\.weight" is \[1024, 128\], the config needs \[1000, 128\]/,
    );
    // not a safetensors file at all
    rejects(new Uint8Array(5), /segment: safetensors: file is 5 bytes/);
    rejects(user.subarray(0, 100), /segment: safetensors: header length \d+ runs past the end/);
  });

  it('refuses to encode a model that lacks or mis-shapes a tensor of the tier', () => {
    const weights = new Map(shipped.weights);
    weights.delete('h.2.mlp.c_fc.bias');
    expect(() => encodeSegment({ config: shipped.config, weights }, plan, 'edge')).toThrow(
      /segment \(edge\): the model has no tensor "h\.2\.mlp\.c_fc\.bias"/,
    );
    // the other tiers do not need it
    expect(decodeSegment(encodeSegment({ config: shipped.config, weights }, plan, 'user'), 'user').tier).toBe('user');
    weights.set('h.2.mlp.c_fc.bias', { shape: [3], data: new Float32Array(3) });
    expect(() => encodeSegment({ config: shipped.config, weights }, plan, 'edge')).toThrow(
      /"h\.2\.mlp\.c_fc\.bias" is \[3\], the config needs \[512\]/,
    );
  });
});

describe('segments of a LLaMA-family model', () => {
  const llama = (tie: boolean): LlamaConfig =>
    parseLlamaConfig({
      model_type: 'llama',
      hidden_act: 'silu',
      hidden_size: 16,
      intermediate_size: 24,
      num_attention_heads: 4,
      num_key_value_heads: 2,
      num_hidden_layers: 4,
      max_position_embeddings: 32,
      rms_norm_eps: 1e-5,
      tie_word_embeddings: tie,
      vocab_size: 40,
    });
  const lplan = { k: 1, m: 3 };

  for (const tie of [false, true]) {
    it(`cuts a ${tie ? 'tied' : 'untied'} model: the head to the user and the cloud, every weight somewhere`, () => {
      const config = llama(tie);
      const model = { config, weights: randomLlamaWeights(config, 3) };
      const names = new Map(TIERS.map((t) => [t, segmentWeightNames(config, lplan, t)]));
      const head = tie ? 'embed_tokens.weight' : 'lm_head.weight';
      const outside = (t: Tier) => names.get(t)!.filter((n) => !n.startsWith('layers.'));
      expect(outside('user').sort()).toEqual([...new Set(['embed_tokens.weight', 'norm.weight', head])].sort());
      expect(outside('edge')).toEqual([]);
      expect(outside('cloud').sort()).toEqual([head, 'norm.weight'].sort());
      const blocks = (t: Tier) => [...new Set(names.get(t)!.flatMap((n) => /^layers\.(\d+)\./.exec(n)?.[1] ?? []))];
      expect([blocks('user'), blocks('edge'), blocks('cloud')]).toEqual([['0'], ['1', '2'], ['3']]);
      const all = new Set(TIERS.flatMap((t) => names.get(t)!));
      expect([...all].sort()).toEqual([...model.weights.keys()].sort());
      for (const tier of TIERS) {
        const d = decodeSegment(encodeSegment(model, lplan, tier), tier);
        expect(d.model.config).toEqual(config);
        expect([...d.model.weights.keys()]).toEqual(names.get(tier));
        for (const [n, t] of d.model.weights) expect(t.data).toEqual(model.weights.get(n)!.data);
      }
      // a part that runs GPT-2 only says so
      const user = decodeSegment(encodeSegment(model, lplan, 'user'), 'user').model;
      expect(() => gpt2ModelOf(user, 'this engine')).toThrow(
        /this engine runs GPT-2 models only; this model is of the llama family/,
      );
    });
  }
});
