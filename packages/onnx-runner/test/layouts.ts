/**
 * The runner layouts both segment tests (GPT-2's runner.test.ts, LLaMA's llama-segments.test.ts) run
 * every case under: one SegmentRunner per layout on onnxruntime-node's cpu provider with one thread
 * (deterministic), started before the file's tests and closed after them.
 */
import { afterAll, beforeAll } from 'vitest';
import { type RunnerOptions, SegmentRunner } from '../src/index';

/** Registers the file's beforeAll / afterAll; the map is filled once beforeAll has run. */
export function runnersPerLayout(layouts: Record<string, Partial<RunnerOptions>>): Map<string, SegmentRunner> {
  const runners = new Map<string, SegmentRunner>();
  beforeAll(async () => {
    for (const [name, o] of Object.entries(layouts))
      runners.set(name, await SegmentRunner.start({ provider: 'cpu', threads: 1, ...o }));
  });
  afterAll(async () => {
    for (const r of runners.values()) await r.close();
  });
  return runners;
}
