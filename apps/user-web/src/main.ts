/**
 * The page: joins a run, keeps the person's documents in IndexedDB, and shows what the
 * training worker (./worker.ts, through comlink) reports. It never sends the documents
 * anywhere itself; its only request of its own reads the run's public manifest (GET
 * /api/manifest), so that what leaves the device, and how much of it the servers could read
 * back, is said from the run's own settings before Start.
 */
import type { RecoveryFigure, RunPrivacy } from '@splitllm/wire';
import * as Comlink from 'comlink';
import * as store from './store';
import type { PageEvent, RunState, TrainingWorkerApi } from './worker';

const $ = <T extends HTMLElement = HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (!el) throw new Error(`page element #${id} is missing`);
  return el as T;
};

const ui = {
  joinCode: $<HTMLInputElement>('join-code'),
  joinHint: $('join-hint'),
  docText: $<HTMLTextAreaElement>('doc-text'),
  addDoc: $<HTMLButtonElement>('add-doc'),
  docFiles: $<HTMLInputElement>('doc-files'),
  docs: $<HTMLUListElement>('docs'),
  docsSummary: $('docs-summary'),
  engineSelect: $<HTMLSelectElement>('engine-select'),
  start: $<HTMLButtonElement>('start'),
  pause: $<HTMLButtonElement>('pause'),
  resume: $<HTMLButtonElement>('resume'),
  connection: $('connection'),
  userId: $('user-id'),
  edge: $('edge'),
  queue: $('queue'),
  engine: $('engine'),
  engineReason: $('engine-reason'),
  version: $('version'),
  tokens: $('tokens'),
  turns: $('turns'),
  stepMs: $('step-ms'),
  downloadStatus: $('download-status'),
  downloadProgress: $<HTMLProgressElement>('download-progress'),
  stepStatus: $('step-status'),
  stepProgress: $<HTMLProgressElement>('step-progress'),
  lossChart: $('loss-chart') as unknown as SVGSVGElement,
  lossSummary: $('loss-summary'),
  message: $('message'),
  downloadAdapter: $<HTMLButtonElement>('download-adapter'),
  adapterStatus: $('adapter-status'),
  generatePrompt: $<HTMLInputElement>('generate-prompt'),
  generate: $<HTMLButtonElement>('generate'),
  generateOutput: $('generate-output'),
  privacy: $('privacy'),
  privacyStatus: $('privacy-status'),
  stays: $<HTMLUListElement>('stays'),
  leaves: $<HTMLUListElement>('leaves'),
  recovery: $<HTMLUListElement>('recovery'),
  recoveryHow: $('recovery-how'),
};

const params = new URLSearchParams(location.search);
let state: RunState = 'idle';
let docs: store.StoredDoc[] = [];
const worker = Comlink.wrap<TrainingWorkerApi>(
  new Worker(new URL('./worker.ts', import.meta.url), { type: 'module', name: 'splitllm-training' }),
);

// ---------------------------------------------------------------------------------------------
// join link / code

/** A join link (…/?join=TOKEN) or a bare code; the cloud is the link's origin, else this page's. */
function parseJoin(input: string): { cloudUrl: string; joinToken: string } | undefined {
  const s = input.trim();
  if (!s) return undefined;
  try {
    const u = new URL(s);
    const t = u.searchParams.get('join');
    if (t) return { cloudUrl: u.searchParams.get('cloud') ?? u.origin, joinToken: t };
  } catch {
    /* not a URL: a bare code */
  }
  return { cloudUrl: params.get('cloud') ?? location.origin, joinToken: s };
}

function readJoinFromAddress(): void {
  const t = params.get('join');
  if (!t) return;
  ui.joinCode.value = t;
  ui.joinHint.textContent = 'Join code taken from the link. It can be used once.';
  // the code is single-use: keep it out of the history and of reloads
  params.delete('join');
  const rest = params.toString();
  history.replaceState(null, '', location.pathname + (rest ? `?${rest}` : ''));
}

