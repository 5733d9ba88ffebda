/**
 * Every error the page can show, in words for the person: what happened and what to do, and the
 * control it belongs next to. One table, keyed by code: the user client's own codes, the codes
 * its peers (edge, cloud) answer with, the wire's protocol codes, the page's own PageError codes,
 * and the WebGPU codes an engine can fail with. The table's type lists every code the client and
 * the page declare, so a code added there without a sentence here fails the type check.
 *
 * Codes and raw messages are kept for a details line: they help the operator, not the person.
 */
import type { ClientErrorCode } from '@splitllm/user-client';
import type { PageErrorCode } from './worker';

/** The controls a message can sit next to. */
export type Control = 'join' | 'docs' | 'train' | 'generate' | 'download';

/** What the sentence may name: the server the page tried to reach. */
export interface MessageContext {
  /** host (and port) of the server the failed request went to */
  host?: string;
}

interface Entry {
  say: string | ((c: MessageContext) => string);
  /** where it belongs; omitted: next to the control whose action failed */
  at?: Control;
}

/** The codes this page knows besides the client's and its own. */
type PageSideCode =
  /** fetch() itself failed: no answer at all (browsers say "Failed to fetch", "NetworkError", "Load failed") */
  | 'NETWORK'
  /** the worker could not write progress into IndexedDB */
  | 'STORAGE'
  /** WebGPU (the engine 'wgsl' was asked for): @splitllm/lora-kernels' GpuError codes other than NO_ADAPTER */
  | 'NO_WEBGPU'
  | 'DOES_NOT_FIT'
  | 'GPU_VALIDATION'
  | 'GPU_LOST';

type KnownCode = Exclude<ClientErrorCode, `HTTP_${number}`> | PageErrorCode | PageSideCode;

const host = (c: MessageContext) => c.host ?? 'the address in your join link';
const TELL = 'If it happens again, tell the person who runs this fine-tuning and show them the details.';
const RETRY_START = 'Press Start to try again.';
const BUG = `The page and the servers disagree about the protocol: your text was not used for this. ${TELL}`;
const NEXT_ROUND = 'This turn was not counted; you stay in line and train again in a later round.';

