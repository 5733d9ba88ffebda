/**
 * `splitllm invite`: mints join links on a running cloud (its operator endpoint) and prints
 * them, one a line, so they can be piped or pasted. The operator token comes from
 * SPLITLLM_OPERATOR_TOKEN or from a `serve` state directory's secrets.json.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Args, UsageError } from '../args';

export const inviteHelp = `invite --cloud URL [--count N] [--expires 30m|1h|7d] [--state DIR]
  Prints N (default 1) single-use join links (URL/?join=TOKEN), one a line; with --expires a
  link not used by then is refused. The operator token is SPLITLLM_OPERATOR_TOKEN, or the one in
  DIR/secrets.json (the state directory of \`splitllm serve\`, default out/serve-state).
  The cloud's page URL/admin/invitations lists, mints and revokes invitations.`;

const UNIT_S: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400 };
const MAX_COUNT = 1000;

/** "30m", "1h", "7d" (or seconds with "s") as seconds; undefined for anything else. */
export function parseDuration(text: string): number | undefined {
  const m = /^(\d{1,6})([smhd])$/.exec(text);
  if (!m) return undefined;
  return Number(m[1]) * (UNIT_S[m[2] as string] as number);
}

function operatorToken(stateDir: string | undefined): string {
  const fromEnv = process.env.SPLITLLM_OPERATOR_TOKEN;
  if (stateDir === undefined && fromEnv) return fromEnv;
  const file = join(stateDir ?? 'out/serve-state', 'secrets.json');
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw new UsageError(`invite: no operator token: set SPLITLLM_OPERATOR_TOKEN or pass --state DIR (no ${file})`);
  }
  const token = (JSON.parse(text) as { operatorToken?: unknown }).operatorToken;
  if (typeof token !== 'string' || token === '') throw new Error(`${file}: no operatorToken in it`);
  return token;
}

export async function inviteCommand(argv: string[]): Promise<void> {
  const args = Args.parse('invite', argv, {
    cloud: { type: 'string' },
    count: { type: 'string' },
    expires: { type: 'string' },
    state: { type: 'string' },
  });
  const cloud = args.string('cloud').replace(/\/+$/, '');
  if (!/^https?:\/\/[^/\s]+$/.test(cloud)) {
    throw new UsageError(`invite: --cloud must be the cloud's address, like http://127.0.0.1:8080, got "${cloud}"`);
  }
  const count = args.int('count', 1, 1);
  if (count > MAX_COUNT) throw new UsageError(`invite: --count must be at most ${MAX_COUNT}, got ${count}`);
  const expiresRaw = args.optionalString('expires');
  const expiresInS = expiresRaw === undefined ? undefined : parseDuration(expiresRaw);
  if (expiresRaw !== undefined && (expiresInS === undefined || expiresInS < 60)) {
    throw new UsageError(
      `invite: --expires must be a duration of at least a minute, like 30m, 1h or 7d, got "${expiresRaw}"`,
    );
  }
  const token = operatorToken(args.optionalString('state'));
  for (let i = 0; i < count; i++) {
    const res = await fetch(`${cloud}/api/join-tokens`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify(expiresInS === undefined ? {} : { expiresInS }),
    });
    const body = (await res.json().catch(() => ({}))) as { token?: string; code?: string; message?: string };
    if (!res.ok || typeof body.token !== 'string') {
      throw new Error(`invite: the cloud refused: ${res.status} ${body.code ?? ''} ${body.message ?? ''}`.trim());
    }
    process.stdout.write(`${cloud}/?join=${body.token}\n`);
  }
}
