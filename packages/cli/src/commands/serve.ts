/**
 * `splitllm serve`: the real system on this machine: a cloud and one edge as separate processes
 * on loopback, plus (by default) one headless demo user so rounds run without a browser. State
 * persists in --state, so a restart resumes at the last recorded round. Runs until Ctrl-C, or
 * for --rounds rounds.
 *
 * The terminal stays quiet: the links once (again on `l` or SIGUSR2), then one status line,
 * redrawn in place on a terminal and printed every minute otherwise; each round's line goes to
 * --state/rounds.log. Only a part's restart interrupts (it matters, and it is rare).
 */
import { CODECS } from '@splitllm/wire';
import { randomToken } from '@splitllm/wire/node';
import { appendFileSync, chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Args } from '../args';
import { REPO_ROOT, modelDirOf } from '../io';
import { issueJoinToken, supervisePart, untilSignal, type SupervisedPart } from '../launcher';
import { codecOf, labelsOf, noiseOf, schemeOf } from './parts';

/** The edge's default per-step turn budget (the edge's --step-budget-ms): a demo pause stays under it. */
const EDGE_STEP_BUDGET_MS = 30_000;
/** Between two plain status lines when stdout is not a terminal. */
const PLAIN_STATUS_MS = 60_000;
/** Between two redraws of the status line on a terminal (the connected count changes between rounds). */
const TTY_STATUS_MS = 5_000;