// ---------------------------------------------------------------------------------------------
// what leaves this device: said from the run's settings (its manifest), before Start

/** A list item: a bold lead-in, then plain text. */
function item(key: string, lead: string, rest: string): HTMLLIElement {
  const li = document.createElement('li');
  li.dataset.item = key;
  const b = document.createElement('b');
  b.textContent = lead;
  li.append(b, rest);
  return li;
}

function layers(k: number): string {
  return k === 1 ? "the model's first layer" : `the model's first ${k} layers`;
}

/** How an attack works, in words (the attacks of `splitllm attack`, described in docs/privacy.md). */
const ATTACK_TEXT: Record<string, string> = {
  decoder: 'a decoder trained on public text',
  search: "a search with the model's public weights",
  'gradient-labels': 'working out the labels from the gradient this tab sends back',
};

function pct(rate: number): string {
  return `${Math.round(rate * 100)}%`;
}

/** What the strongest attacks measured at `who` recover: the largest word rate, and every attack that reaches it. */
function worst(figures: RecoveryFigure[], who: RecoveryFigure['who']): RecoveryFigure[] {
  const at = figures.filter((f) => f.who === who);
  const top = Math.max(...at.map((f) => f.wordRate));
  return at.filter((f) => f.wordRate === top);
}

function readBack(top: RecoveryFigure[], who: string): string {
  const how = [...new Set(top.map((f) => ATTACK_TEXT[f.attack] ?? f.attack))].join(', or ');
  const tokens = Math.max(...top.map((f) => f.tokenRate));
  const words = pct(top[0].wordRate);
  return `${who} could read back about ${words} of your words (${pct(tokens)} of the tokens, by ${how}).`;
}

/** The lists for `p`; undefined: the settings are not known (yet), so only what always stays is said. */
function renderPrivacy(p: RunPrivacy | undefined): void {
  const stays = [
    item('text', 'Your documents, as text.', " They are kept in this browser's storage and never uploaded."),
  ];
  if (!p) {
    ui.stays.replaceChildren(...stays);
    ui.leaves.replaceChildren();
    ui.recovery.replaceChildren();
    ui.recoveryHow.textContent = '';
    delete ui.privacy.dataset.labels;
    return;
  }
  ui.privacy.dataset.labels = p.labels;
  const device = p.labels === 'device';
  if (device) {
    stays.push(
      item(
        'token-ids',
        'The token ids',
        ' your text is split into, and the labels (the next token at every position): ' +
          "the model's last step and the loss are computed in this tab. None of them is sent, but what is " +
          'sent can reveal them: see below.',
      ),
    );
  }
  stays.push(item('compute', 'The computation', ` of ${layers(p.k)} on your text, in this tab.`));
  const noise =
    p.noiseSigma > 0
      ? `with Gaussian noise of standard deviation ${p.noiseSigma} added to each number`
      : 'without added noise';
  const leaves = [
    item('activations', `Activations of ${layers(p.k)}`, ` for each training batch (numbers, not text), ${noise}.`),
  ];
  if (device) {
    leaves.push(
      item(
        'head-grad',
        "The gradient of the model's last layer output",
        " for each batch, and each step's loss as a number.",
      ),
    );
  } else {
    leaves.push(
      item(
        'labels',
        'The next-token labels of your text',
        ': the id of the next token at every position of each batch. Anyone with the public tokenizer can read ' +
          'them back as your text.',
      ),
    );
  }
  leaves.push(
    item(
      'adapter',
      `Your trained adapter for ${layers(p.k)}`,
      ": small LoRA weights, after each of your turns; they are averaged with everyone else's.",
    ),
    item('prompt', 'When you ask for a continuation', ': the activations of your prompt, as above.'),
  );
  ui.stays.replaceChildren(...stays);
  ui.leaves.replaceChildren(...leaves);

  const rec: HTMLLIElement[] = [];
  const line = (who: string, text: string, rate?: number) => {
    const li = document.createElement('li');
    li.dataset.who = who;
    if (rate !== undefined) li.dataset.wordRate = rate.toFixed(4);
    li.textContent = text;
    rec.push(li);
  };
  if (!device) {
    line(
      'labels',
      'The labels leave with the activations: your edge operator and the cloud can read back all of your ' +
        'text from them with the public tokenizer, whatever the figures below say about the activations.',
    );
  }
  const figures = p.recovery?.figures ?? [];
  const edge = worst(figures, 'edge');
  const cloud = worst(figures, 'cloud');
  if (edge.length > 0) line('edge', readBack(edge, 'An edge operator'), edge[0].wordRate);
  else
    line(
      'edge',
      "How much of your text an edge operator could read back has not been measured for this run's settings.",
    );
  if (cloud.length > 0) line('cloud', readBack(cloud, 'The cloud'), cloud[0].wordRate);
  ui.recovery.replaceChildren(...rec);
  ui.recoveryHow.textContent = p.recovery
    ? `Measured with \u201c${p.recovery.command}\u201d on ${p.recovery.measuredOn}. ` +
      'How, and what each attack does: docs/privacy.md in the project.'
    : 'docs/privacy.md in the project says how these figures are measured, and for which settings they exist.';
}

