/**
 * The user client's coded errors. The code is a closed union: what the client itself detects,
 * and what it passes on from its peers (an edge's error frame or `turn-end` reason, an edge's or
 * the cloud's JSON error body), so a caller can switch on any of them with the compiler's help.
 * Browser-safe.
 */
import { CodedError } from '@splitllm/model';
import { PROTOCOL_ERROR_CODES, type ProtocolErrorCode } from '@splitllm/wire';

/** What the client itself detects. */
export const USER_CLIENT_ERROR_CODES = [
  'NOT_STARTED',
  'CONNECT_FAILED',
  'EDGE_GONE',
  'SEGMENT_CORRUPT',
  'SEGMENT_MISMATCH',
  'TURN_OVERLAP',
  'TURN_FAILED',
  /** labels on the device: the last hidden state the edge relayed cannot go through the head */
  'BAD_HIDDEN',
  /** a `turn-end` without a reason ended the turn while the client waited for something else */
  'DROPPED',
  'BAD_OPTION',
  /** a peer sent a code this list does not know: ClientError.received holds it */
  'REMOTE_ERROR',
] as const;

/**
 * Codes the edge and the cloud answer the user with, besides ProtocolErrorCode: the edge's
 * (EdgeError's, its generation route's, its turn's fallback, its error handlers') and the
 * cloud's join and rejoin refusals. Kept here as strings: the client depends on neither server.
 */
export const PEER_ERROR_CODES = [
  // the edge's EdgeError
  'ADAPTER_DOWNLOAD',
  'CLOUD_GONE',
  'CLOUD_TIMEOUT',
  'CLOUD_UNREACHABLE',
  'SEGMENT_DOWNLOAD',
  'SHUTTING_DOWN',
  'UNKNOWN_VERSION',
  'UPLOAD_REFUSED',
  'USER_GONE',
  'USER_TIMEOUT',
  'TURN_DEADLINE',
  'SITTING_OUT',
  // the edge otherwise
  'NOT_READY',
  'STEP_FAILED',
  'CLOUD_ERROR',
  'BAD_CONTENT_TYPE',
  'BAD_REQUEST',
  'NOT_FOUND',
  'INTERNAL',
  // the cloud's join and rejoin
  'NO_EDGE',
  'BAD_JOIN_TOKEN',
  'BAD_USER_TOKEN',
  // the cloud's rejoin and the edge's hello: an operator removed this user
  'USER_REMOVED',
  // either server's rate limits
  'RATE_LIMITED',
] as const;

export type ClientErrorCode =
  | (typeof USER_CLIENT_ERROR_CODES)[number]
  | ProtocolErrorCode
  | (typeof PEER_ERROR_CODES)[number]
  /** a refused request whose body names no code (a proxy, a crash): see responseError */
  | `HTTP_${number}`;

const KNOWN: ReadonlySet<string> = new Set<string>([
  ...USER_CLIENT_ERROR_CODES,
  ...PROTOCOL_ERROR_CODES,
  ...PEER_ERROR_CODES,
]);

export function isClientErrorCode(code: string): code is ClientErrorCode {
  return KNOWN.has(code) || /^HTTP_\d{3}$/.test(code);
}

export class ClientError extends CodedError<ClientErrorCode> {
  /** the code exactly as a peer sent it, when it was none of ClientErrorCode (code is then REMOTE_ERROR) */
  readonly received?: string;

  constructor(code: ClientErrorCode, message: string, received?: string) {
    super(code, message);
    if (received !== undefined) this.received = received;
  }

  /** An error a peer reported with `code` (any string off the wire): typed when known, else REMOTE_ERROR. */
  static fromPeer(code: string, message: string): ClientError {
    if (isClientErrorCode(code)) return new ClientError(code, message);
    // the message keeps the peer's code: people see the message, not `received`
    return new ClientError('REMOTE_ERROR', `${code}: ${message}`, code);
  }
}