export const serveHelp = `splitllm serve [--model NAME|DIR] [--state DIR] [--port P] [--edge-port P] [--demo-users N]
    [--demo-pause-s S] [--rounds R] [--steps-per-user N] [--codec ${CODECS.join('|')}]
    [--labels device|cloud] [--noise SIGMA] [--scheme hierarchical|sfl|sequential]
    [--engine auto|wgsl|wasm|reference] [--provider cpu|cuda|webgpu] [--web DIR]
  --model: moby-tiny (the shipped GPT-2, default), moby-llama-tiny (the shipped LLaMA-architecture
  model) or a model directory of either family.
  Starts the cloud (on --port, default 8700) and one edge (--edge-port, default 8701) as processes
  on loopback, and N headless demo users (default 1) training on the shipped demo data. The cloud
  serves the user page (--web, default apps/user-web/dist, built by \`npm start\`) at /. A demo user
  alone waits --demo-pause-s (default 60, 0: none) between its turns, so an idle demo records a
  version a minute; it trains at once when someone else waits for a turn.
  Prints the links (cloud, the edge's operator dashboard, a browser join link, the command that
  joins a headless user, how to make more join links), then one status line (round, version,
  users, tokens, last loss, restarts): redrawn in place on a terminal, a plain line a minute
  otherwise. The links again: press l (on a terminal), or \`kill -USR2 <serve's pid>\`. Each
  recorded round's line, and each restart, goes to --state/rounds.log. State (database, adapter
  versions, secrets, logs) lives in --state (default out/serve-state) and resumes; the cloud keeps
  the adapters of the last 20 versions and one per hour (\`splitllm cloud\` --keep-versions).
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

/**
 * Serve's own output: permanent lines, and one status line that is redrawn in place on a
 * terminal (cleared before a permanent line and drawn again after it) or printed as a plain line
 * now and then otherwise.
 */
class Terminal {
  private statusText = '';
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly tty: boolean,
    private readonly refresh: () => Promise<string>,
  ) {
    this.timer = setInterval(() => void this.update(!tty), tty ? TTY_STATUS_MS : PLAIN_STATUS_MS);
    this.timer.unref();
  }

  /** A permanent line (or lines). */
  line(text: string): void {
    if (this.tty && this.statusText) process.stdout.write('\r\x1b[2K');
    process.stdout.write(`${text}\n`);
    if (this.tty && this.statusText) process.stdout.write(this.fit(this.statusText));
  }

  /** Recomputes the status; on a terminal it is redrawn, otherwise printed when `print`. */
  async update(print = false): Promise<void> {
    let text: string;
    try {
      text = await this.refresh();
    } catch {
      return; // a status is a convenience: the next one will do
    }
    this.statusText = text;
    if (this.tty) process.stdout.write(`\r\x1b[2K${this.fit(text)}`);
    else if (print) process.stdout.write(`${new Date().toISOString()} ${text}\n`);
  }

  /** The status line cut to the terminal's width, so that redrawing it never wraps. */
  private fit(text: string): string {
    const cols = process.stdout.columns || 120;
    return text.length < cols ? text : `${text.slice(0, cols - 2)}…`;
  }

  close(): void {
    clearInterval(this.timer);
    if (this.tty && this.statusText) process.stdout.write('\n');
    this.statusText = '';
  }
}

/** What the status line shows, gathered from the cloud's round lines and restarts. */
interface Progress {
  round: number | null;
  version: number | null;
  usersThisRound: number;
  /** every user that trained in a round since serve started (browser users too: they are participants) */
  usersSeen: Set<string>;
  tokens: number;
  loss: number | null;
  rounds: number;
}

export async function serveCommand(argv: string[]): Promise<void> {
  const args = Args.parse('serve', argv, {
    model: { type: 'string' },
    state: { type: 'string' },
    port: { type: 'string' },
    'edge-port': { type: 'string' },
    'demo-users': { type: 'string' },
    'demo-pause-s': { type: 'string' },
    rounds: { type: 'string' },
    'steps-per-user': { type: 'string' },
    codec: { type: 'string' },
    labels: { type: 'string' },
    noise: { type: 'string' },
    scheme: { type: 'string' },
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
  const modelDir = modelDirOf(args.optionalString('model'));
  const stateDir = resolve(args.optionalString('state') ?? join(REPO_ROOT, 'out/serve-state'));
  const demoUsers = args.int('demo-users', 1);
  const rounds = args.int('rounds', 0);
  const stepsPerUser = args.int('steps-per-user', 20, 1);
  // the pause is taken inside a turn: it leaves at least one step's budget for the turn itself
  const pauseMs = Math.min(args.float('demo-pause-s', 60) * 1000, stepsPerUser * EDGE_STEP_BUDGET_MS);
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
  const roundsLog = join(stateDir, 'rounds.log');
  const logLine = (text: string) => {
    appendFileSync(roundsLog, `${new Date().toISOString()} ${text}\n`, { mode: 0o600 });
  };
  if (existsSync(roundsLog)) chmodSync(roundsLog, 0o600);

  const progress: Progress = {
    round: null,
    version: null,
    usersThisRound: 0,
    usersSeen: new Set(),
    tokens: 0,
    loss: null,
    rounds: 0,
  };
  const parts: SupervisedPart[] = [];
  let edgeUrl: string | undefined;
  const tty = process.stdout.isTTY === true;
  const term = new Terminal(tty, async () => {
    const p = progress;
    let connected = '';
    if (edgeUrl) {
      try {
        const res = await fetch(`${edgeUrl}/api/status`, { signal: AbortSignal.timeout(2000) });
        const s = (await res.json()) as { users?: { connected?: number; waiting?: number } };
        connected = `, ${s.users?.connected ?? '?'} connected`;
      } catch {
        connected = ', edge not answering';
      }
    }
    const restarts = parts.reduce((n, part) => n + part.restarts, 0);
    return (
      `${p.round === null ? 'no round yet' : `round ${p.round} (version ${p.version})`} | ` +
      `users ${p.usersThisRound} this round, ${p.usersSeen.size} in all${connected} | ` +
      `${p.tokens} tokens | loss ${p.loss === null ? '-' : p.loss.toFixed(4)} | restarts ${restarts}` +
      (tty ? ' | l: links, Ctrl-C: stop' : '')
    );
  });
  // a restart is shown at once and logged; a restarted part says so once it serves again
  const partLog = (text: string) => {
    term.line(text);
    logLine(text);
  };
  const supervised = (p: SupervisedPart): SupervisedPart => {
    p.onRestart((e) =>
      e.part.ready.then(
        () => partLog(`${e.name} is serving again (pid ${e.part.child.pid}, restart ${e.restart})`),
        () => undefined,
      ),
    );
    parts.push(p);
    return p;
  };
  let stopKeys: () => void = () => undefined;
  let printLinks: () => Promise<void> = async () => undefined;
  const onUsr2 = () => void printLinks();
  // at once: Node's default for SIGUSR2 ends the process
  process.on('SIGUSR2', onUsr2);
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
        String(stepsPerUser),
        '--codec',
        codecOf(args.optionalString('codec')),
        '--labels',
        labelsOf(args.optionalString('labels')),
        '--noise',
        String(noiseOf(args)),
        '--scheme',
        schemeOf(args.optionalString('scheme')),
        '--threads',
        '1',
        '--web',
        webDir,
      ],
      { logDir, env, log: partLog },
    );
    supervised(cloud);
    const cloudUrl = String((await cloud.ready).url);
    // --rounds counts rounds from now: a resumed state may already be far along
    let reached: () => void = () => undefined;
    const done = new Promise<void>((res) => (reached = res));
    cloud.onLine((j) => {
      if (j.event !== 'round') return;
      // the cloud's own count: every user aggregated in the round, browser users included
      const users = (Array.isArray(j.participants) ? (j.participants as string[]) : [])
        .filter((p) => p.startsWith('user:'))
        .map((p) => p.slice('user:'.length));
      const evicted = Array.isArray(j.evicted) ? (j.evicted as number[]) : [];
      logLine(
        `round ${j.round} recorded: version ${j.version}, loss ${Number(j.loss).toFixed(4)}, ` +
          `${j.users} user(s), ${j.tokens} tokens, ` +
          `${(Number(j.bytes) / 2 ** 20).toFixed(2)} MiB, ${(Number(j.ms) / 1000).toFixed(1)} s` +
          (users.length > 0 ? `; users ${users.join(' ')}` : '') +
          (evicted.length > 0 ? `; adapters deleted by retention: ${evicted.join(' ')}` : ''),
      );
      progress.round = Number(j.round);
      progress.version = Number(j.version);
      progress.usersThisRound = Number(j.users);
      for (const u of users) progress.usersSeen.add(u);
      progress.tokens += Number(j.tokens);
      progress.loss = typeof j.loss === 'number' ? j.loss : null;
      progress.rounds++;
      void term.update();
      if (rounds > 0 && progress.rounds >= rounds) reached();
    });
    term.line(
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
    const edge = supervised(supervisePart('edge-0', edgeArgs, { logDir, env, log: partLog }));
    const edgeReady = await edge.ready;
    edgeUrl = String(edgeReady.url);
    term.line(
      `edge   ${edgeUrl}  provider ${String(edgeReady.provider)}  ` +
        `(pid ${edge.current.child.pid}; status ${edgeUrl}/api/status; log ${edge.logFile})`,
    );
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
          '--pause-ms',
          String(Math.round(pauseMs)),
        ],
        // a join token is good for one join: a restarted user needs a new one
        { logDir, env: async () => ({ SPLITLLM_JOIN_TOKEN: await issue() }), log: partLog },
      );
      supervised(user);
      const r = await user.ready;
      term.line(
        `demo user ${i}: ${String(r.userId)} training on ${data} with ${String(r.description ?? r.engine)}` +
          (pauseMs > 0 ? `, ${Math.round(pauseMs / 1000)} s between turns while nobody else waits` : ''),
      );
    }
    // fresh single-use tokens each time: an earlier link may have been used
    printLinks = async () => {
      const [browser, headless] = [await issue(), await issue()];
      term.line(
        [
          '',
          `operator dashboard: ${String(edgeReady.adminUrl)}#token=${secrets.operatorToken}`,
          `a person joins in a browser (one use per link; the page trains with WebGPU or WebAssembly):`,
          `  ${cloudUrl}/?join=${browser}`,
          `a headless user joins with:`,
          `  SPLITLLM_JOIN_TOKEN=${headless} pnpm splitllm user --cloud ${cloudUrl} --data YOUR_TEXT.txt`,
          `more join links (one use each; or the page ${cloudUrl}/admin/invitations with the operator token):`,
          `  pnpm splitllm invite --cloud ${cloudUrl} --state ${stateDir} --count 5 --expires 1d`,
          `  or: curl -s -X POST -H "authorization: Bearer ${secrets.operatorToken}" ${cloudUrl}/api/join-tokens`,
          `each round's line: ${roundsLog}; part logs: ${logDir}`,
          `these links again: ${tty && process.stdin.isTTY ? 'press l, or ' : ''}kill -USR2 ${process.pid}`,
          '',
        ].join('\n'),
      );
    };
    await printLinks();
    term.line(rounds > 0 ? `running ${rounds} round(s)...` : 'serving until Ctrl-C...');
    let quit: () => void = () => undefined;
    const quitKey = new Promise<void>((res) => (quit = res));
    stopKeys = listenForKeys({ l: () => void printLinks(), q: quit, '\u0003': quit });
    void term.update();
    // a part that exits is restarted by its supervisor: only Ctrl-C, q or --rounds end the run
    await Promise.race([untilSignal(), done, quitKey]);
    await term.update(true);
    term.line(`stopping after ${progress.rounds} round(s) recorded this run (each one's line: ${roundsLog})`);
  } finally {
    process.off('SIGUSR2', onUsr2);
    stopKeys();
    term.close();
    for (const p of [...parts].reverse()) await p.stop();
  }
}

/**
 * Single keys on a terminal's stdin (raw mode, so Ctrl-C arrives as a key and must be one of
 * them); nothing when stdin is not a terminal. Returns the function that gives stdin back.
 */
function listenForKeys(keys: Record<string, () => void>): () => void {
  const stdin = process.stdin;
  if (!stdin.isTTY) return () => undefined;
  const onData = (d: Buffer) => {
    for (const ch of d.toString('utf8')) keys[ch]?.();
  };
  stdin.setRawMode(true);
  stdin.on('data', onData);
  stdin.resume();
  return () => {
    stdin.off('data', onData);
    stdin.setRawMode(false);
    stdin.pause();
  };
}