/** The privacy block of a manifest, checked enough to be said to a person (the worker checks it all). */
function privacyOf(json: unknown): RunPrivacy {
  const p = (json as { privacy?: RunPrivacy } | null)?.privacy;
  if (!p || (p.labels !== 'device' && p.labels !== 'cloud') || !Number.isInteger(p.k) || !(p.noiseSigma >= 0))
    throw new Error('the run sent no privacy settings');
  const rate = (v: unknown) => typeof v === 'number' && v >= 0 && v <= 1;
  if (p.recovery !== null && !(p.recovery?.figures ?? [null]).every((f) => rate(f?.wordRate) && rate(f?.tokenRate)))
    throw new Error("the run's recovery figures are malformed");
  return p;
}

let privacyFrom: string | undefined;

/** Reads the run's settings from `cloudUrl` (once per cloud) and says what leaves. */
async function loadPrivacy(cloudUrl: string): Promise<void> {
  if (cloudUrl === privacyFrom) return;
  privacyFrom = cloudUrl;
  ui.privacyStatus.dataset.state = 'loading';
  ui.privacyStatus.textContent = "Reading this run's settings…";
  try {
    const res = await fetch(new URL('/api/manifest', cloudUrl));
    if (!res.ok) throw new Error(`the run answered ${res.status}`);
    const p = privacyOf(await res.json());
    if (privacyFrom !== cloudUrl) return;
    renderPrivacy(p);
    ui.privacyStatus.dataset.state = 'loaded';
    ui.privacyStatus.textContent =
      `From this run's settings: labels ${p.labels === 'device' ? 'on this device' : 'sent to the cloud'}, ` +
      `split after layer ${p.k}, noise ${p.noiseSigma > 0 ? `of standard deviation ${p.noiseSigma}` : 'none'}.`;
  } catch (e) {
    if (privacyFrom !== cloudUrl) return;
    privacyFrom = undefined;
    renderPrivacy(undefined);
    ui.privacyStatus.dataset.state = 'error';
    ui.privacyStatus.textContent =
      `Could not read this run's settings (${(e as Error).message}), so what leaves this device cannot be ` +
      'listed here yet. Check the join link.';
  }
}

/** The cloud the page would join: the pasted link's, else the stored session's, else this page's. */
async function privacyCloud(): Promise<string> {
  const join = parseJoin(ui.joinCode.value);
  if (join) return join.cloudUrl;
  return (await store.loadSession())?.cloudUrl ?? params.get('cloud') ?? location.origin;
}

ui.joinCode.addEventListener('change', () => void privacyCloud().then(loadPrivacy));

// ---------------------------------------------------------------------------------------------
// documents (IndexedDB only)

