/**
 * PEFT layout of LLaMA-family LoRA adapters (formats/peft-llama.ts) and PEFT's regex form of
 * `target_modules` for both families (formats/peft.ts): key names, shapes and values as PEFT
 * stores them for nn.Linear, round trips, the regex and list forms read as PEFT reads them, and
 * every bad adapter refused with the file and the tensor or setting named. Tiny configs, temp dirs.
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Gpt2Config } from '../src/config';
import { PeftError, adapterFromPeft, adapterToPeft } from '../src/formats/peft';
import { LLAMA_PEFT_KEY_PREFIX, llamaAdapterFromPeft, llamaAdapterToPeft } from '../src/formats/peft-llama';
import { parseSafetensors, readSafetensors, writeSafetensors } from '../src/formats/safetensors';
import type { LlamaConfig } from '../src/llama-config';
import { tinyLlamaConfig, withRandomLoraB } from '../src/llama-fixtures';
import {
  LLAMA_LORA_TARGETS,
  type LlamaLoraAdapter,
  type LlamaLoraTarget,
  initLlamaLoraAdapter,
  llamaLoraModulePath,
  llamaLoraTargetDims,
} from '../src/llama-lora';
import { LORA_TARGETS, type LoraAdapter, initLoraAdapter } from '../src/lora';
import { loadLlamaAdapterDir, saveLlamaAdapterDir } from '../src/node/llama-io';
import { Rng } from '../src/rng';
import type { Tensor } from '../src/tensor';

/** GQA (4 query heads of width 4, 2 kv heads), SwiGLU width 24, 3 layers: every target has its own shape. */
const cfg: LlamaConfig = tinyLlamaConfig({
  vocabSize: 40,
  hiddenSize: 16,
  intermediateSize: 24,
  headDim: 4,
  tieWordEmbeddings: false,
});

/** An adapter with non-zero A and B (a fresh one has B = 0, which would hide a transposition). */
function adapterFor(
  targets: LlamaLoraTarget[] = [...LLAMA_LORA_TARGETS],
  from = 0,
  to = cfg.nLayer,
  seed = 5,
): LlamaLoraAdapter {
  return withRandomLoraB(initLlamaLoraAdapter(cfg, { r: 4, alpha: 8, targets }, seed, from, to), seed + 100, 0.1);
}

function expectSameAdapter(a: LlamaLoraAdapter, b: LlamaLoraAdapter): void {
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

function peftError(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(PeftError);
    return (e as Error).message;
  }
  throw new Error('expected a PeftError');
}

const key = (layer: number, t: LlamaLoraTarget, side: 'A' | 'B') =>
  `${LLAMA_PEFT_KEY_PREFIX}${llamaLoraModulePath(layer, t)}.lora_${side}.weight`;

const tmpDirs: string[] = [];
afterAll(() => {
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
});