const TABLE: Record<KnownCode, Entry> = {
  // ---- the page's own
  NETWORK: {
    say: (c) => `Cannot reach the server at ${host(c)}. Check the link or your connection, then try again.`,
  },
  STORAGE: {
    say:
      'This browser refused to save your progress (its storage may be full or blocked). Free some ' +
      "space or allow this site's storage; training goes on meanwhile.",
    at: 'train',
  },
  ALREADY_RUNNING: { say: 'Training is already running in this tab.', at: 'train' },
  NO_DATA: { say: 'There is no text to train on. Add a document above, then press Start.', at: 'docs' },
  NO_SESSION: {
    say: 'This browser has not joined a run yet. Paste the join link you were given, then press Start.',
    at: 'join',
  },
  NOT_READY: {
    say: `The page was not ready to give training text yet. ${RETRY_START} ${TELL}`,
    at: 'train',
  },
  BAD_TOKENIZER: {
    say: `The run's tokenizer cannot separate documents, so the page cannot train on them. ${TELL}`,
    at: 'train',
  },
  NOT_CONNECTED: { say: 'Continuing a prompt needs a connection: press Start or Resume first.', at: 'generate' },
  EMPTY_PROMPT: { say: 'Type a few words to continue first.', at: 'generate' },
  NO_ADAPTER: {
    say: 'There is nothing to download yet: your adapter is saved after your first completed turn.',
    at: 'download',
  },
  // ---- WebGPU engine
  NO_WEBGPU: {
    say: 'This browser offers no WebGPU. Choose "WebAssembly" or "automatic" as the engine, then press Start.',
    at: 'train',
  },
  DOES_NOT_FIT: {
    say:
      'The model\'s first layers do not fit this device\'s WebGPU limits. Choose "WebAssembly" as the ' +
      'engine, then press Start.',
    at: 'train',
  },
  GPU_VALIDATION: {
    say: 'The WebGPU engine failed on this device. Choose "WebAssembly" as the engine, then press Start.',
    at: 'train',
  },
  GPU_LOST: {
    say:
      'The graphics device was lost (a driver reset or the browser reclaimed it). Press Start to go ' +
      'on; choose "WebAssembly" if it happens again.',
    at: 'train',
  },
  // ---- the client itself
  NOT_STARTED: { say: `Training has not started yet. ${RETRY_START}`, at: 'train' },
  CONNECT_FAILED: {
    say: (c) => `Cannot connect to your edge server at ${host(c)}. Check your connection, then press Start again.`,
    at: 'train',
  },
  EDGE_GONE: {
    say:
      'The connection to your edge server was lost. The page tries to find another one; if training ' +
      'stops, press Start.',
    at: 'train',
  },
  SEGMENT_CORRUPT: {
    say: "The model's first layers arrived damaged. Press Start to download them again.",
    at: 'train',
  },
  SEGMENT_MISMATCH: {
    say: `The model's first layers the server sent do not match this run's settings. ${TELL}`,
    at: 'train',
  },
  TURN_OVERLAP: { say: `Two turns started at once; this one was dropped. ${NEXT_ROUND}`, at: 'train' },
  TURN_FAILED: { say: `Your turn failed on this device. ${NEXT_ROUND} ${TELL}`, at: 'train' },
  BAD_HIDDEN: { say: `The server sent numbers this tab cannot train on. ${NEXT_ROUND} ${TELL}`, at: 'train' },
  DROPPED: { say: `Your edge server ended your turn early. ${NEXT_ROUND}`, at: 'train' },
  BAD_OPTION: { say: `The page asked for something the training code does not accept. ${TELL}`, at: 'train' },
  REMOTE_ERROR: { say: `A server reported a problem this page does not know. ${TELL}` },
  // ---- the edge
  ADAPTER_DOWNLOAD: {
    say:
      'Your edge server could not get the latest shared model update. Wait a moment; if training ' +
      'stops, press Start.',
    at: 'train',
  },
  CLOUD_GONE: {
    say: 'Your edge server lost its connection to the cloud. Training waits until it is back; keep this tab open.',
    at: 'train',
  },
  CLOUD_TIMEOUT: {
    say: `The cloud did not answer your edge server in time. ${NEXT_ROUND}`,
    at: 'train',
  },
  CLOUD_UNREACHABLE: {
    say: 'Your edge server cannot reach the cloud right now. Keep this tab open; training goes on when it is back.',
    at: 'train',
  },
  SEGMENT_DOWNLOAD: {
    say: "Your edge server could not get the model's layers from the cloud. Wait a minute, then press Start.",
    at: 'train',
  },
  SHUTTING_DOWN: {
    say:
      'Your edge server is shutting down. The page asks the cloud for another one; if training stops, ' +
      'press Start in a minute.',
    at: 'train',
  },
  UNKNOWN_VERSION: {
    say: 'The shared model changed while the page was getting it. Press Start again: the page fetches the latest one.',
    at: 'train',
  },
  UPLOAD_REFUSED: { say: `The cloud did not accept your turn's adapter. ${NEXT_ROUND}`, at: 'train' },
  USER_GONE: { say: 'Your edge server no longer sees this tab. Press Start to go back in line.', at: 'train' },
  USER_TIMEOUT: {
    say:
      `This tab took too long to answer during its turn (a busy or sleeping device). ${NEXT_ROUND} ` +
      `Keep the tab in front.`,
    at: 'train',
  },
  TURN_DEADLINE: {
    say:
      `Your turn ran out of time. ${NEXT_ROUND} Keep the tab in front; a slow device can choose ` +
      `"automatic" as the engine.`,
    at: 'train',
  },
  SITTING_OUT: {
    say:
      'Your edge server has you sit out a few rounds after a failed turn. Keep the tab open: you come ' +
      'back by yourself.',
    at: 'train',
  },
  STEP_FAILED: { say: `A training step failed on the server. ${NEXT_ROUND}`, at: 'train' },
  CLOUD_ERROR: { say: `The cloud could not do its part of a step. ${NEXT_ROUND}`, at: 'train' },
  BAD_CONTENT_TYPE: { say: BUG },
  BAD_REQUEST: { say: BUG },
  NOT_FOUND: {
    say: (c) =>
      `The server at ${host(c)} does not know what the page asked for. Check that the link is the one you were given.`,
  },
  INTERNAL: { say: `The server hit an internal problem. Try again in a minute. ${TELL}` },
  // ---- the cloud's join and rejoin
  NO_EDGE: {
    say:
      'No edge server is running for this run right now, so there is nowhere to train. Try again in a ' +
      'few minutes, or ask the person who runs it.',
  },
  BAD_JOIN_TOKEN: {
    say:
      'This join link is not valid: it was already used, it has expired, or it was mistyped. Ask the ' +
      'person who runs this fine-tuning for a new link.',
    at: 'join',
  },
  BAD_USER_TOKEN: {
    say:
      'The run no longer recognises this browser. Ask the person who runs this fine-tuning for a new ' +
      'join link and paste it above.',
    at: 'join',
  },
  USER_REMOVED: {
    say: 'The operator of this run removed you from it. Ask them to re-admit you if this is a mistake.',
    at: 'train',
  },
  RATE_LIMITED: { say: 'Too many attempts from this network in a short time. Wait a minute, then try again.' },
  // ---- the wire protocol: a frame or request one side could not accept
  BAD_FRAME: { say: BUG },
  FRAME_TOO_LARGE: { say: BUG },
  UNKNOWN_TYPE: { say: BUG },
  UNEXPECTED_TYPE: { say: BUG },
  BAD_FIELD: { say: BUG },
  BAD_TENSOR: { say: BUG },
  BAD_SHAPE: { say: BUG },
  BAD_TARGET: { say: BUG },
  NOT_FINITE: {
    say: `The training numbers became invalid (the loss grew without bound). ${NEXT_ROUND} ${TELL}`,
    at: 'train',
  },
  CODEC_RANGE: { say: BUG },
  BAD_LOSS: { say: `The loss this tab computed was refused. ${NEXT_ROUND} ${TELL}`, at: 'train' },
  BAD_COUNT: { say: BUG },
  WRONG_ROUND: { say: `This tab was a round behind. ${NEXT_ROUND}`, at: 'train' },
  WRONG_STEP: { say: `This tab and the server lost step. ${NEXT_ROUND}`, at: 'train' },
  NO_ROUND: { say: 'No round is running right now. Keep the tab open: your turn comes when one starts.' },
  NOT_IN_ROUND: { say: `This tab is not part of the current round. ${NEXT_ROUND}`, at: 'train' },
  NO_TURN: { say: `The server had no turn open for this tab. ${NEXT_ROUND}`, at: 'train' },
  TURN_OPEN: { say: `A turn was still open on the server. ${NEXT_ROUND}`, at: 'train' },
  STEP_OPEN: { say: `A step was still open on the server. ${NEXT_ROUND}`, at: 'train' },
  LABELS_ON_DEVICE: {
    say:
      `This run keeps labels on the device but the page sent them. Reload the page to get its current ` +
      `version. ${TELL}`,
  },
  LABELS_IN_CLOUD: {
    say:
      `This run wants labels in the cloud but the page did not send them. Reload the page to get its ` +
      `current version. ${TELL}`,
  },
  NOT_YOUR_TURN: { say: `This tab spoke out of turn. ${NEXT_ROUND}`, at: 'train' },
  TOO_MANY_STEPS: { say: BUG },
  TOO_MANY_USERS: { say: 'This round is full. Keep the tab open: you train in a later round.', at: 'train' },
  USER_REPEATED: { say: BUG },
  ROUND_UPLOADED: { say: `The round had already been sent to the cloud. ${NEXT_ROUND}`, at: 'train' },
  UPDATE_MISMATCH: { say: BUG },
  UNAUTHORIZED: {
    say:
      'The server did not accept this browser\u2019s credentials. Press Start to join again; if that ' +
      'fails, ask for a new join link.',
    at: 'train',
  },
  UNKNOWN_USER: {
    say:
      'The server does not know this browser any more (the run may have been restarted). Ask for a ' +
      'new join link and paste it above.',
    at: 'join',
  },
};

