/**
 * One LoRA config and adapter type for both families (lora.ts): the target names say the family,
 * the shapes come from the model's config, and a target of the other family is refused by name
 * with a code wherever a run is set up.
 */
import { describe, expect, it } from 'vitest';
import {
  checkAdapterFits,
  checkLoraTargetsFit,
  defaultLoraConfig,
  GPT2_SMALL_CONFIG,
  initLoraAdapter,
  loraModulePath,
  loraParameterCount,
  loraTargetDims,
  parseAnyLoraTargets,
  parseLoraModulePath,
  parseLoraTargets,
  SMOLLM2_135M_CONFIG,
} from '../src';

const gpt2 = GPT2_SMALL_CONFIG;
const llama = SMOLLM2_135M_CONFIG;

describe('LoRA for either family', () => {
  it("gives each family's module paths and reads both back", () => {
    expect(loraModulePath(3, 'attn.c_attn')).toBe('h.3.attn.c_attn');
    expect(loraModulePath(3, 'q_proj')).toBe('layers.3.self_attn.q_proj');
    expect(loraModulePath(0, 'down_proj')).toBe('layers.0.mlp.down_proj');
    expect(parseLoraModulePath('h.11.mlp.c_proj')).toEqual({ layer: 11, target: 'mlp.c_proj' });
    expect(parseLoraModulePath('layers.2.mlp.gate_proj')).toEqual({ layer: 2, target: 'gate_proj' });
    expect(parseLoraModulePath('layers.2.self_attn.gate_proj')).toBeUndefined();
    expect(parseLoraModulePath('h.2.q_proj')).toBeUndefined();
  });

  it("takes each target's shape from the model's config, and refuses the other family's targets", () => {
    expect(loraTargetDims(gpt2, 'attn.c_attn')).toEqual([768, 2304]);
    // 9 query heads and 3 key-value heads of 64: q 576 wide, k and v 192
    expect(loraTargetDims(llama, 'q_proj')).toEqual([576, 576]);
    expect(loraTargetDims(llama, 'k_proj')).toEqual([576, 192]);
    expect(loraTargetDims(llama, 'down_proj')).toEqual([1536, 576]);
    expect(() => loraTargetDims(gpt2, 'q_proj')).toThrow(/"q_proj" is not one a GPT-2 model has/);
    expect(() => loraTargetDims(llama, 'attn.c_attn')).toThrow(/"attn\.c_attn" is not one a llama-family model has/);
    expect(() => checkLoraTargetsFit(gpt2, { targets: ['attn.c_attn', 'v_proj'] })).toThrow(
      expect.objectContaining({ code: 'BAD_LORA_TARGET' }),
    );
  });

  it("defaults to each family's PEFT default targets, and counts parameters by the family's shapes", () => {
    expect(defaultLoraConfig(gpt2).targets).toEqual(['attn.c_attn', 'attn.c_proj']);
    expect(defaultLoraConfig(llama).targets).toEqual(['q_proj', 'v_proj']);
    // r (in + out) per target per block: q 576 -> 576, v 576 -> 192
    expect(loraParameterCount(llama, defaultLoraConfig(llama), 0, 2)).toBe(2 * 8 * (576 + 576 + 576 + 192));
    const a = initLoraAdapter(llama, defaultLoraConfig(llama), 1, 0, 2);
    expect([...a.layers.keys()]).toEqual([
      'layers.0.self_attn.q_proj',
      'layers.0.self_attn.v_proj',
      'layers.1.self_attn.q_proj',
      'layers.1.self_attn.v_proj',
    ]);
    checkAdapterFits(llama, a);
    expect(() => checkAdapterFits(gpt2, a)).toThrow(/unknown module "layers\.0\.self_attn\.q_proj"/);
    expect(() => initLoraAdapter(gpt2, defaultLoraConfig(llama), 1)).toThrow(/not one a GPT-2 model has/);
  });

  it('parses a flag of either family before the model is known, and a mixed or unknown one not at all', () => {
    expect(parseAnyLoraTargets('attn.c_attn, mlp.c_fc')).toEqual(['attn.c_attn', 'mlp.c_fc']);
    expect(parseAnyLoraTargets('q_proj,mlp.up_proj,q_proj')).toEqual(['q_proj', 'up_proj']);
    expect(() => parseAnyLoraTargets('q_proj,attn.c_attn')).toThrow(/unknown LoRA target "attn\.c_attn"/);
    expect(() => parseAnyLoraTargets('wq')).toThrow(expect.objectContaining({ code: 'BAD_LORA_TARGET' }));
    // with the model's config, the family's own names only
    expect(parseLoraTargets('gate_proj', llama)).toEqual(['gate_proj']);
    expect(() => parseLoraTargets('gate_proj', gpt2)).toThrow(/for a GPT-2 model/);
  });
});
