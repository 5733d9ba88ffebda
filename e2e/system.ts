/**
 * The system under test, as real processes on loopback: a cloud (serving the built user page
 * at /) and edges, started with the same launcher `splitllm simulate` and `serve` use. Logs go
 * to test-results/e2e/logs/ (kept as artifacts).
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT, SHIPPED_MODEL_DIR } from '../packages/cli/src/io';
import { issueJoinToken, startPart, type Part } from '../packages/cli/src/launcher';

export const WEB_DIR = join(REPO_ROOT, 'apps/user-web/dist');
export const LOG_DIR = join(REPO_ROOT, 'test-results/e2e/logs');

export interface Edge {
  id: string;
  url: string;
  adminUrl: string;
}

export interface System {
  cloudUrl: string;
  edges: Edge[];
  operatorToken: string;
  /** a fresh single-use join link */
  joinLink(params?: Record<string, string>): Promise<string>;
  rounds(): Promise<
    Array<{ round: number; version: number; participants: string[]; users: number; loss: number | null }>
  >;
  stop(): Promise<void>;
}

export interface SystemOptions {
  name: string;
  edges: number;
  stepsPerUser: number;
  usersPerEdge: number;
  minUsers: number;
  minEdges: number;
  lr?: number;
  /** where the run's labels are (the cloud's --labels; default its own: device) */
  labels?: 'device' | 'cloud';
  /** the model directory the cloud serves (the cloud's --model; default the shipped moby-tiny) */
  modelDir?: string;
}

export async function startSystem(o: SystemOptions): Promise<System> {
  const state = mkdtempSync(join(tmpdir(), `splitllm-e2e-${o.name}-`));
  const operatorToken = `operator-${o.name}-${Date.now()}`;
  const env = {
    SPLITLLM_EDGE_SECRET: `edge-secret-${o.name}`,
    SPLITLLM_OPERATOR_TOKEN: operatorToken,
    SPLITLLM_EDGE_OPERATOR_TOKEN: operatorToken,
  };
  const logDir = join(LOG_DIR, o.name);
  const parts: Part[] = [];
  const stop = async () => {
    for (const p of [...parts].reverse()) await p.stop();
  };
  try {
    const cloudArgs = [
      'cloud',
      '--model',
      o.modelDir ?? SHIPPED_MODEL_DIR,
      '--state',
      state,
      '--port',
      '0',
      '--web',
      WEB_DIR,
      '--steps-per-user',
      String(o.stepsPerUser),
      '--users-per-edge',
      String(o.usersPerEdge),
      '--min-users',
      String(o.minUsers),
      '--min-edges',
      String(o.minEdges),
      '--threads',
      '1',
    ];
    if (o.lr !== undefined) cloudArgs.push('--lr', String(o.lr));
    if (o.labels !== undefined) cloudArgs.push('--labels', o.labels);
    const cloud = startPart('cloud', cloudArgs, { logDir, env });
    parts.push(cloud);
    const cloudUrl = String((await cloud.ready).url);
    const edges: Edge[] = [];
    for (let i = 0; i < o.edges; i++) {
      const id = `edge-${i}`;
      const p = startPart(id, ['edge', '--cloud', cloudUrl, '--id', id, '--port', '0', '--threads', '1'], {
        logDir,
        env,
      });
      parts.push(p);
      const r = await p.ready;
      edges.push({ id, url: String(r.url), adminUrl: String(r.adminUrl ?? `${String(r.url)}/admin`) });
    }
    return {
      cloudUrl,
      edges,
      operatorToken,
      async joinLink(params = {}) {
        const q = new URLSearchParams({ join: await issueJoinToken(cloudUrl, operatorToken), ...params });
        return `${cloudUrl}/?${q}`;
      },
      async rounds() {
        // participants are the operator's to see: the public /api/rounds has counts only
        const res = await fetch(`${cloudUrl}/api/admin/rounds?limit=1000`, {
          headers: { authorization: `Bearer ${operatorToken}` },
        });
        if (!res.ok) throw new Error(`GET /api/admin/rounds: ${res.status}`);
        return ((await res.json()) as { rounds: Awaited<ReturnType<System['rounds']>> }).rounds;
      },
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