function fmtBytes(n: number): string {
  return n < 1024 ? `${n} B` : n < 2 ** 20 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 2 ** 20).toFixed(1)} MiB`;
}

function renderDocs(): void {
  ui.docs.replaceChildren(
    ...docs.map((d) => {
      const li = document.createElement('li');
      li.dataset.docId = d.id;
      const name = document.createElement('span');
      name.textContent = `${d.name} (${fmtBytes(new TextEncoder().encode(d.text).length)})`;
      const rm = document.createElement('button');
      rm.type = 'button';
      rm.textContent = 'Remove';
      rm.disabled = isRunning();
      rm.addEventListener('click', () => void removeDoc(d.id));
      li.append(name, rm);
      return li;
    }),
  );
  const total = docs.reduce((n, d) => n + d.text.length, 0);
  ui.docsSummary.textContent = docs.length
    ? `${docs.length} document${docs.length > 1 ? 's' : ''}, ${total.toLocaleString()} characters, ` +
      `stored in this browser only.`
    : 'No documents yet.';
  updateButtons();
}

async function addDoc(name: string, text: string): Promise<void> {
  if (!text.trim()) {
    say('That document is empty.', true);
    return;
  }
  docs = [...docs, { id: crypto.randomUUID(), name, text, addedAt: Date.now() }];
  await store.saveDocs(docs);
  renderDocs();
}

async function removeDoc(id: string): Promise<void> {
  docs = docs.filter((d) => d.id !== id);
  await store.saveDocs(docs);
  renderDocs();
}

ui.addDoc.addEventListener('click', () => {
  const text = ui.docText.value;
  const n = docs.length + 1;
  void addDoc(`pasted text ${n}`, text).then(() => {
    if (text.trim()) ui.docText.value = '';
  });
});

ui.docFiles.addEventListener('change', () => {
  const files = [...(ui.docFiles.files ?? [])];
  void (async () => {
    for (const f of files) await addDoc(f.name, await f.text());
    ui.docFiles.value = '';
  })();
});

// ---------------------------------------------------------------------------------------------
// training state

function isRunning(): boolean {
  return ['joining', 'preparing', 'connected', 'training'].includes(state);
}

function updateButtons(): void {
  const running = isRunning();
  ui.start.hidden = running || state === 'paused';
  ui.start.disabled = docs.length === 0;
  ui.pause.hidden = !running;
  ui.resume.hidden = state !== 'paused';
  ui.resume.disabled = docs.length === 0;
  ui.engineSelect.disabled = running;
  ui.generate.disabled = !(state === 'connected' || state === 'training');
  ui.addDoc.disabled = running;
  ui.docFiles.disabled = running;
}

function say(text: string, error = false): void {
  ui.message.textContent = text;
  ui.message.classList.toggle('error', error);
}

const STATE_TEXT: Record<RunState, string> = {
  idle: 'not connected',
  joining: 'joining the run…',
  preparing: 'downloading the model segment and preparing the engine…',
  connected: 'connected, waiting for a turn',
  training: 'training',
  paused: 'paused',
  stopped: 'stopped',
  error: 'error',
};

function setState(s: RunState): void {
  state = s;
  ui.connection.textContent = STATE_TEXT[s];
  ui.connection.dataset.state = s;
  if (s === 'paused' || s === 'stopped' || s === 'error') ui.queue.textContent = '-';
  updateButtons();
  renderDocs();
}

// ---------------------------------------------------------------------------------------------
// loss chart (SVG, no library)

const SVG_NS = 'http://www.w3.org/2000/svg';

function renderLosses(losses: store.LossPoint[]): void {
  const svg = ui.lossChart;
  svg.replaceChildren();
  svg.dataset.points = String(losses.length);
  svg.dataset.losses = losses.map((p) => p.loss.toFixed(5)).join(',');
  const W = 600;
  const H = 220;
  const pad = { l: 46, r: 10, t: 10, b: 26 };
  const axis = (x1: number, y1: number, x2: number, y2: number) => {
    const l = document.createElementNS(SVG_NS, 'line');
    for (const [k, v] of Object.entries({ x1, y1, x2, y2 })) l.setAttribute(k, String(v));
    l.setAttribute('stroke', '#99a');
    svg.append(l);
  };
  const label = (x: number, y: number, text: string, anchor = 'end') => {
    const t = document.createElementNS(SVG_NS, 'text');
    t.setAttribute('x', String(x));
    t.setAttribute('y', String(y));
    t.setAttribute('font-size', '11');
    t.setAttribute('fill', '#556');
    t.setAttribute('text-anchor', anchor);
    t.textContent = text;
    svg.append(t);
  };
  axis(pad.l, pad.t, pad.l, H - pad.b);
  axis(pad.l, H - pad.b, W - pad.r, H - pad.b);
  if (losses.length === 0) {
    label(W / 2, H / 2, 'no steps yet', 'middle');
    ui.lossSummary.textContent = '';
    return;
  }
  const ys = losses.map((p) => p.loss);
  let lo = Math.min(...ys);
  let hi = Math.max(...ys);
  if (hi - lo < 1e-6) {
    lo -= 0.5;
    hi += 0.5;
  }
  const x = (i: number) => pad.l + (losses.length === 1 ? 0 : (i / (losses.length - 1)) * (W - pad.l - pad.r));
  const y = (v: number) => pad.t + (1 - (v - lo) / (hi - lo)) * (H - pad.t - pad.b);
  // round boundaries
  for (let i = 1; i < losses.length; i++) {
    if (losses[i].round !== losses[i - 1].round) {
      const l = document.createElementNS(SVG_NS, 'line');
      l.setAttribute('x1', String(x(i - 0.5)));
      l.setAttribute('x2', String(x(i - 0.5)));
      l.setAttribute('y1', String(pad.t));
      l.setAttribute('y2', String(H - pad.b));
      l.setAttribute('stroke', '#dde');
      l.setAttribute('stroke-dasharray', '3 3');
      svg.append(l);
    }
  }
  const line = document.createElementNS(SVG_NS, 'polyline');
  line.setAttribute('fill', 'none');
  line.setAttribute('stroke', '#1f5fbf');
  line.setAttribute('stroke-width', '2');
  line.setAttribute('points', losses.map((p, i) => `${x(i).toFixed(1)},${y(p.loss).toFixed(1)}`).join(' '));
  svg.append(line);
  label(pad.l - 4, pad.t + 8, hi.toFixed(2));
  label(pad.l - 4, H - pad.b, lo.toFixed(2));
  label(pad.l, H - 8, 'step 1', 'start');
  label(W - pad.r, H - 8, `step ${losses.length}`);
  const first = losses[0].loss;
  const last = losses[losses.length - 1].loss;
  ui.lossSummary.textContent = `(first ${first.toFixed(3)}, latest ${last.toFixed(3)}, ${losses.length} steps)`;
}

function renderProgress(p: store.StoredProgress): void {
  ui.tokens.textContent = p.tokens.toLocaleString();
  ui.turns.textContent = String(p.turns);
  ui.version.textContent = String(p.version);
  renderLosses(p.losses);
}

// ---------------------------------------------------------------------------------------------
// worker events

function onEvent(e: PageEvent): void {
  switch (e.type) {
    case 'state':
      setState(e.state);
      // a removal's message is a whole sentence for the person, not a technical error
      if (e.code === 'USER_REMOVED') say(e.message ?? '', true);
      else if (e.state === 'error') say(`${e.message ?? 'something went wrong'} [${e.code ?? 'ERROR'}]`, true);
      else if (e.state === 'stopped') say(`Stopped: ${e.message ?? ''}`);
      else if (e.state === 'paused')
        say(
          'Paused. Your documents, adapter and progress are kept in this browser; Resume puts you back in the queue.',
        );
      else if (e.state === 'connected')
        say('Connected. Your turn comes when the edge gets to you; this tab must stay open.');
      break;
    case 'session':
      // the join code is spent now: a Start after a failed start goes on with this session,
      // which a second use of the code would be refused
      if (ui.joinCode.value) {
        ui.joinCode.value = '';
        ui.joinHint.textContent = 'Joined: this browser keeps your place in the run; Start goes on with it.';
      }
      ui.userId.textContent = e.userId;
      ui.edge.textContent = `${e.edgeId} (${e.edgeUrl})`;
      break;
    case 'engine':
      ui.engine.textContent =
        e.kind === 'wgsl' ? 'WebGPU (WGSL)' : e.kind === 'wasm' ? 'WebAssembly (onnxruntime-web)' : e.kind;
      ui.engine.dataset.kind = e.kind;
      ui.engineReason.textContent = `(${e.reason})`;
      break;
    case 'download-progress':
      ui.downloadProgress.max = e.total ?? Math.max(e.loaded, 1);
      ui.downloadProgress.value = e.loaded;
      ui.downloadStatus.textContent = `downloading ${fmtBytes(e.loaded)}${e.total ? ` of ${fmtBytes(e.total)}` : ''}`;
      break;
    case 'download':
      if (e.what === 'segment') {
        ui.downloadProgress.max = 1;
        ui.downloadProgress.value = 1;
        ui.downloadStatus.textContent = e.cached
          ? `${fmtBytes(e.bytes)}, from this browser's cache`
          : `${fmtBytes(e.bytes)} downloaded`;
        ui.downloadStatus.dataset.cached = String(!!e.cached);
      }
      break;
    case 'welcome':
      ui.queue.textContent = e.position === 0 ? 'your turn' : `position ${e.position}`;
      break;
    case 'queue':
      ui.queue.textContent = e.position === 0 ? 'your turn' : `position ${e.position} of ${e.waiting}`;
      break;
    case 'turn':
      ui.queue.textContent = 'your turn';
      ui.stepProgress.max = e.steps;
      ui.stepProgress.value = 0;
      ui.stepStatus.textContent = `round ${e.round}: step 0 of ${e.steps}`;
      break;
    case 'step':
      ui.stepProgress.max = e.steps;
      ui.stepProgress.value = e.step;
      ui.stepStatus.textContent = `round ${e.round}: step ${e.step} of ${e.steps}, loss ${e.loss.toFixed(3)}`;
      ui.stepMs.textContent = `${e.ms.toFixed(0)} ms (${fmtBytes(e.bytesOut)} out, ${fmtBytes(e.bytesIn)} in)`;
      ui.stepMs.dataset.ms = e.ms.toFixed(1);
      break;
    case 'turn-end':
      ui.stepStatus.textContent = e.accepted
        ? `round ${e.round}: your turn is done; waiting for the round to end`
        : `round ${e.round}: the turn did not complete (${e.reason ?? 'dropped'})`;
      break;
    case 'round-end':
      ui.stepStatus.textContent = `round ${e.round} done: version ${e.version}. Waiting for the next turn.`;
      break;
    case 'progress':
      renderProgress(e.progress);
      break;
    case 'data':
      ui.docsSummary.textContent =
        `${e.documents} document${e.documents > 1 ? 's' : ''}, ` +
        `${e.tokens.toLocaleString()} tokens, stored in this browser only.`;
      break;
    case 'adapter-saved':
      ui.downloadAdapter.disabled = false;
      ui.adapterStatus.textContent = `from your turn in round ${e.round}`;
      break;
    case 'reconnecting':
      ui.connection.textContent = `reconnecting: ${e.reason}`;
      break;
    case 'reassigned':
      ui.edge.textContent = `${e.edgeId} (${e.edgeUrl})`;
      break;
    case 'error':
      // USER_REMOVED comes as the edge's error frame before the close: 'removed' says it in words
      if (e.code !== 'USER_REMOVED') say(`${e.message} [${e.code}]`, true);
      break;
    case 'removed':
      say(e.message, true);
      break;
    case 'closed':
      break;
  }
}

