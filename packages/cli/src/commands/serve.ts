/**
 * `splitllm serve`: the real system on this machine: a cloud and one edge as separate processes
 * on loopback, plus (by default) one headless demo user so rounds run without a browser. State
 * persists in --state, so a restart resumes at the last recorded round. Runs until Ctrl-C, or
 * for --rounds rounds.
 */
import { CODECS } from '@splitllm/wire';
import { randomToken } from '@splitllm/wire/node';
import { chmodSync, mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Args } from '../args';
import { REPO_ROOT, SHIPPED_MODEL_DIR } from '../io';
import { issueJoinToken, supervisePart, untilSignal, type SupervisedPart } from '../launcher';
import { codecOf } from './parts';

export const serveHelp = `splitllm serve [--model DIR] [--state DIR] [--port P] [--edge-port P] [--demo-users N]
    [--rounds R] [--steps-per-user N] [--codec ${CODECS.join('|')}] [--engine auto|wgsl|wasm|reference]
    [--provider cpu|cuda|webgpu] [--web DIR]
  Starts the cloud (on --port, default 8700) and one edge (--edge-port, default 8701) as processes
  on loopback, and N headless demo users (default 1) training on the shipped demo data. The cloud
  serves the user page (--web, default apps/user-web/dist, built by \`npm start\`) at /. Prints the
  URLs, a join link for a browser, the edge's dashboard link, and the command that joins a headless
  user; one line per recorded round. State
  (database, adapter versions, secrets) lives in --state (default out/serve-state) and resumes.
  A part that exits without being asked to (a crash, a kill) is started again after 1 s, 2 s,
  4 s ... up to 30 s (back to 1 s once it has stayed up a minute), with one line per restart; it
  appends to its log in --state/logs, and a restarted cloud resumes at the last recorded round.`;

interface Secrets {
  edgeSecret: string;
  operatorToken: string;
}

/** A state directory only its owner may list or enter (0700), also when an older run made it 0755. */
function privateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
}

/** The run's secrets live with its state (mode 0600), so a restarted cloud and its edges agree. */
function secretsFor(stateDir: string): Secrets {
  const file = join(stateDir, 'secrets.json');
  privateDir(stateDir);
  if (existsSync(file)) {
    chmodSync(file, 0o600);
    return JSON.parse(readFileSync(file, 'utf8')) as Secrets;
  }
  const s = { edgeSecret: randomToken(), operatorToken: randomToken() };
  writeFileSync(file, `${JSON.stringify(s, null, 2)}\n`, { mode: 0o600 });
  return s;
}