describe('llamaAdapterToPeft', () => {
  it("writes PEFT's key names, [r, in] / [out, r] shapes, transposed values and config", () => {
    const adapter = adapterFor();
    const { config, safetensors } = llamaAdapterToPeft(adapter, { baseModel: 'tiny-llama', nLayer: cfg.nLayer });
    expect(config).toMatchObject({
      peft_type: 'LORA',
      task_type: 'CAUSAL_LM',
      base_model_name_or_path: 'tiny-llama',
      r: 4,
      lora_alpha: 8,
      target_modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'],
      fan_in_fan_out: false,
      bias: 'none',
      lora_dropout: 0,
      modules_to_save: null,
      layers_to_transform: null,
    });
    const parsed = parseSafetensors(safetensors);
    expect(parsed.metadata).toEqual({ format: 'pt' });
    const expected: string[] = [];
    for (let i = 0; i < cfg.nLayer; i++) {
      for (const t of LLAMA_LORA_TARGETS) expected.push(key(i, t, 'A'), key(i, t, 'B'));
    }
    expect([...parsed.tensors.keys()]).toEqual(expected);
    expect(expected[0]).toBe('base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight');
    expect(expected[13]).toBe('base_model.model.model.layers.0.mlp.down_proj.lora_B.weight');
    const raw = readSafetensors(safetensors);
    for (let i = 0; i < cfg.nLayer; i++) {
      for (const t of LLAMA_LORA_TARGETS) {
        const [din, dout] = llamaLoraTargetDims(cfg, t);
        const A = raw.get(key(i, t, 'A'))!;
        const B = raw.get(key(i, t, 'B'))!;
        expect(A.shape).toEqual([4, din]);
        expect(B.shape).toEqual([dout, 4]);
        const ours = adapter.layers.get(llamaLoraModulePath(i, t))!;
        // lora_A[k][j] = A[j][k], lora_B[j][k] = B[k][j]
        expect(A.data[1 * din + 2]).toBe(ours.A.data[2 * 4 + 1]);
        expect(B.data[3 * 4 + 2]).toBe(ours.B.data[2 * dout + 3]);
      }
    }
  });

  it("PEFT's forward on the stored tensors, x lora_A^T lora_B^T, is our x A B", () => {
    const adapter = adapterFor(['o_proj', 'down_proj']);
    const raw = readSafetensors(llamaAdapterToPeft(adapter).safetensors);
    const rng = new Rng(3);
    for (const t of ['o_proj', 'down_proj'] as const) {
      const [din, dout] = llamaLoraTargetDims(cfg, t);
      const x = rng.fillNormal(new Float32Array(din), 1);
      const { A, B } = adapter.layers.get(llamaLoraModulePath(1, t))!;
      const pa = raw.get(key(1, t, 'A'))!.data; // [r, in]
      const pb = raw.get(key(1, t, 'B'))!.data; // [out, r]
      for (let j = 0; j < dout; j++) {
        let ours = 0;
        let peft = 0;
        for (let k = 0; k < 4; k++) {
          let xa = 0;
          let xpa = 0;
          for (let i = 0; i < din; i++) {
            xa += x[i] * A.data[i * 4 + k];
            xpa += x[i] * pa[k * din + i];
          }
          ours += xa * B.data[k * dout + j];
          peft += xpa * pb[j * 4 + k];
        }
        // the same products in the same order: equal to the last bit
        expect(peft).toBe(ours);
      }
    }
  });

  it('a partial adapter lists layers_to_transform with layers_pattern "layers"', () => {
    const { config } = llamaAdapterToPeft(adapterFor(['q_proj', 'v_proj'], 1, 3), { nLayer: cfg.nLayer });
    expect(config.layers_to_transform).toEqual([1, 2]);
    expect(config.layers_pattern).toBe('layers');
    expect(config.base_model_name_or_path).toBe(null);
  });

  it('refuses an adapter PEFT could not express, naming the module', () => {
    const holed = adapterFor(['q_proj', 'v_proj']);
    holed.layers.delete('layers.1.self_attn.v_proj');
    expect(peftError(() => llamaAdapterToPeft(holed))).toContain('layer 1 has no weights for target v_proj');
    const stray = adapterFor(['q_proj']);
    stray.layers.set('layers.0.mlp.up_proj', adapterFor(['up_proj']).layers.get('layers.0.mlp.up_proj')!);
    expect(peftError(() => llamaAdapterToPeft(stray))).toContain('"layers.0.mlp.up_proj" is not one of');
    expect(peftError(() => llamaAdapterToPeft(adapterFor(), { nLayer: 2 }))).toContain("past the model's 2 layers");
  });
});

