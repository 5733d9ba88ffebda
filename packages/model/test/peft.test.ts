import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Gpt2Config } from '../src/config';
import { randomGpt2Weights } from '../src/init';
import { type LoraAdapter, LORA_TARGETS, initLoraAdapter, loraTargetDims } from '../src/lora';
import { loadAdapterDir, saveAdapterDir } from '../src/node/model-io';
import { PeftError, adapterFromPeft, adapterToPeft, mergeLoraIntoWeights } from '../src/formats/peft';
import { Rng } from '../src/rng';
import { parseSafetensors, readSafetensors, writeSafetensors } from '../src/formats/safetensors';
import type { Tensor } from '../src/tensor';

const cfg: Gpt2Config = {
  vocabSize: 300,
  nPositions: 16,
  nEmbd: 8,
  nLayer: 3,
  nHead: 2,
  nInner: 20,
  layerNormEpsilon: 1e-5,
  bosTokenId: 299,
  eosTokenId: 299,
};

/** An adapter with all four targets and non-zero A and B. */
function fullAdapter(from = 0, to = cfg.nLayer, seed = 5): LoraAdapter {
  const a = initLoraAdapter(cfg, { r: 4, alpha: 8, targets: [...LORA_TARGETS] }, seed, from, to);
  const rng = new Rng(seed + 100);
  for (const { B } of a.layers.values()) rng.fillNormal(B.data, 0.1);
  return a;
}

function expectAdaptersEqual(a: LoraAdapter, b: LoraAdapter): void {
  expect(b.config).toEqual(a.config);
  expect([...b.layers.keys()]).toEqual([...a.layers.keys()]);
  for (const [k, p] of a.layers) {
    const q = b.layers.get(k)!;
    expect(q.A.shape).toEqual(p.A.shape);
    expect(q.B.shape).toEqual(p.B.shape);
    expect(Array.from(q.A.data)).toEqual(Array.from(p.A.data));
    expect(Array.from(q.B.data)).toEqual(Array.from(p.B.data));
  }
}

function expectPeftError(fn: () => unknown, part: string): void {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(PeftError);
  expect((err as Error).message).toContain(part);
}

const tmpDirs: string[] = [];
afterAll(() => {
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
});

