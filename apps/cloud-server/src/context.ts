/**
 * The cloud's state as the routes see it: typed Fastify decorators on the app, set once by
 * app.ts before any route plugin is registered. The names carry a `cloud` prefix because the
 * declarations merge into Fastify's types for the whole TypeScript program, the edge server's
 * included.
 */
import type { LoraConfig, ModelConfig, SplitPlan, TokenizerWireFiles } from '@splitllm/model';
import type { BlocksSegment, TailSegment } from '@splitllm/onnx-runner';
import type { RunManifest, SegmentInfo, TrainSettings } from '@splitllm/wire';
import type { EdgeInfo, EdgeRegistry } from './edge-registry';
import type { CloudMetrics } from './metrics';
import type { Rounds } from './rounds';
import type { RoundStore } from './store';
import type { GlobalVersions } from './versions';

export type Tier = 'user' | 'edge';

/** Requests per minute per client IP on the routes anyone can call; 0 turns a limit off. */
export interface RateLimits {
  join: number;
  rejoin: number;
  /** join-token issuing: counts only requests without the operator token (guesses) */
  joinTokens: number;
}

/** The run: the model and its cut, the settings, what the cloud hands out, and its secrets. */
export interface CloudRun {
  config: ModelConfig;
  plan: SplitPlan;
  lora: LoraConfig;
  train: TrainSettings;
  /** `strategy` is the aggregation setting, e.g. 'fedavg' or 'gate-fedavg (margin 0.05)' */
  settings: { minEdges: number; minUsers: number; maxRounds: number; strategy: string };
  /** requests per minute per IP on join, rejoin and join-token issuing */
  rateLimits: RateLimits;
  manifest(): RunManifest;
  segments: Record<Tier, Uint8Array>;
  segmentInfo: Record<Tier, SegmentInfo>;
  tokenizer: TokenizerWireFiles;
  /** the largest frame an edge may send (a step, or its round upload) */
  frameLimit: number;
  /** edges prove this to register; user tokens are made with it */
  edgeSecret: string;
  /** issues join tokens */
  operatorToken: string;
}

/**
 * What the cloud runs of the model: with labels in the cloud, the tail (blocks [m, L), the head
 * and the loss); with labels on the device, blocks [m, L) alone (the tab runs the head).
 */
export type CloudSegment = { labels: 'cloud'; tail: TailSegment } | { labels: 'device'; blocks: BlocksSegment };

declare module 'fastify' {
  interface FastifyInstance {
    cloudRun: CloudRun;
    cloudEdges: EdgeRegistry;
    cloudRounds: Rounds;
    cloudVersions: GlobalVersions;
    cloudStore: RoundStore;
    cloudSegment: CloudSegment;
    cloudMetrics: CloudMetrics;
  }
  interface FastifyRequest {
    /** the registered edge whose token the request carries (set by `requireEdge`) */
    cloudEdge: EdgeInfo | null;
  }
}
