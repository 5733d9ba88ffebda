/**
 * The cloud's own errors: a refused request (with the HTTP status it is answered with) and a
 * setting the cloud cannot run with. Protocol and adapter refusals keep their own classes
 * (ProtocolError from @splitllm/wire, AdapterCheckError from @splitllm/model).
 */
import { CodedError } from '@splitllm/model';

export const CLOUD_REQUEST_CODES = [
  'BAD_EDGE_SECRET',
  'BAD_EDGE_TOKEN',
  'BAD_OPERATOR_TOKEN',
  'BAD_JOIN_TOKEN',
  /** the invitation's expiry passed before it was used; it was not spent */
  'JOIN_TOKEN_EXPIRED',
  /** the operator revoked the invitation before it was used */
  'JOIN_TOKEN_REVOKED',
  'UNKNOWN_INVITATION',
  /** revoking an invitation a user already joined with (Drop that user instead) */
  'INVITATION_USED',
  'BAD_USER_TOKEN',
  'NO_EDGE',
  'UNKNOWN_USER',
  /** an edge's operator removed the user; the cloud's operator can admit it again */
  'USER_REMOVED',
  'UNKNOWN_VERSION',
  'NOT_FINITE',
  'NOT_FOUND',
  'RATE_LIMITED',
] as const;
export type CloudRequestCode = (typeof CLOUD_REQUEST_CODES)[number];

/** A request the cloud refuses; the answer is `{ code, message }` with `status`. */
export class CloudRequestError extends CodedError<CloudRequestCode> {
  constructor(
    readonly status: number,
    code: CloudRequestCode,
    message: string,
  ) {
    super(code, message);
  }
}

export const CLOUD_CONFIG_CODES = [
  'UNKNOWN_STRATEGY',
  'BAD_SETTINGS',
  'STATE_OF_ANOTHER_RUN',
  'WEB_NOT_BUILT',
  'BAD_ROUND_CONFIG',
] as const;
export type CloudConfigCode = (typeof CLOUD_CONFIG_CODES)[number];

/** Settings the cloud cannot run with (at start-up, or a strategy's answer for a round). */
export class CloudConfigError extends CodedError<CloudConfigCode> {}
