/**
 * What the page keeps in this browser's IndexedDB (idb-keyval's default store), shared by the
 * page and its training worker. Nothing here is ever sent anywhere: the private documents stay
 * in this store, and only the worker's activations, labels and adapter leave the tab.
 *
 *   docs      the private documents (text)                       written by the page
 *   session   cloud URL, credentials, engine choice, data seed   written by the worker
 *   progress  steps, tokens, turns, version, the loss history    written by the worker
 *   adapter   the user-tier adapter after the last turn (an adapterFile 'adapter' message)
 *   segment   the frozen user segment, with its sha-256 and the run version it came with
 *   engine    the engine the last start used, with why (the page says so when the next one differs)
 */
import { createStore, del, get, set, type UseStore } from 'idb-keyval';
import type { JoinCredentials } from '@splitllm/user-client';

export type EngineChoice = 'auto' | 'wgsl' | 'wasm';

export interface StoredDoc {
  id: string;
  name: string;
  text: string;
  addedAt: number;
}

export interface StoredSession {
  cloudUrl: string;
  credentials: JoinCredentials;
  engine: EngineChoice;
  /** seeds the choice of training windows; with progress.steps it makes a resumed run draw new ones */
  seed: number;
  joinedAt: number;
  /** the user paused: a reload does not resume by itself */
  paused: boolean;
}

export interface LossPoint {
  round: number;
  step: number;
  loss: number;
}

export interface StoredProgress {
  steps: number;
  tokens: number;
  turns: number;
  /** the newest global adapter version this user has seen */
  version: number;
  losses: LossPoint[];
}

export interface StoredAdapter {
  round: number;
  version: number;
  savedAt: number;
  /**
   * the adapter as the message 'adapter' of channel adapterFile (the format the cloud and the
   * edge serve adapters in): written and read by the worker, which holds the wire code
   */
  frame: Uint8Array;
  /** the run's LoRA config and model name, so the adapter can be exported without the run */
  lora: unknown;
  modelName: string;
  nLayer: number;
}

export interface StoredSegment {
  sha256: string;
  version: number;
  savedAt: number;
  bytes: Uint8Array;
}

let store: UseStore | undefined;
function db(): UseStore {
  store ??= createStore('splitllm', 'state');
  return store;
}

export const emptyProgress = (): StoredProgress => ({ steps: 0, tokens: 0, turns: 0, version: 0, losses: [] });

export const loadDocs = async (): Promise<StoredDoc[]> => (await get<StoredDoc[]>('docs', db())) ?? [];
export const saveDocs = (docs: StoredDoc[]): Promise<void> => set('docs', docs, db());
export const loadSession = (): Promise<StoredSession | undefined> => get<StoredSession>('session', db());
export const saveSession = (s: StoredSession): Promise<void> => set('session', s, db());
export const loadProgress = async (): Promise<StoredProgress> =>
  (await get<StoredProgress>('progress', db())) ?? emptyProgress();
export const saveProgress = (p: StoredProgress): Promise<void> => set('progress', p, db());
export const loadAdapter = (): Promise<StoredAdapter | undefined> => get<StoredAdapter>('adapter', db());
export const saveAdapter = (a: StoredAdapter): Promise<void> => set('adapter', a, db());
export const loadSegment = (): Promise<StoredSegment | undefined> => get<StoredSegment>('segment', db());
/** one segment is kept: a new run's replaces the old one */
export const saveSegment = (s: StoredSegment): Promise<void> => set('segment', s, db());

/** The engine a start ended up with, and the client's reason. */
export interface UsedEngine {
  kind: string;
  reason: string;
}

export const loadEngineUsed = (): Promise<UsedEngine | undefined> => get<UsedEngine>('engine', db());
export const saveEngineUsed = (e: UsedEngine): Promise<void> => set('engine', e, db());

/** Forget everything about the run (documents stay unless asked). */
export async function forgetRun(alsoDocs: boolean): Promise<void> {
  for (const k of ['session', 'progress', 'adapter', 'segment']) await del(k, db());
  if (alsoDocs) await del('docs', db());
}
