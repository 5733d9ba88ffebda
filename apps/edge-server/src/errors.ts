/**
 * The edge's own errors. `EdgeError` carries one of a closed list of codes (what the edge itself
 * refuses or fails with); `CloudError` carries a code the cloud answered with, which is the
 * cloud's to define, so it is kept apart rather than widening the edge's list to any string.
 */
import { CodedError } from '@splitllm/model';

export const EDGE_ERROR_CODES = [
  // start-up and the cloud link
  'NOT_READY',
  'SHUTTING_DOWN',
  'CLOUD_UNREACHABLE',
  'CLOUD_GONE',
  'CLOUD_TIMEOUT',
  'SEGMENT_DOWNLOAD',
  'SEGMENT_CORRUPT',
  'ADAPTER_DOWNLOAD',
  'UPLOAD_REFUSED',
  // what users ask for or do
  'UNKNOWN_VERSION',
  'USER_GONE',
  'USER_TIMEOUT',
  'TURN_DEADLINE',
  'SITTING_OUT',
] as const;
export type EdgeErrorCode = (typeof EDGE_ERROR_CODES)[number];

export class EdgeError extends CodedError<EdgeErrorCode> {}

/** A refusal from the cloud (an error frame on the socket, or an HTTP error body), with the cloud's code. */
export class CloudError extends CodedError<string> {}
