/**
 * The one tensor type of the reference math: row-major float32 data plus a shape.
 * Kept deliberately plain (no strides, no views) so that the same object can be handed to
 * onnxruntime, copied into a GPU buffer or written to safetensors without adaptation.
 */
export interface Tensor {
  shape: number[];
  data: Float32Array;
}

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function tensor(shape: number[], data?: Float32Array | number[]): Tensor {
  const n = numel(shape);
  const buf = data === undefined ? new Float32Array(n) : data instanceof Float32Array ? data : Float32Array.from(data);
  if (buf.length !== n)
    throw new Error(`tensor data has ${buf.length} elements, shape [${shape.join(', ')}] needs ${n}`);
  return { shape: [...shape], data: buf };
}

export function zerosLike(t: Tensor): Tensor {
  return { shape: [...t.shape], data: new Float32Array(t.data.length) };
}

export function cloneTensor(t: Tensor): Tensor {
  return { shape: [...t.shape], data: t.data.slice() };
}

export function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

export function assertShape(t: Tensor, shape: readonly number[], what: string): void {
  if (!sameShape(t.shape, shape)) {
    throw new Error(`${what}: expected shape [${shape.join(', ')}], got [${t.shape.join(', ')}]`);
  }
}
