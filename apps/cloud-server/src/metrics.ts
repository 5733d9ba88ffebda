/**
 * The cloud's Prometheus metrics, on a Registry of its own (not prom-client's global one: two
 * clouds in one process, as in the tests, must not share counters). The gauges read at scrape
 * time are registered by the part that owns the value (see `collected`).
 */
import { Counter, Gauge, Registry } from 'prom-client';

export interface CloudMetrics {
  readonly registry: Registry;
  frames: Counter<'type'>;
  bytes: Counter<'direction'>;
  frameErrors: Counter<'code'>;
  steps: Counter;
  tokens: Counter;
  rounds: Counter<'outcome'>;
  generateRefused: Counter<'code'>;
  generateServed: Counter;
}

export function createCloudMetrics(): CloudMetrics {
  const registry = new Registry();
  const registers = [registry];
  const counter = <L extends string>(name: string, help: string, labelNames: readonly L[] = []) =>
    new Counter<L>({ name, help, labelNames, registers });
  collected(registry, 'splitllm_process_resident_memory_bytes', 'resident set size of the cloud process', () =>
    process.memoryUsage.rss(),
  );
  return {
    registry,
    frames: counter('splitllm_cloud_frames_total', 'protocol frames received from edges, by type', ['type']),
    bytes: counter('splitllm_cloud_wire_bytes_total', 'bytes of protocol frames, by direction', ['direction']),
    frameErrors: counter('splitllm_cloud_frame_errors_total', 'frames answered with an error, by code', ['code']),
    steps: counter('splitllm_cloud_steps_total', 'tail-segment training steps'),
    tokens: counter('splitllm_cloud_tokens_total', 'tokens trained (counted targets)'),
    rounds: counter('splitllm_cloud_rounds_total', 'rounds ended, by outcome', ['outcome']),
    generateRefused: counter('splitllm_cloud_generate_refused_total', 'generation requests refused, by code', ['code']),
    generateServed: counter('splitllm_cloud_generate_total', 'next-token logits served to edges'),
  };
}

/** A gauge whose value is read when /metrics is scraped (NaN: no value yet). */
export function collected(registry: Registry, name: string, help: string, read: () => number): void {
  new Gauge({
    name,
    help,
    registers: [registry],
    collect() {
      this.set(read());
    },
  });
}
