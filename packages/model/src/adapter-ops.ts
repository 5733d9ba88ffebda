/**
 * Copies, subsets and the named-tensor (wire) form of LoRA adapters, and the error every adapter
 * check throws. Browser-safe.
 */
import { AdapterCheckError } from './adapter-error';
import { type LoraAdapter, type LoraConfig, type LoraPair, loraTargetOrder, parseLoraModulePath } from './lora';
import { type Tensor, numel } from './tensor';

export { type AdapterCheckCode, AdapterCheckError } from './adapter-error';

export function cloneTensorCopy(t: Tensor): Tensor {
  return { shape: [...t.shape], data: t.data.slice() };
}

export function cloneLoraConfig(c: LoraConfig): LoraConfig {
  return { r: c.r, alpha: c.alpha, targets: [...c.targets] };
}

export function cloneAdapter(a: LoraAdapter): LoraAdapter {
  const layers = new Map<string, LoraPair>();
  for (const [path, { A, B }] of a.layers) layers.set(path, { A: cloneTensorCopy(A), B: cloneTensorCopy(B) });
  return { config: cloneLoraConfig(a.config), layers };
}

export function adapterElementCount(a: LoraAdapter): number {
  let n = 0;
  for (const { A, B } of a.layers.values()) n += A.data.length + B.data.length;
  return n;
}

/** Modules whose block index is in [fromLayer, toLayer), with copied arrays (the result may be trained in place). */
export function adapterSubset(adapter: LoraAdapter, fromLayer: number, toLayer: number): LoraAdapter {
  const layers = new Map<string, LoraPair>();
  for (const [path, { A, B }] of adapter.layers) {
    const parsed = parseLoraModulePath(path);
    if (!parsed) throw new AdapterCheckError('ADAPTER_MODULE', `adapter: unknown module "${path}"`);
    if (parsed.layer >= fromLayer && parsed.layer < toLayer) {
      layers.set(path, { A: cloneTensorCopy(A), B: cloneTensorCopy(B) });
    }
  }
  return { config: cloneLoraConfig(adapter.config), layers };
}

// ---------------------------------------------------------------- wire form

/**
 * The adapter's A and B arrays as flat named tensors for a wire frame:
 * `${prefix}{module path}.lora_A` / `.lora_B` (`h.3.attn.c_attn`, `layers.3.self_attn.q_proj`). The
 * arrays are shared, not copied (the encoder only reads them).
 */
export function adapterToNamedTensors(
  a: LoraAdapter,
  prefix = '',
): Map<string, { data: Float32Array; shape: number[] }> {
  const out = new Map<string, { data: Float32Array; shape: number[] }>();
  for (const [path, { A, B }] of a.layers) {
    out.set(`${prefix}${path}.lora_A`, { data: A.data, shape: [...A.shape] });
    out.set(`${prefix}${path}.lora_B`, { data: B.data, shape: [...B.shape] });
  }
  return out;
}

const NAMED_RE = /^((?:h|layers)\.(?:0|[1-9]\d*)\.[a-z_.]+)\.lora_([AB])$/;

/**
 * Inverse of adapterToNamedTensors. Only names starting with `prefix` are taken; each of those
 * must be a LoRA half of one of the config's targets (else ADAPTER_MODULE), float32, 2-D with
 * rank r where it must be (else ADAPTER_SHAPE). Arrays are copied, so the adapter does not
 * alias a frame buffer that may be reused. Full shape and config checks against the global
 * adapter are checkAdapterUpdate's job.
 */
export function adapterFromNamedTensors(
  config: LoraConfig,
  tensors: Map<string, { data: Float32Array | Int32Array; shape: number[] }>,
  prefix = '',
): LoraAdapter {
  const halves = new Map<string, { layer: number; target: number; A?: Tensor; B?: Tensor }>();
  for (const [name, t] of tensors) {
    if (!name.startsWith(prefix)) continue;
    const rest = name.slice(prefix.length);
    const m = NAMED_RE.exec(rest);
    const parsed = m ? parseLoraModulePath(m[1]) : undefined;
    if (!m || !parsed || !config.targets.includes(parsed.target)) {
      throw new AdapterCheckError(
        'ADAPTER_MODULE',
        `adapter tensor "${name}" is not ${prefix}{module of target ${config.targets.join('|')}}.lora_A/lora_B`,
      );
    }
    if (!(t.data instanceof Float32Array)) {
      throw new AdapterCheckError('ADAPTER_SHAPE', `adapter tensor "${name}" must be float32`);
    }
    const half = m[2] as 'A' | 'B';
    const rankDim = half === 'A' ? t.shape[1] : t.shape[0];
    if (t.shape.length !== 2 || rankDim !== config.r || t.data.length !== numel(t.shape)) {
      throw new AdapterCheckError(
        'ADAPTER_SHAPE',
        `adapter tensor "${name}" has shape [${t.shape.join(', ')}] with ${t.data.length} values; ` +
          `lora_${half} must be ${half === 'A' ? '[in, r]' : '[r, out]'} with r = ${config.r}`,
      );
    }
    const path = m[1];
    const h = halves.get(path) ?? { layer: parsed.layer, target: loraTargetOrder(parsed.target) };
    h[half] = { shape: [...t.shape], data: t.data.slice() };
    halves.set(path, h);
  }
  // canonical order (block, then target), as the PEFT reader produces it
  const sorted = [...halves].sort(([, a], [, b]) => a.layer - b.layer || a.target - b.target);
  const layers = new Map<string, LoraPair>();
  for (const [path, h] of sorted) {
    if (!h.A || !h.B) {
      throw new AdapterCheckError(
        'ADAPTER_MODULE',
        `adapter module "${prefix}${path}" has lora_${h.A ? 'A' : 'B'} but no lora_${h.A ? 'B' : 'A'}`,
      );
    }
    layers.set(path, { A: h.A, B: h.B });
  }
  return { config: cloneLoraConfig(config), layers };
}
