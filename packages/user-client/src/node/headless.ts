/**
 * A headless user: a Node process that plays a browser user with the same protocol and the
 * same client, training on a local text file. The engine is a setting ('auto': WGSL on a
 * hardware WebGPU adapter, onnxruntime-web's wasm without an adapter, the faster of the two,
 * timed, on a software adapter; see createUserTrainer) and is reported when it starts.
 */
import { readFileSync } from 'node:fs';
import { WebSocket } from 'ws';
import { joinRun, tokenBatches, UserClient, type JoinCredentials, type UserEvent, type WebSocketLike } from '../client';
import type { UserEngineKind } from '../trainer';
import { nodeGpu } from './gpu';

export interface HeadlessUserOptions {
  /** join through the cloud with a token, or reuse credentials */
  cloudUrl?: string;
  joinToken?: string;
  credentials?: JoinCredentials;
  dataFile: string;
  seed: number;
  engine: UserEngineKind | 'auto';
  onEvent?: (e: UserEvent) => void;
}

export async function startHeadlessUser(o: HeadlessUserOptions): Promise<UserClient> {
  let text: string;
  try {
    text = readFileSync(o.dataFile, 'utf8');
  } catch (e) {
    throw new Error(
      `cannot read the training text "${o.dataFile}": ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
    );
  }
  let credentials = o.credentials;
  if (!credentials) {
    if (!o.cloudUrl || !o.joinToken) throw new Error('a headless user needs --cloud and --join-token (or credentials)');
    credentials = await joinRun(o.cloudUrl, o.joinToken);
  }
  let tokens: number[] | undefined;
  const client: UserClient = new UserClient({
    credentials,
    cloudUrl: o.cloudUrl,
    engine: o.engine,
    getGpu: nodeGpu,
    WebSocket: WebSocket as unknown as new (url: string) => WebSocketLike,
    onEvent: o.onEvent,
    batches: (B, T, c) => {
      if (!tokens) throw new Error('the text is not tokenized yet');
      return batchesOf(B, T, c);
    },
  });
  // tokenize with the run's own tokenizer (served by the edge) before the first turn can come
  const tokenizer = await client.tokenizer();
  tokens = tokenizer.encode(text);
  if (tokens.length < 2) throw new Error(`the training text "${o.dataFile}" has fewer than 2 tokens`);
  const batchesOf = tokenBatches(tokens, o.seed);
  await client.start();
  return client;
}