describe('llamaAdapterFromPeft', () => {
  it('round-trips (through JSON text), with and without the model', () => {
    for (const targets of [[...LLAMA_LORA_TARGETS], ['q_proj', 'v_proj']] as LlamaLoraTarget[][]) {
      const adapter = adapterFor(targets);
      const { config, safetensors } = llamaAdapterToPeft(adapter, { nLayer: cfg.nLayer });
      const json = JSON.parse(JSON.stringify(config));
      expectSameAdapter(adapter, llamaAdapterFromPeft(json, safetensors));
      expectSameAdapter(adapter, llamaAdapterFromPeft(json, safetensors, { model: cfg }));
    }
    const partial = adapterFor(['gate_proj', 'up_proj', 'down_proj'], 1, 3);
    const p = llamaAdapterToPeft(partial, { nLayer: cfg.nLayer });
    expectSameAdapter(partial, llamaAdapterFromPeft(p.config, p.safetensors, { model: cfg }));
  });

  it("reads PEFT's own spellings: suffix names, `.default` keys, fan_in_fan_out true, no task_type", () => {
    const adapter = adapterFor(['q_proj', 'v_proj']);
    const { config, safetensors } = llamaAdapterToPeft(adapter);
    const renamed = new Map<string, Tensor>();
    for (const [k, t] of readSafetensors(safetensors)) renamed.set(k.replace(/\.weight$/, '.default.weight'), t);
    const cfgVariant = {
      ...config,
      target_modules: ['self_attn.q_proj', 'model.layers.0.self_attn.v_proj', 'v_proj'],
      fan_in_fan_out: true, // PEFT turns it off for nn.Linear
      task_type: undefined,
    };
    expectSameAdapter(adapter, llamaAdapterFromPeft(cfgVariant, writeSafetensors(renamed)));
  });

  describe('regex target_modules', () => {
    const adapter = adapterFor(['q_proj', 'v_proj']);
    const { config, safetensors } = llamaAdapterToPeft(adapter);
    const read = (tm: string, extra: Record<string, unknown> = {}, model?: LlamaConfig) =>
      llamaAdapterFromPeft(
        { ...config, target_modules: tm, layers_to_transform: null, layers_pattern: null, ...extra },
        safetensors,
        { model },
      );

    it('accepts a pattern that selects the same targets on every layer', () => {
      for (const tm of [
        '.*\\.(q_proj|v_proj)',
        'model\\.layers\\.\\d+\\.self_attn\\.(q|v)_proj',
        '.*(?P<which>q|v)_proj',
        '^.*self_attn\\.[qv]_proj$',
      ]) {
        expectSameAdapter(adapter, read(tm));
        expectSameAdapter(adapter, read(tm, {}, cfg));
      }
      const all = adapterFor();
      const a = llamaAdapterToPeft(all, { nLayer: cfg.nLayer });
      expectSameAdapter(all, llamaAdapterFromPeft({ ...a.config, target_modules: 'all-linear' }, a.safetensors));
      expectSameAdapter(all, llamaAdapterFromPeft({ ...a.config, target_modules: '.*_proj' }, a.safetensors));
      // exclude_modules is applied first, as in PEFT
      const ex = { ...a.config, target_modules: '.*_proj', exclude_modules: ['mlp.gate_proj', 'up_proj', 'down_proj'] };
      const attnOnly = peftError(() => llamaAdapterFromPeft(ex, a.safetensors));
      expect(attnOnly).toContain('mlp.gate_proj.lora_A.weight" is for layers.0.mlp.gate_proj');
      const attn = adapterFor(['q_proj', 'k_proj', 'v_proj', 'o_proj']);
      const b = llamaAdapterToPeft(attn, { nLayer: cfg.nLayer });
      const exRegex = { ...b.config, target_modules: '.*_proj', exclude_modules: '.*\\.mlp\\..*' };
      expectSameAdapter(attn, llamaAdapterFromPeft(exRegex, b.safetensors));
    });

    it('refuses one that selects modules we do not have, naming the module', () => {
      expect(peftError(() => read('.*'))).toContain('selects "model", which is not a LoRA target');
      expect(peftError(() => read('.*(lm_head|q_proj|v_proj)'))).toContain('selects "lm_head"');
      expect(peftError(() => read('.*self_attn.*'))).toContain('selects "model.layers.0.self_attn"');
      expect(peftError(() => read('.*embed_tokens|.*[qv]_proj'))).toContain('"model.embed_tokens"');
    });

    it('refuses one that selects only some layers, naming them', () => {
      const msg = peftError(() => read('model\\.layers\\.[01]\\.self_attn\\.[qv]_proj'));
      expect(msg).toContain('on layers 0, 1 only, not on layer 2');
      expect(msg).toContain('adapter_config.json');
      // with the model known, its 4th layer counts too
      const deeper: LlamaConfig = { ...cfg, nLayer: 4 };
      expect(peftError(() => read('model\\.layers\\.[0-2]\\..*[qv]_proj', {}, deeper))).toContain('not on layer 3');
      // a pattern for every layer of a 4-layer model whose file lacks layer 3: the tensor is named
      expect(peftError(() => read('.*[qv]_proj', {}, deeper))).toContain(
        'tensor "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight" is missing',
      );
      // q on layer 0 only, v everywhere: not one set of targets on every layer
      expect(peftError(() => read('model\\.layers\\.0\\.self_attn\\.q_proj|.*v_proj'))).toContain(
        'selects q_proj on layer 0 but not on layers 1, 2',
      );
    });

    it('refuses what PEFT refuses or we cannot read', () => {
      expect(peftError(() => read('q_proj'))).toContain('selects no module');
      expect(peftError(() => read('(?i).*Q_PROJ'))).toContain('syntax we cannot read');
      expect(peftError(() => read('.*[qv]_proj', { layers_to_transform: [0, 1] }))).toContain(
        '"layers_to_transform" cannot be used when "target_modules" is a string',
      );
    });
  });

  describe('bad adapters: one error naming the file and the tensor or setting', () => {
    const adapter = adapterFor();
    const { config, safetensors } = llamaAdapterToPeft(adapter, { nLayer: cfg.nLayer });
    const raw = () => new Map(readSafetensors(safetensors));

    it('a LoRA target the model lacks', () => {
      expect(peftError(() => llamaAdapterFromPeft({ ...config, target_modules: ['c_attn'] }, safetensors))).toBe(
        'adapter_config.json: "target_modules" entry "c_attn" names no module of the model ' +
          '(its LoRA targets: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)',
      );
      expect(
        peftError(() => llamaAdapterFromPeft({ ...config, target_modules: ['q_proj', 'lm_head'] }, safetensors)),
      ).toContain('selects "lm_head", which is not a LoRA target');
      const head = raw();
      head.set('base_model.model.lm_head.lora_A.weight', { shape: [4, 16], data: new Float32Array(64) });
      expect(peftError(() => llamaAdapterFromPeft(config, writeSafetensors(head)))).toContain(
        'adapter_model.safetensors: tensor "base_model.model.lm_head.lora_A.weight" is not the LoRA weight',
      );
      const gpt2Key = raw();
      gpt2Key.set('base_model.model.transformer.h.0.attn.c_attn.lora_A.weight', {
        shape: [4, 16],
        data: new Float32Array(64),
      });
      expect(peftError(() => llamaAdapterFromPeft(config, writeSafetensors(gpt2Key)))).toContain('attn.c_attn');
      // q_proj filed under mlp is not a module of the model
      const misfiled = raw();
      misfiled.set('base_model.model.model.layers.0.mlp.q_proj.lora_A.weight', misfiled.get(key(0, 'q_proj', 'A'))!);
      expect(peftError(() => llamaAdapterFromPeft(config, writeSafetensors(misfiled)))).toContain(
        'layers.0.mlp.q_proj.lora_A.weight" is not the LoRA weight',
      );
      // a layer past the model's last
      expect(peftError(() => llamaAdapterFromPeft(config, safetensors, { model: { ...cfg, nLayer: 2 } }))).toContain(
        'tensor "base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight" is for layer 2, but the model has 2',
      );
      // a tensor for a target the config does not list
      expect(
        peftError(() => llamaAdapterFromPeft({ ...config, target_modules: ['q_proj', 'k_proj'] }, safetensors)),
      ).toContain('tensor "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight" is for');
    });

    it('a missing tensor', () => {
      const half = raw();
      half.delete(key(1, 'v_proj', 'B'));
      expect(peftError(() => llamaAdapterFromPeft(config, writeSafetensors(half)))).toBe(
        'adapter_model.safetensors: tensor "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight" ' +
          'is missing (adapter_config.json selects layers.1.self_attn.v_proj)',
      );
      const noLayer = raw();
      for (const t of LLAMA_LORA_TARGETS) for (const s of ['A', 'B'] as const) noLayer.delete(key(1, t, s));
      expect(peftError(() => llamaAdapterFromPeft(config, writeSafetensors(noLayer)))).toContain(
        'tensor "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight" is missing',
      );
      expect(peftError(() => llamaAdapterFromPeft(config, writeSafetensors(new Map())))).toContain('no LoRA tensors');
    });

    it('a shape mismatch', () => {
      // against the model: k_proj's out is the kv width 8, not 16
      const wide = raw();
      wide.set(key(2, 'k_proj', 'B'), { shape: [16, 4], data: new Float32Array(64) });
      expect(peftError(() => llamaAdapterFromPeft(config, writeSafetensors(wide), { model: cfg }))).toBe(
        'adapter_model.safetensors: tensor "base_model.model.model.layers.2.self_attn.k_proj.lora_B.weight" ' +
          'is [16, 4], expected [8, 4] (r = 4)',
      );
      // without the model: the kv width disagrees with layer 0's k_proj
      const msg = peftError(() => llamaAdapterFromPeft(config, writeSafetensors(wide)));
      expect(msg).toContain('layers.2.self_attn.k_proj.lora_B.weight" is [16, 4], expected [8, 4]');
      expect(msg).toContain('the kv width 8 of "base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"');
      // the hidden width ties q_proj's input to down_proj's output
      const down = raw();
      down.set(key(0, 'down_proj', 'B'), { shape: [12, 4], data: new Float32Array(48) });
      expect(peftError(() => llamaAdapterFromPeft(config, writeSafetensors(down)))).toContain(
        'layers.0.mlp.down_proj.lora_B.weight" is [12, 4], expected [16, 4]',
      );
      // r disagrees with the config
      expect(peftError(() => llamaAdapterFromPeft({ ...config, r: 8 }, safetensors))).toContain(
        'layers.0.self_attn.q_proj.lora_A.weight" is [4, 16], expected [8, 16] (r = 8)',
      );
      const oneD = raw();
      oneD.set(key(0, 'q_proj', 'A'), { shape: [64], data: new Float32Array(64) });
      expect(peftError(() => llamaAdapterFromPeft(config, writeSafetensors(oneD)))).toContain('expected 2-D');
    });

    it('settings that change the math', () => {
      const bad: Array<[Record<string, unknown>, string]> = [
        [{ peft_type: 'IA3' }, '"peft_type" is "IA3"'],
        [{ task_type: 'SEQ_CLS' }, '"task_type" is "SEQ_CLS"'],
        [{ r: 0 }, '"r" must be a positive integer'],
        [{ lora_alpha: 0 }, '"lora_alpha"'],
        [{ bias: 'all' }, '"bias" "all"'],
        [{ use_dora: true }, '"use_dora"'],
        [{ use_rslora: true }, '"use_rslora"'],
        [{ modules_to_save: ['lm_head'] }, '"modules_to_save"'],
        [{ rank_pattern: { q_proj: 2 } }, '"rank_pattern"'],
        [{ target_modules: [] }, '"target_modules" must be'],
        [{ layers_to_transform: [0], layers_pattern: 'h' }, '"layers_pattern" "h"'],
      ];
      for (const [patch, part] of bad) {
        const msg = peftError(() => llamaAdapterFromPeft({ ...config, ...patch }, safetensors));
        expect(msg.startsWith('adapter_config.json: '), msg).toBe(true);
        expect(msg).toContain(part);
      }
    });
  });
});

