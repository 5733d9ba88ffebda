/**
 * The edge tier runs its segment through onnxruntime-node. Its install script (CUDA download)
 * is skipped offline; this proves the native binding shipped inside the npm package loads and
 * runs a graph written by the project's ONNX writer on the CPU provider.
 */
import { GraphBuilder } from '@splitllm/onnx';
import * as ort from 'onnxruntime-node';
import { describe, expect, it } from 'vitest';

describe('onnxruntime-node', () => {
  it('loads its native binding and runs a graph on the cpu provider', async () => {
    expect(ort.listSupportedBackends().map((b) => b.name)).toContain('cpu');
    const g = new GraphBuilder('relu');
    g.output('y', g.op('Relu', [g.input('x', 'float32', [2])]), 'float32', [2]);
    const session = await ort.InferenceSession.create(g.toModel(), { executionProviders: ['cpu'] });
    const out = await session.run({ x: new ort.Tensor('float32', Float32Array.from([-1.5, 2.5]), [2]) });
    expect(Array.from(out.y.data as Float32Array)).toEqual([0, 2.5]);
  });
});