export async function serveCommand(argv: string[]): Promise<void> {
  const args = Args.parse('serve', argv, {
    model: { type: 'string' },
    state: { type: 'string' },
    port: { type: 'string' },
    'edge-port': { type: 'string' },
    'demo-users': { type: 'string' },
    rounds: { type: 'string' },
    'steps-per-user': { type: 'string' },
    codec: { type: 'string' },
    engine: { type: 'string' },
    provider: { type: 'string' },
    web: { type: 'string' },
  });
  const webDir = resolve(args.optionalString('web') ?? join(REPO_ROOT, 'apps/user-web/dist'));
  if (!existsSync(join(webDir, 'index.html'))) {
    throw new Error(
      `the user page is not built (${webDir}/index.html is missing): ` +
        `run \`pnpm --filter @splitllm/user-web build\` (npm start does)`,
    );
  }
  const modelDir = args.optionalString('model') ?? SHIPPED_MODEL_DIR;
  const stateDir = resolve(args.optionalString('state') ?? join(REPO_ROOT, 'out/serve-state'));
  const demoUsers = args.int('demo-users', 1);
  const rounds = args.int('rounds', 0);
  const secrets = secretsFor(stateDir);
  // one operator token for the cloud's join tokens and the edge's dashboard: one operator here
  const env = {
    SPLITLLM_EDGE_SECRET: secrets.edgeSecret,
    SPLITLLM_OPERATOR_TOKEN: secrets.operatorToken,
    SPLITLLM_EDGE_OPERATOR_TOKEN: secrets.operatorToken,
  };
  const logDir = join(stateDir, 'logs');
  privateDir(logDir);
  privateDir(join(stateDir, 'cloud'));
  const parts: SupervisedPart[] = [];
  // a restarted part says so once it serves again, with its new pid
  const supervised = (p: SupervisedPart): SupervisedPart => {
    p.onRestart((e) =>
      e.part.ready.then(
        () => console.log(`${e.name} is serving again (pid ${e.part.child.pid}, restart ${e.restart})`),
        () => undefined,
      ),
    );
    parts.push(p);
    return p;
  };
  try {
    const cloud = supervisePart(
      'cloud',
      [
        'cloud',
        '--model',
        modelDir,
        '--state',
        join(stateDir, 'cloud'),
        '--port',
        String(args.int('port', 8700)),
        '--steps-per-user',
        String(args.int('steps-per-user', 20, 1)),
        '--codec',
        codecOf(args.optionalString('codec')),
        '--threads',
        '1',
        '--web',
        webDir,
      ],
      { logDir, env, log: console.log },
    );
    supervised(cloud);
    const cloudUrl = String((await cloud.ready).url);
    // --rounds counts rounds from now: a resumed state may already be far along
    let seen = 0;
    let reached: () => void = () => undefined;
    const done = new Promise<void>((res) => (reached = res));
    cloud.onLine((j) => {
      if (j.event !== 'round') return;
      console.log(
        `round ${j.round} recorded: version ${j.version}, loss ${Number(j.loss).toFixed(4)}, ` +
          `${j.users} user(s), ${j.tokens} tokens, ` +
          `${(Number(j.bytes) / 2 ** 20).toFixed(2)} MiB, ${(Number(j.ms) / 1000).toFixed(1)} s`,
      );
      if (rounds > 0 && ++seen >= rounds) reached();
    });
    console.log(
      `cloud  ${cloudUrl}  (pid ${cloud.current.child.pid}; status ${cloudUrl}/api/status, ` +
        `metrics ${cloudUrl}/metrics; log ${cloud.logFile})`,
    );
    const edgeArgs = [
      'edge',
      '--cloud',
      cloudUrl,
      '--id',
      'edge-0',
      '--port',
      String(args.int('edge-port', 8701)),
      '--threads',
      '1',
    ];
    if (args.optionalString('provider')) edgeArgs.push('--provider', args.string('provider'));
    const edge = supervised(supervisePart('edge-0', edgeArgs, { logDir, env, log: console.log }));
    const edgeReady = await edge.ready;
    console.log(
      `edge   ${String(edgeReady.url)}  provider ${String(edgeReady.provider)}  ` +
        `(pid ${edge.current.child.pid}; status ${String(edgeReady.url)}/api/status; log ${edge.logFile})`,
    );
    console.log(`       operator dashboard: ${String(edgeReady.adminUrl)}#token=${secrets.operatorToken}`);
    const issue = () => issueJoinToken(cloudUrl, secrets.operatorToken);
    for (let i = 0; i < demoUsers; i++) {
      const data = join(REPO_ROOT, `packages/assets/data/sotu/train/user-${(i % 4) + 1}.txt`);
      const user = supervisePart(
        `demo-user-${i}`,
        [
          'user',
          '--cloud',
          cloudUrl,
          '--data',
          data,
          '--seed',
          String(i),
          '--engine',
          args.optionalString('engine') ?? 'auto',
        ],
        // a join token is good for one join: a restarted user needs a new one
        { logDir, env: async () => ({ SPLITLLM_JOIN_TOKEN: await issue() }), log: console.log },
      );
      supervised(user);
      const r = await user.ready;
      console.log(`demo user ${i}: ${String(r.userId)} training on ${data} with ${String(r.description ?? r.engine)}`);
    }
    console.log(
      `\na person joins in a browser (one use per link; the page serves WebGPU or WebAssembly training):\n` +
        `  ${cloudUrl}/?join=${await issue()}`,
    );
    console.log(
      `a headless user joins with:\n` +
        `  SPLITLLM_JOIN_TOKEN=${await issue()} pnpm splitllm user --cloud ${cloudUrl} --data YOUR_TEXT.txt`,
    );
    console.log(rounds > 0 ? `running ${rounds} round(s)...` : 'serving until Ctrl-C...');
    // a part that exits is restarted by its supervisor: only Ctrl-C or --rounds end the run
    await Promise.race([untilSignal(), done]);
  } finally {
    for (const p of [...parts].reverse()) await p.stop();
  }
}