describe('saveLlamaAdapterDir / loadLlamaAdapterDir', () => {
  it('round-trip into a directory, and errors name the path', () => {
    const dir = mkdtempSync(join(tmpdir(), 'splitllm-peft-llama-'));
    tmpDirs.push(dir);
    const adapter = adapterFor(['q_proj', 'v_proj', 'down_proj']);
    saveLlamaAdapterDir(dir, adapter, { baseModel: 'moby-llama-tiny', nLayer: cfg.nLayer });
    expect(readdirSync(dir).sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']); // no temp files
    const json = JSON.parse(readFileSync(join(dir, 'adapter_config.json'), 'utf8'));
    expect(json.target_modules).toEqual(['q_proj', 'v_proj', 'down_proj']);
    expectSameAdapter(adapter, loadLlamaAdapterDir(dir));
    expectSameAdapter(adapter, loadLlamaAdapterDir(dir, cfg));
    // the model's dimensions checked on load
    const msg = peftError(() => loadLlamaAdapterDir(dir, { ...cfg, hiddenSize: 32, headDim: 8 }));
    expect(msg).toContain(`${join(dir, 'adapter_model.safetensors')}: tensor "${key(0, 'q_proj', 'A')}"`);
    // a config error names adapter_config.json
    writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify({ ...json, target_modules: ['c_fc'] }));
    expect(peftError(() => loadLlamaAdapterDir(dir))).toContain(
      `${join(dir, 'adapter_config.json')}: "target_modules"`,
    );
    // a corrupt weights file
    writeFileSync(join(dir, 'adapter_model.safetensors'), new Uint8Array([1, 2, 3]));
    writeFileSync(join(dir, 'adapter_config.json'), JSON.stringify(json));
    expect(() => loadLlamaAdapterDir(dir)).toThrow(join(dir, 'adapter_model.safetensors'));
    rmSync(join(dir, 'adapter_model.safetensors'));
    expect(() => loadLlamaAdapterDir(dir)).toThrow(`adapter directory ${dir} has no adapter_model.safetensors`);
  });
});