describe('adapterToPeft / adapterFromPeft', () => {
  it('writes PEFT key names, shapes [r, in] / [out, r] and transposed values', () => {
    const adapter = fullAdapter();
    const { config, safetensors } = adapterToPeft(adapter, { baseModel: 'gpt2-tiny', nLayer: cfg.nLayer });
    expect(config).toMatchObject({
      peft_type: 'LORA',
      task_type: 'CAUSAL_LM',
      r: 4,
      lora_alpha: 8,
      target_modules: ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'],
      fan_in_fan_out: true,
      lora_dropout: 0,
      bias: 'none',
      inference_mode: true,
      base_model_name_or_path: 'gpt2-tiny',
      modules_to_save: null,
      layers_to_transform: null,
    });
    const parsed = parseSafetensors(safetensors);
    expect(parsed.metadata).toEqual({ format: 'pt' });
    const expected: string[] = [];
    for (let i = 0; i < cfg.nLayer; i++) {
      for (const t of LORA_TARGETS) {
        expected.push(`base_model.model.transformer.h.${i}.${t}.lora_A.weight`);
        expected.push(`base_model.model.transformer.h.${i}.${t}.lora_B.weight`);
      }
    }
    expect([...parsed.tensors.keys()]).toEqual(expected);
    const raw = readSafetensors(safetensors);
    for (let i = 0; i < cfg.nLayer; i++) {
      for (const t of LORA_TARGETS) {
        const [din, dout] = loraTargetDims(cfg, t);
        const A = raw.get(`base_model.model.transformer.h.${i}.${t}.lora_A.weight`)!;
        const B = raw.get(`base_model.model.transformer.h.${i}.${t}.lora_B.weight`)!;
        expect(A.shape).toEqual([4, din]);
        expect(B.shape).toEqual([dout, 4]);
        const ours = adapter.layers.get(`h.${i}.${t}`)!;
        // A_peft[k][j] = A[j][k], B_peft[j][k] = B[k][j]
        expect(A.data[1 * din + 2]).toBe(ours.A.data[2 * 4 + 1]);
        expect(B.data[3 * 4 + 2]).toBe(ours.B.data[2 * dout + 3]);
      }
    }
  });

  it('round-trips an adapter with all four targets', () => {
    const adapter = fullAdapter();
    const { config, safetensors } = adapterToPeft(adapter);
    // through JSON text, as on disk
    const back = adapterFromPeft(JSON.parse(JSON.stringify(config)), safetensors);
    expectAdaptersEqual(adapter, back);
  });

  it('a partial adapter lists layers_to_transform and round-trips', () => {
    const adapter = fullAdapter(1, 3);
    const { config, safetensors } = adapterToPeft(adapter, { nLayer: cfg.nLayer });
    expect(config.layers_to_transform).toEqual([1, 2]);
    expect(config.layers_pattern).toBe('h');
    expectAdaptersEqual(adapter, adapterFromPeft(config, safetensors));
    // without nLayer the covered list is always written
    expect(adapterToPeft(fullAdapter(), {}).config.layers_to_transform).toEqual([0, 1, 2]);
  });

  it('accepts bare PEFT module names ("c_attn", "c_proj")', () => {
    const adapter = initLoraAdapter(cfg, { r: 2, alpha: 2, targets: ['attn.c_attn', 'attn.c_proj', 'mlp.c_proj'] }, 1);
    const { config, safetensors } = adapterToPeft(adapter);
    const back = adapterFromPeft({ ...config, target_modules: ['c_attn', 'c_proj'] }, safetensors);
    expectAdaptersEqual(adapter, back);
  });

  it('saveAdapterDir / loadAdapterDir round-trip atomically into a temp dir', () => {
    const dir = mkdtempSync(join(tmpdir(), 'splitllm-peft-'));
    tmpDirs.push(dir);
    const adapter = fullAdapter();
    saveAdapterDir(dir, adapter, { baseModel: 'gpt2', nLayer: cfg.nLayer });
    expect(readdirSync(dir).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']); // no temp leftovers
    const json = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
    expect(json.peft_type).toBe('LORA');
    expect(json.target_modules).toEqual([...LORA_TARGETS]);
    expectAdaptersEqual(adapter, loadAdapterDir(dir));
    // overwrite with another adapter
    const other = fullAdapter(0, 2, 9);
    saveAdapterDir(dir, other);
    expect(readdirSync(dir).length).toBe(2);
    expectAdaptersEqual(other, loadAdapterDir(dir));
  });

  it('loadAdapterDir names the directory and the missing file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'splitllm-peft-'));
    tmpDirs.push(dir);
    expect(() => loadAdapterDir(dir)).toThrow(`adapter directory ${dir} has no adapter_config.json`);
    writeFileSync(join(dir, 'adapter_config.json'), '{}');
    expect(() => loadAdapterDir(dir)).toThrow(`adapter directory ${dir} has no adapter_model.safetensors`);
  });

  describe('validation', () => {
    const adapter = fullAdapter();
    const { config, safetensors } = adapterToPeft(adapter);

    it('peft_type, r, alpha, fan_in_fan_out, bias', () => {
      expectPeftError(() => adapterFromPeft('x', safetensors), 'not a JSON object');
      expectPeftError(() => adapterFromPeft({ ...config, peft_type: 'IA3' }, safetensors), 'only "LORA"');
      expectPeftError(() => adapterFromPeft({ ...config, r: 0 }, safetensors), '"r"');
      expectPeftError(() => adapterFromPeft({ ...config, r: 2.5 }, safetensors), '"r"');
      expectPeftError(() => adapterFromPeft({ ...config, lora_alpha: -1 }, safetensors), 'lora_alpha');
      expectPeftError(() => adapterFromPeft({ ...config, fan_in_fan_out: false }, safetensors), 'fan_in_fan_out');
      expectPeftError(() => adapterFromPeft({ ...config, bias: 'all' }, safetensors), 'bias');
      expectPeftError(() => adapterFromPeft({ ...config, use_rslora: true }, safetensors), 'use_rslora');
      expectPeftError(() => adapterFromPeft({ ...config, rank_pattern: { c_attn: 2 } }, safetensors), 'rank_pattern');
    });

    it('r mismatch with tensor shapes', () => {
      expectPeftError(() => adapterFromPeft({ ...config, r: 8 }, safetensors), 'rank r = 8');
    });

    it('unknown targets', () => {
      expectPeftError(() => adapterFromPeft({ ...config, target_modules: ['q_proj'] }, safetensors), 'q_proj');
      expectPeftError(
        () => adapterFromPeft({ ...config, target_modules: ['attn.c_attn'] }, safetensors),
        'does not select',
      );
      const extra = new Map(readSafetensors(safetensors));
      extra.set('base_model.model.lm_head.lora_A.weight', { shape: [4, 8], data: new Float32Array(32) });
      expectPeftError(() => adapterFromPeft(config, writeSafetensors(extra)), 'lm_head');
    });

    it('inconsistent shapes', () => {
      const raw = new Map(readSafetensors(safetensors));
      const key = 'base_model.model.transformer.h.1.attn.c_attn.lora_B.weight';
      raw.set(key, { shape: [20, 4], data: new Float32Array(80) });
      expectPeftError(() => adapterFromPeft(config, writeSafetensors(raw)), 'h.1.attn.c_attn');
      // c_attn out must be 3 * n_embd
      const bad = new Map<string, Tensor>([
        ['base_model.model.transformer.h.0.attn.c_attn.lora_A.weight', { shape: [4, 8], data: new Float32Array(32) }],
        ['base_model.model.transformer.h.0.attn.c_attn.lora_B.weight', { shape: [16, 4], data: new Float32Array(64) }],
      ]);
      expectPeftError(() => adapterFromPeft(config, writeSafetensors(bad)), 'attn.c_attn maps 8 -> 16');
      // c_fc in must equal c_attn in
      const bad2 = new Map<string, Tensor>([
        ['base_model.model.transformer.h.0.attn.c_attn.lora_A.weight', { shape: [4, 8], data: new Float32Array(32) }],
        ['base_model.model.transformer.h.0.attn.c_attn.lora_B.weight', { shape: [24, 4], data: new Float32Array(96) }],
        ['base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight', { shape: [4, 6], data: new Float32Array(24) }],
        ['base_model.model.transformer.h.0.mlp.c_fc.lora_B.weight', { shape: [20, 4], data: new Float32Array(80) }],
      ]);
      expectPeftError(() => adapterFromPeft(config, writeSafetensors(bad2)), 'inconsistent widths');
      // missing half
      const half = new Map(readSafetensors(safetensors));
      half.delete('base_model.model.transformer.h.2.mlp.c_fc.lora_B.weight');
      expectPeftError(() => adapterFromPeft(config, writeSafetensors(half)), 'h.2.mlp.c_fc');
    });

    it('export rejects an adapter missing a target on a covered block', () => {
      const a = fullAdapter();
      a.layers.delete('h.1.mlp.c_fc');
      expectPeftError(() => adapterToPeft(a), 'block 1 has no weights for target mlp.c_fc');
    });
  });
});

