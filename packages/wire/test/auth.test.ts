import { describe, expect, it } from 'vitest';
import { bearerToken, checkUserToken, secretsEqual, userToken } from '../src/node/auth';

describe('tokens', () => {
  it('secretsEqual: equal only when equal, whatever the lengths', () => {
    expect(secretsEqual('abc123', 'abc123')).toBe(true);
    expect(secretsEqual('abc123', 'abc124')).toBe(false);
    expect(secretsEqual('abc123', 'abc12')).toBe(false);
    expect(secretsEqual('abc123', 'abc1234')).toBe(false);
    expect(secretsEqual('', 'x')).toBe(false);
    expect(secretsEqual('', '')).toBe(true);
    expect(secretsEqual('é', 'e\u0301')).toBe(false);
  });

  it('a user token holds for its (user, edge) pair only', () => {
    const t = userToken('secret', 'u1', 'e1');
    expect(checkUserToken('secret', 'u1', 'e1', t)).toBe(true);
    expect(checkUserToken('secret', 'u1', 'e2', t)).toBe(false);
    expect(checkUserToken('secret', 'u2', 'e1', t)).toBe(false);
    expect(checkUserToken('other', 'u1', 'e1', t)).toBe(false);
  });

  it('bearerToken reads "Bearer <token>" only', () => {
    expect(bearerToken('Bearer abc')).toBe('abc');
    expect(bearerToken('bearer abc')).toBe('abc');
    expect(bearerToken(['Bearer a', 'Bearer b'])).toBe('a');
    expect(bearerToken('Basic abc')).toBeUndefined();
    expect(bearerToken('Bearer a b')).toBeUndefined();
    expect(bearerToken(undefined)).toBeUndefined();
  });
});