describe('GPT-2 adapters: regex target_modules', () => {
  const gcfg: Gpt2Config = {
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
  const gptAdapter = (targets = [...LORA_TARGETS]): LoraAdapter => {
    const a = initLoraAdapter(gcfg, { r: 2, alpha: 4, targets }, 7);
    const rng = new Rng(8);
    for (const { B } of a.layers.values()) rng.fillNormal(B.data, 0.1);
    return a;
  };

  it('accepts a pattern that selects known targets on every block', () => {
    const all = gptAdapter();
    const { config, safetensors } = adapterToPeft(all);
    for (const tm of ['.*\\.(c_attn|c_proj|c_fc)', 'transformer\\.h\\.\\d+\\.(attn|mlp)\\.c_\\w+', 'all-linear']) {
      const back = adapterFromPeft(
        { ...config, target_modules: tm, layers_to_transform: null, layers_pattern: null },
        safetensors,
      );
      expect(back.config).toEqual(all.config);
      expect(Array.from(back.layers.get('h.2.mlp.c_fc')!.B.data)).toEqual(
        Array.from(all.layers.get('h.2.mlp.c_fc')!.B.data),
      );
    }
    const attn = gptAdapter(['attn.c_attn', 'attn.c_proj']);
    const a = adapterToPeft(attn);
    const regex = {
      ...a.config,
      target_modules: '.*attn\\.c_(attn|proj)',
      layers_to_transform: null,
      layers_pattern: null,
    };
    const back = adapterFromPeft(regex, a.safetensors, { nLayer: 3 });
    expect(back.config.targets).toEqual(['attn.c_attn', 'attn.c_proj']);
  });

  it('refuses one that selects other modules or some blocks, naming them', () => {
    const { config, safetensors } = adapterToPeft(gptAdapter());
    const read = (tm: string, opts = {}) =>
      adapterFromPeft(
        { ...config, target_modules: tm, layers_to_transform: null, layers_pattern: null },
        safetensors,
        opts,
      );
    expect(peftError(() => read('.*attn.*'))).toContain('selects "transformer.h.0.attn", which is not a LoRA target');
    expect(peftError(() => read('.*c_attn|lm_head'))).toContain('selects "lm_head"');
    expect(peftError(() => read('transformer\\.h\\.[01]\\..*c_attn'))).toContain('on layers 0, 1 only, not on layer 2');
    expect(peftError(() => read('.*\\.h\\.[0-2]\\.(attn|mlp)\\.c_(attn|proj|fc)', { nLayer: 5 }))).toContain(
      'not on layers 3, 4',
    );
    // a bare name is a regex that fullmatches no whole module name: PEFT too would find nothing
    expect(peftError(() => read('c_attn'))).toContain('selects no module');
    expect(
      peftError(() => adapterFromPeft({ ...config, target_modules: '.*c_fc', layers_to_transform: [0] }, safetensors)),
    ).toContain('"layers_to_transform" cannot be used');
  });
});