async function startTraining(joinToken: string | undefined, cloudUrl: string): Promise<void> {
  say('');
  setState('joining');
  try {
    await worker.start(
      { cloudUrl, joinToken, engine: ui.engineSelect.value as store.EngineChoice },
      Comlink.proxy(onEvent),
    );
    if (joinToken) ui.joinCode.value = '';
  } catch {
    /* the worker reported it as a 'state' error event */
  }
}

ui.start.addEventListener('click', () => {
  const join = parseJoin(ui.joinCode.value);
  void (async () => {
    const session = await store.loadSession();
    if (!join && !session) {
      say('Paste the join link or code you were given first.', true);
      ui.joinCode.focus();
      return;
    }
    await startTraining(join?.joinToken, join?.cloudUrl ?? session!.cloudUrl);
  })();
});

ui.pause.addEventListener('click', () => void worker.pause());
ui.resume.addEventListener('click', () => {
  void (async () => {
    const session = await store.loadSession();
    if (session) await startTraining(undefined, session.cloudUrl);
  })();
});

ui.downloadAdapter.addEventListener('click', () => {
  void (async () => {
    try {
      const { filename, bytes } = await worker.exportAdapter();
      const a = document.createElement('a');
      a.href = URL.createObjectURL(new Blob([bytes as Uint8Array<ArrayBuffer>], { type: 'application/zip' }));
      a.download = filename;
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
    } catch (e) {
      say((e as Error).message, true);
    }
  })();
});

