/**
 * Figures of the three-tier loop on this machine (prints, asserts nothing):
 *  1. wire bytes per training step for each codec: the four frames of one step (user -> edge h1 +
 *     labels, edge -> cloud h2 + labels, and the two gradients back), for the shipped model at
 *     its default batch and for GPT-2 small at 4 x 128;
 *  2. time per round: `simulate` with 2 edges, 4 users, 3 rounds (engine auto);
 *  3. edge memory: a cloud and one edge as processes, one headless user training a round while
 *     0 or 32 more users wait in the edge's queue; the edge's RSS sampled during the round and
 *     its peak (VmHWM).
 *
 *   pnpm exec tsx packages/cli/scripts/bench-system.ts [--steps N]
 */
import { type Codec, encodeMessage } from '@splitllm/wire';
import { GPT2_SMALL_CONFIG } from '@splitllm/model';
import { randomToken } from '@splitllm/wire/node';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { REPO_ROOT } from '../src/io';
import { issueJoinToken, startPart, type Part } from '../src/launcher';
import { simulateJson } from './simulate-json';

const stepsArg = process.argv.indexOf('--steps');
const STEPS = stepsArg > 0 ? Number(process.argv[stepsArg + 1]) : 40;
const tmp = mkdtempSync(join(tmpdir(), 'splitllm-bench-'));

function stepBytes(B: number, T: number, D: number, codec: Codec): { userEdge: number; edgeCloud: number } {
  const h = { data: new Float32Array(B * T * D).fill(0.5), shape: [B, T, D], codec };
  const targets = { data: new Int32Array(B * T), shape: [B, T] };
  const step = { round: 1, step: 1 };
  const back = { ...step, loss: 4.5, count: B * T, dh: h };
  // the edge's forward names the user; the user's does not
  const userEdge =
    encodeMessage('userToEdge', 'forward', { ...step, h, targets }).byteLength +
    encodeMessage('edgeToUser', 'backward', back).byteLength;
  const edgeCloud =
    encodeMessage('edgeToCloud', 'forward', { ...step, userId: 'u-0123456789ab', h, targets }).byteLength +
    encodeMessage('cloudToEdge', 'backward', { ...back, userId: 'u-0123456789ab' }).byteLength;
  return { userEdge, edgeCloud };
}

function bytesTable(): void {
  console.log('\n1. wire bytes per step (forward frame + backward frame, each hop)');
  for (const [name, B, T, D] of [
    ['shipped moby-tiny, 4 x 64', 4, 64, 128],
    ['GPT-2 small, 4 x 128', 4, 128, GPT2_SMALL_CONFIG.nEmbd],
  ] as const) {
    const f32 = stepBytes(B, T, D, 'f32').userEdge;
    for (const codec of ['f32', 'f16', 'int8'] as const) {
      const b = stepBytes(B, T, D, codec);
      console.log(
        `  ${name.padEnd(27)} ${codec.padEnd(5)} user<->edge ${(b.userEdge / 1024).toFixed(1).padStart(8)} KiB   ` +
          `edge<->cloud ${(b.edgeCloud / 1024).toFixed(1).padStart(8)} KiB   ` +
          `(${((100 * b.userEdge) / f32).toFixed(0)}% of f32)`,
      );
    }
  }
}

function roundTimes(): void {
  console.log('\n2. time per round: simulate --edges 2 --users 4 --rounds 3 --steps-per-user 10 (engine auto)');
  const out = join(tmp, 'sim');
  const rounds = simulateJson(['--edges', '2', '--users', '4', '--rounds', '3', '--steps-per-user', '10'], out);
  for (const j of rounds) {
    console.log(
      `  round ${j.round}: ${(j.ms / 1000).toFixed(1)} s, loss ${j.loss.toFixed(4)}, ` +
        `${(j.bytes / 2 ** 20).toFixed(2)} MiB on the wire (20 steps)`,
    );
  }
  const userLog = readFileSync(join(out, 'logs/user-0.log'), 'utf8').split('\n')[0];
  console.log(`  ${userLog}`);
}

async function edgeMemory(waiting: number): Promise<void> {
  const env = {
    SPLITLLM_EDGE_SECRET: randomToken(),
    SPLITLLM_OPERATOR_TOKEN: randomToken(),
    SPLITLLM_EDGE_OPERATOR_TOKEN: randomToken(),
  };
  const logDir = join(tmp, `mem-${waiting}`);
  const parts: Part[] = [];
  const sockets: WebSocket[] = [];
  try {
    const cloud = startPart(
      'cloud',
      [
        'cloud',
        '--state',
        join(logDir, 'state'),
        '--steps-per-user',
        String(STEPS),
        '--max-rounds',
        '1',
        '--threads',
        '1',
      ],
      { logDir, env },
    );
    parts.push(cloud);
    const url = String((await cloud.ready).url);
    let done = false;
    cloud.onLine((j) => {
      if (j.event === 'round') done = true;
    });
    const edge = startPart('edge', ['edge', '--cloud', url, '--id', 'e1', '--threads', '1'], { logDir, env });
    parts.push(edge);
    const edgeUrl = String((await edge.ready).url);
    const token = () => issueJoinToken(url, env.SPLITLLM_OPERATOR_TOKEN);
    const status = async () =>
      (await (
        await fetch(`${edgeUrl}/api/admin/status`, {
          headers: { authorization: `Bearer ${env.SPLITLLM_EDGE_OPERATOR_TOKEN}` },
        })
      ).json()) as { waiting: number; users: unknown[]; memory: { rss: number; peakRss: number } };
    const idle = await status();
    const user = startPart(
      'user',
      [
        'user',
        '--cloud',
        url,
        '--data',
        join(REPO_ROOT, 'packages/assets/data/sotu/train/user-1.txt'),
        '--engine',
        'reference',
      ],
      { logDir, env: { SPLITLLM_JOIN_TOKEN: await token() } },
    );
    parts.push(user);
    await user.ready;
    for (let i = 0; i < waiting; i++) {
      const res = await fetch(`${url}/api/join`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ joinToken: await token() }),
      });
      const cred = (await res.json()) as { userId: string; userToken: string };
      const ws = new WebSocket(`${edgeUrl.replace(/^http/, 'ws')}/ws/user`);
      await new Promise((r) => ws.once('open', r));
      ws.send(encodeMessage('userToEdge', 'hello', { userId: cred.userId, token: cred.userToken }));
      sockets.push(ws);
    }
    let maxRss = 0;
    let maxWaiting = 0;
    while (!done) {
      const s = await status();
      maxRss = Math.max(maxRss, s.memory.rss);
      maxWaiting = Math.max(maxWaiting, s.waiting);
      await new Promise((r) => setTimeout(r, 100));
    }
    const end = await status();
    const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
    console.log(
      `  ${String(waiting).padStart(2)} waiting (max seen ${maxWaiting}) + 1 training: ` +
        `RSS idle ${mib(idle.memory.rss)}, max during the round ${mib(maxRss)}, ` +
        `peak (VmHWM) ${mib(end.memory.peakRss)}`,
    );
  } finally {
    for (const s of sockets) s.terminate();
    for (const p of parts.reverse()) await p.stop();
  }
}

bytesTable();
roundTimes();
console.log(`\n3. edge memory, shipped model, ${STEPS} steps of 4 x 64 tokens, cpu provider`);
await edgeMemory(1);
await edgeMemory(32);