/** The sentence for a code none of the tables knows. */
export const FALLBACK = `Something went wrong that this page cannot explain. Try again. ${TELL}`;

/** A problem as the page shows it. */
export interface Problem {
  sentence: string;
  at: Control;
  code: string;
  raw: string;
}

/** Browsers' words for a fetch() that got no answer at all. */
const NETWORK_RAW = /failed to fetch|networkerror|load failed|fetch failed|network request failed/i;

function httpSentence(status: number, c: MessageContext): string {
  if (status === 429) return TABLE.RATE_LIMITED.say as string;
  if (status === 401 || status === 403) {
    return (
      'The server refused the request: this browser is not allowed in. Ask the person who runs this ' +
      'fine-tuning for a new join link.'
    );
  }
  if (status === 404) return (TABLE.NOT_FOUND.say as (c: MessageContext) => string)(c);
  if (status >= 500) return `The server at ${host(c)} has a problem (it answered ${status}). Try again in a minute.`;
  return `The server at ${host(c)} refused the request (it answered ${status}). ${TELL}`;
}

/**
 * The problem for an error `code` with `raw` message, raised by the action of control `where`.
 * A code with no entry gets FALLBACK; a network failure (whatever code it came with) gets the
 * NETWORK sentence naming `context.host`.
 */
export function explain(code: string, raw: string, where: Control, context: MessageContext = {}): Problem {
  if (NETWORK_RAW.test(raw) && (code === 'ERROR' || code === 'NETWORK' || code === 'TypeError')) {
    return { sentence: (TABLE.NETWORK.say as (c: MessageContext) => string)(context), at: where, code: 'NETWORK', raw };
  }
  // NO_ADAPTER is also @splitllm/lora-kernels' "no WebGPU adapter": when starting, that is what it means
  if (code === 'NO_ADAPTER' && where !== 'download') {
    return { sentence: TABLE.NO_WEBGPU.say as string, at: 'train', code, raw };
  }
  const http = /^HTTP_(\d{3})$/.exec(code);
  if (http) return { sentence: httpSentence(Number(http[1]), context), at: where, code, raw };
  const e = (TABLE as Record<string, Entry | undefined>)[code];
  if (!e) return { sentence: FALLBACK, at: where, code, raw };
  return { sentence: typeof e.say === 'function' ? e.say(context) : e.say, at: e.at ?? where, code, raw };
}

/** Every code the table has a sentence for (the page's tests walk it). */
export const KNOWN_CODES: readonly string[] = Object.keys(TABLE);
