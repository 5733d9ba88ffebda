/**
 * Tokens of the three trust relations (docs/design.md, "Trust"): edges prove the shared edge secret,
 * users carry a token the cloud derives from that secret for one (user, edge) pair, so an edge
 * checks a user without asking the cloud, and a token for one edge is refused by every other.
 */
import { createHash, createHmac, randomBytes, timingSafeEqual } from 'node:crypto';

export function randomToken(bytes = 16): string {
  return randomBytes(bytes).toString('hex');
}

/**
 * Constant-time comparison of two secrets. Their SHA-256 digests are compared, which are of
 * equal length, so the time tells nothing of a guess's length either.
 */
export function secretsEqual(a: string, b: string): boolean {
  const digest = (s: string) => createHash('sha256').update(s, 'utf8').digest();
  return timingSafeEqual(digest(a), digest(b));
}

export function userToken(edgeSecret: string, userId: string, edgeId: string): string {
  return createHmac('sha256', edgeSecret).update(`user\n${userId}\n${edgeId}`).digest('hex');
}

export function checkUserToken(edgeSecret: string, userId: string, edgeId: string, token: string): boolean {
  return secretsEqual(userToken(edgeSecret, userId, edgeId), token);
}

/** `Authorization: Bearer <token>` → token, or undefined. */
export function bearerToken(header: string | string[] | undefined): string | undefined {
  const h = Array.isArray(header) ? header[0] : header;
  const m = h ? /^Bearer\s+(\S+)$/i.exec(h) : null;
  return m ? m[1] : undefined;
}
