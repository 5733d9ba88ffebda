/**
 * The codes a peer's frame or request can be refused with. One closed list: a server answers an
 * error frame or a JSON error body with one of these, and every receiver can switch on it.
 */
import { CodedError } from '@splitllm/model';

export const PROTOCOL_ERROR_CODES = [
  // the frame itself
  'BAD_FRAME',
  'FRAME_TOO_LARGE',
  'UNKNOWN_TYPE',
  'UNEXPECTED_TYPE',
  'BAD_FIELD',
  'BAD_TENSOR',
  'BAD_SHAPE',
  'BAD_TARGET',
  'NOT_FINITE',
  'CODEC_RANGE',
  // a tab's report with labels on the device
  'BAD_LOSS',
  'BAD_COUNT',
  // where the frame falls in the round
  'WRONG_ROUND',
  'WRONG_STEP',
  'NO_ROUND',
  'NOT_IN_ROUND',
  'NO_TURN',
  'TURN_OPEN',
  'STEP_OPEN',
  'LABELS_ON_DEVICE',
  'LABELS_IN_CLOUD',
  'NOT_YOUR_TURN',
  'TOO_MANY_STEPS',
  'TOO_MANY_USERS',
  'USER_REPEATED',
  'ROUND_UPLOADED',
  'UPDATE_MISMATCH',
  // who sent it
  'UNAUTHORIZED',
  'UNKNOWN_USER',
] as const;
export type ProtocolErrorCode = (typeof PROTOCOL_ERROR_CODES)[number];

/** A frame or request that breaks the protocol; nothing it carried was used. */
export class ProtocolError extends CodedError<ProtocolErrorCode> {}