describe('mergeLoraIntoWeights', () => {
  it('x (W + s A B) equals x W + s (x A) B and shares unadapted tensors', () => {
    const weights = randomGpt2Weights(cfg, 3);
    const adapter = fullAdapter(0, 2); // blocks 0 and 1 only
    const merged = mergeLoraIntoWeights(cfg, weights, adapter);
    const s = adapter.config.alpha / adapter.config.r;
    const rng = new Rng(77);
    const rows = 5;
    for (const [path, { A, B }] of adapter.layers) {
      const W = weights.get(`${path}.weight`)!;
      const Wm = merged.get(`${path}.weight`)!;
      expect(Wm).not.toBe(W);
      expect(Wm.shape).toEqual(W.shape);
      const [din, dout] = W.shape;
      const r = A.shape[1];
      const x = rng.fillNormal(new Float32Array(rows * din), 1);
      for (let n = 0; n < rows; n++) {
        const xa = new Float64Array(r);
        for (let k = 0; k < r; k++) for (let i = 0; i < din; i++) xa[k] += x[n * din + i] * A.data[i * r + k];
        for (let j = 0; j < dout; j++) {
          let viaMerged = 0;
          let direct = 0;
          for (let i = 0; i < din; i++) {
            viaMerged += x[n * din + i] * Wm.data[i * dout + j];
            direct += x[n * din + i] * W.data[i * dout + j];
          }
          let lora = 0;
          for (let k = 0; k < r; k++) lora += xa[k] * B.data[k * dout + j];
          direct += s * lora;
          expect(Math.abs(viaMerged - direct)).toBeLessThanOrEqual(1e-5 * Math.max(1, Math.abs(direct)));
        }
      }
    }
    // untouched tensors are shared, and the input is not modified
    expect(merged.get('h.2.attn.c_attn.weight')).toBe(weights.get('h.2.attn.c_attn.weight'));
    expect(merged.get('wte.weight')).toBe(weights.get('wte.weight'));
    expect(merged.size).toBe(weights.size);
    const fresh = randomGpt2Weights(cfg, 3);
    expect(Array.from(weights.get('h.0.attn.c_attn.weight')!.data)).toEqual(
      Array.from(fresh.get('h.0.attn.c_attn.weight')!.data),
    );
  });

  it('a fresh adapter (B = 0) merges to the same values', () => {
    const weights = randomGpt2Weights(cfg, 4);
    const adapter = initLoraAdapter(cfg, { r: 2, alpha: 4, targets: ['attn.c_attn'] }, 1);
    const merged = mergeLoraIntoWeights(cfg, weights, adapter);
    expect(Array.from(merged.get('h.1.attn.c_attn.weight')!.data)).toEqual(
      Array.from(weights.get('h.1.attn.c_attn.weight')!.data),
    );
  });

  it('rejects an adapter that does not fit the model', () => {
    const weights = randomGpt2Weights(cfg, 4);
    const big = initLoraAdapter({ ...cfg, nLayer: 5 }, { r: 2, alpha: 4, targets: ['attn.c_attn'] }, 1);
    expect(() => mergeLoraIntoWeights(cfg, weights, big)).toThrow('past the model');
    const wide = initLoraAdapter({ ...cfg, nEmbd: 16, nInner: 64 }, { r: 2, alpha: 4, targets: ['mlp.c_fc'] }, 1);
    expect(() => mergeLoraIntoWeights(cfg, weights, wide)).toThrow('h.0.mlp.c_fc');
  });
});