ui.generate.addEventListener('click', () => {
  const prompt = ui.generatePrompt.value;
  ui.generateOutput.textContent = prompt;
  ui.generate.disabled = true;
  void (async () => {
    try {
      const r = await worker.generate(
        prompt,
        24,
        Comlink.proxy((piece: string) => (ui.generateOutput.textContent += piece)),
      );
      ui.generateOutput.textContent = prompt + r.text;
      ui.generateOutput.dataset.tokens = String(r.tokens);
      say(`${r.tokens} tokens in ${(r.ms / 1000).toFixed(1)} s, through your edge and the cloud.`);
    } catch (e) {
      say((e as Error).message, true);
    } finally {
      updateButtons();
    }
  })();
});

// ---------------------------------------------------------------------------------------------
// first load: what this browser already holds

async function init(): Promise<void> {
  readJoinFromAddress();
  renderPrivacy(undefined);
  // not awaited: the settings show when the run answers, the rest of the page does not wait for it
  void privacyCloud().then(loadPrivacy);
  const engine = params.get('engine');
  if (engine === 'auto' || engine === 'wgsl' || engine === 'wasm') ui.engineSelect.value = engine;
  docs = await store.loadDocs();
  renderDocs();
  renderProgress(await store.loadProgress());
  const adapter = await store.loadAdapter();
  if (adapter) {
    ui.downloadAdapter.disabled = false;
    ui.adapterStatus.textContent = `from your turn in round ${adapter.round}`;
  }
  const seg = await store.loadSegment();
  if (seg)
    ui.downloadStatus.textContent =
      `${fmtBytes(seg.bytes.byteLength)} in this browser's cache ` + `(run version ${seg.version})`;
  const session = await store.loadSession();
  if (session) {
    ui.userId.textContent = session.credentials.userId;
    ui.edge.textContent = `${session.credentials.edgeId} (${session.credentials.edgeUrl})`;
    if (!params.get('engine')) ui.engineSelect.value = session.engine;
  }
  if (session && !ui.joinCode.value) {
    if (session.paused) {
      setState('paused');
      say('You paused training. Resume to go back in the queue.');
    } else if (docs.length > 0) {
      say('Resuming where you left off…');
      await startTraining(undefined, session.cloudUrl);
      return;
    }
  }
  setState(state);
  if (!session && !ui.joinCode.value)
    say('To take part you need a join link from the person running this fine-tuning.');
}

void init();
