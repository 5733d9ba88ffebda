/**
 * The page: joins a run, keeps the person's documents in IndexedDB, and shows what the
 * training worker (./worker.ts, through comlink) reports. It never sends the documents
 * anywhere itself; its own requests read the run's public manifest (GET /api/manifest), so that
 * what leaves the device, how much of it the servers could read back, and which model this is
 * are said from the run's own settings before Start, and (through the worker) the run's public
 * tokenizer, so that the amount of text is said in tokens before Start.
 *
 * Every error is said in words (./messages.ts) next to the control it concerns, and stays until
 * the person acts there or the condition goes away; ordinary events (a pause) are not errors.
 */
import type { RecoveryFigure, RunPrivacy } from '@splitllm/wire';
import * as Comlink from 'comlink';
import { LossChart } from './chart';
import { renderGlossary, term } from './glossary';
import { type Control, explain, type Problem } from './messages';
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
  model: $('model'),
  modelName: $('model-name'),
  modelSize: $('model-size'),
  modelDescription: $('model-description'),
  modelDemo: $('model-demo'),
  docText: $<HTMLTextAreaElement>('doc-text'),
  addDoc: $<HTMLButtonElement>('add-doc'),
  docFiles: $<HTMLInputElement>('doc-files'),
  docs: $<HTMLUListElement>('docs'),
  docsSummary: $('docs-summary'),
  enough: $('enough'),
  engineSelect: $<HTMLSelectElement>('engine-select'),
  start: $<HTMLButtonElement>('start'),
  pause: $<HTMLButtonElement>('pause'),
  resume: $<HTMLButtonElement>('resume'),
  startWhy: $('start-why'),
  trainStatus: $('train-status'),
  connection: $('connection'),
  userId: $('user-id'),
  edge: $('edge'),
  queue: $('queue'),
  engine: $('engine'),
  engineWhy: $('engine-why'),
  engineNote: $('engine-note'),
  engineDetails: $('engine-details'),
  engineReason: $('engine-reason'),
  version: $('version'),
  versionRound: $('version-round'),
  tokens: $('tokens'),
  passes: $('passes'),
  passesNote: $('passes-note'),
  turns: $('turns'),
  stepMs: $('step-ms'),
  downloadStatus: $('download-status'),
  downloadProgress: $<HTMLProgressElement>('download-progress'),
  stepStatus: $('step-status'),
  stepProgress: $<HTMLProgressElement>('step-progress'),
  lossChart: $('loss-chart'),
  lossSummary: $('loss-summary'),
  downloadAdapter: $<HTMLButtonElement>('download-adapter'),
  adapterStatus: $('adapter-status'),
  generatePrompt: $<HTMLInputElement>('generate-prompt'),
  generate: $<HTMLButtonElement>('generate'),
  generateWhy: $('generate-why'),
  generateOutput: $('generate-output'),
  generateStatus: $('generate-status'),
  privacy: $('privacy'),
  privacyStatus: $('privacy-status'),
  stays: $<HTMLUListElement>('stays'),
  leaves: $<HTMLUListElement>('leaves'),
  recovery: $<HTMLUListElement>('recovery'),
  recoveryHow: $('recovery-how'),
  glossary: $('glossary-list'),
};

/** Where each control's problems are shown: right under it. */
const problemSlot: Record<Control, HTMLElement> = {
  join: $('join-problem'),
  docs: $('docs-problem'),
  train: $('train-problem'),
  generate: $('generate-problem'),
  download: $('download-problem'),
};

const params = new URLSearchParams(location.search);
let state: RunState = 'idle';
let docs: store.StoredDoc[] = [];
/** this browser holds a session (it joined a run): Start goes on with it without a join code */
let hasSession = false;
const worker = Comlink.wrap<TrainingWorkerApi>(
  new Worker(new URL('./worker.ts', import.meta.url), { type: 'module', name: 'splitllm-training' }),
);
const chart = new LossChart(ui.lossChart);

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

/** A list item: a bold lead-in, then text (with links into the glossary). */
function item(key: string, lead: string, ...rest: (string | Node)[]): HTMLLIElement {
  const li = document.createElement('li');
  li.dataset.item = key;
  const b = document.createElement('b');
  b.textContent = lead;
  li.append(b, ...rest);
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
      ': small ',
      term('adapter', 'LoRA'),
      " weights, after each of your turns; they are averaged with everyone else's.",
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

// ---------------------------------------------------------------------------------------------
// problems: one per control, in words, with the code in a details line

/** Shows `p` under its control; it stays until clearProblem(p.at) (the person acts, or it no longer holds). */
function showProblem(p: Problem): void {
  const slot = problemSlot[p.at];
  const sentence = document.createElement('p');
  sentence.className = 'sentence';
  sentence.textContent = p.sentence;
  const details = document.createElement('details');
  details.className = 'small';
  const summary = document.createElement('summary');
  summary.textContent = 'details';
  const code = document.createElement('code');
  code.textContent = p.code;
  const raw = document.createElement('span');
  raw.append(code, `: ${p.raw}`);
  details.append(summary, raw);
  slot.replaceChildren(sentence, details);
  slot.dataset.code = p.code;
  slot.hidden = false;
}

function clearProblem(at: Control): void {
  const slot = problemSlot[at];
  slot.hidden = true;
  slot.replaceChildren();
  delete slot.dataset.code;
}

/** The host of `url`, for sentences ("Cannot reach the server at HOST"). */
function hostOf(url: string | undefined): string | undefined {
  if (!url) return undefined;
  try {
    return new URL(url).host;
  } catch {
    return url;
  }
}

// ---------------------------------------------------------------------------------------------
// the run's manifest: privacy, the model, and how much text a turn uses

interface RunInfo {
  privacy: RunPrivacy;
  model?: { name: string; description: string; parameters: number; demo: boolean };
  /** the tokens one turn trains on: batch x seq x stepsPerUser */
  turn?: { batch: number; seq: number; steps: number };
}

let run: RunInfo | undefined;
let manifestFrom: string | undefined;
/** the cloud the page reads the run from (the join link's, the session's, or this page's) */
let cloudUrl = location.origin;

function infoOf(json: unknown): RunInfo {
  const j = json as { model?: RunInfo['model']; train?: { batch?: number; seq?: number; stepsPerUser?: number } };
  const m = j?.model;
  const model =
    m && typeof m.name === 'string' && typeof m.parameters === 'number' && typeof m.demo === 'boolean' ? m : undefined;
  const t = j?.train;
  const pos = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v > 0;
  const turn =
    t && pos(t.batch) && pos(t.seq) && pos(t.stepsPerUser)
      ? { batch: t.batch, seq: t.seq, steps: t.stepsPerUser }
      : undefined;
  return { privacy: privacyOf(json), model, turn };
}

/** "0.8 M parameters", "12 k parameters" */
function paramText(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)} billion parameters`;
  if (n >= 1e5) return `${(n / 1e6).toFixed(1)} M parameters`;
  return `${Math.round(n / 1e3)} k parameters`;
}

function renderModel(): void {
  const m = run?.model;
  ui.model.hidden = !m;
  if (!m) return;
  ui.modelName.textContent = m.name;
  ui.modelSize.textContent = paramText(m.parameters);
  ui.modelSize.dataset.parameters = String(m.parameters);
  ui.modelDescription.textContent = m.description;
  ui.modelDemo.hidden = !m.demo;
  ui.modelDemo.textContent = m.demo
    ? 'This is a small demo model: its continuations are rough, even after training. It is here to show how ' +
      'shared fine-tuning works, not to write well.'
    : '';
}

/** Reads the run's settings from `url` (once per cloud): what leaves, the model, the size of a turn. */
async function loadManifest(url: string): Promise<void> {
  cloudUrl = url;
  void countTokens();
  if (url === manifestFrom) return;
  manifestFrom = url;
  ui.privacyStatus.dataset.state = 'loading';
  ui.privacyStatus.textContent = "Reading this run's settings…";
  try {
    const res = await fetch(new URL('/api/manifest', url));
    if (!res.ok) throw Object.assign(new Error(`the run answered ${res.status}`), { code: `HTTP_${res.status}` });
    const info = infoOf(await res.json());
    if (manifestFrom !== url) return;
    run = info;
    const p = info.privacy;
    renderPrivacy(p);
    ui.privacyStatus.dataset.state = 'loaded';
    ui.privacyStatus.replaceChildren(
      `From this run's settings: labels ${p.labels === 'device' ? 'on this device' : 'sent to the cloud'}, `,
      term('split', 'split'),
      ` after layer ${p.k}, noise ${p.noiseSigma > 0 ? `of standard deviation ${p.noiseSigma}` : 'none'}.`,
    );
    if (problemSlot.join.dataset.code === 'NETWORK') clearProblem('join');
  } catch (e) {
    if (manifestFrom !== url) return;
    manifestFrom = undefined;
    run = undefined;
    renderPrivacy(undefined);
    ui.privacyStatus.dataset.state = 'error';
    ui.privacyStatus.textContent =
      "This run's settings could not be read, so what leaves this device cannot be listed yet: see the message " +
      'under the join link.';
    const code = (e as { code?: string }).code ?? 'ERROR';
    showProblem(explain(code, (e as Error).message, 'join', { host: hostOf(url) }));
  }
  renderModel();
  renderEnough();
}

/** The cloud the page would join: the pasted link's, else the stored session's, else this page's. */
async function runCloud(): Promise<string> {
  const join = parseJoin(ui.joinCode.value);
  if (join) return join.cloudUrl;
  return (await store.loadSession())?.cloudUrl ?? params.get('cloud') ?? location.origin;
}

ui.joinCode.addEventListener('input', () => {
  // the person is fixing the link: what was said about the old one no longer holds
  clearProblem('join');
  updateButtons();
});
ui.joinCode.addEventListener('change', () => void runCloud().then(loadManifest));

// ---------------------------------------------------------------------------------------------
// documents (IndexedDB only), and whether they are enough

function fmtBytes(n: number): string {
  return n < 1024 ? `${n} B` : n < 2 ** 20 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 2 ** 20).toFixed(1)} MiB`;
}

/** the stored documents' tokens with the run's tokenizer; undefined until counted */
let textTokens: number | undefined;
let progress: store.StoredProgress = store.emptyProgress();

/** Asks the worker to count the documents' tokens (it fetches the run's public tokenizer once). */
async function countTokens(): Promise<void> {
  const from = cloudUrl;
  try {
    const n = await worker.countTokens(from);
    if (from !== cloudUrl) return;
    textTokens = n.tokens;
  } catch {
    // the run cannot be reached: the join link's message says so; the count waits for the next try
    textTokens = undefined;
  }
  renderDocsSummary();
  renderEnough();
}

function renderDocsSummary(): void {
  const total = docs.reduce((n, d) => n + d.text.length, 0);
  ui.docsSummary.dataset.tokens = textTokens === undefined ? '' : String(textTokens);
  if (!docs.length) {
    ui.docsSummary.textContent = 'No documents yet.';
    return;
  }
  const tokens = textTokens === undefined ? '' : `${textTokens.toLocaleString('en')} tokens, `;
  ui.docsSummary.replaceChildren(
    `${docs.length} document${docs.length > 1 ? 's' : ''}, ${total.toLocaleString('en')} characters, `,
    ...(tokens ? [term('token', tokens)] : []),
    'stored in this browser only.',
  );
}

/** The too-little warning, and how often the text has been seen (tokens trained / tokens of text). */
function renderEnough(): void {
  const t = run?.turn;
  const need = t ? t.batch * t.seq * t.steps : undefined;
  const little = docs.length > 0 && textTokens !== undefined && need !== undefined && textTokens < need;
  ui.enough.hidden = !little;
  ui.enough.dataset.need = need === undefined ? '' : String(need);
  if (little && t && need !== undefined && textTokens !== undefined) {
    ui.enough.textContent =
      `That is too little text for meaningful training: ${textTokens.toLocaleString('en')} tokens. One turn ` +
      `trains on ${t.batch} × ${t.seq} × ${t.steps} = ${need.toLocaleString('en')} tokens (batch × sequence ` +
      'length × steps per turn), so with less text than that every turn goes over it more than once and the model ' +
      `mostly memorises it. Add text until you have at least ${need.toLocaleString('en')} tokens.`;
  }
  const seen = textTokens ? progress.tokens / textTokens : undefined;
  ui.passes.dataset.times = seen === undefined ? '' : seen.toFixed(2);
  if (seen === undefined || progress.tokens === 0) {
    ui.passes.textContent = progress.tokens === 0 ? 'not yet' : '-';
  } else {
    // "less than once (100%)" would read as a contradiction: near one pass is "about 1 time"
    const times = seen < 0.95 ? `less than once (${Math.round(seen * 100)}% of it)` : `about ${timesText(seen)}`;
    ui.passes.textContent =
      `${times}: ${progress.tokens.toLocaleString('en')} tokens trained / ` +
      `${(textTokens ?? 0).toLocaleString('en')} tokens of text`;
  }
  const many = seen !== undefined && seen > 10;
  ui.passesNote.hidden = !many;
  if (many && seen !== undefined) {
    ui.passesNote.textContent =
      `Your text has been seen about ${timesText(seen)}. More passes over the same text teach the model ` +
      'little more: add text, or stop (Pause) when you are done.';
  }
}

function timesText(x: number): string {
  const n = x < 10 ? Math.round(x * 10) / 10 : Math.round(x);
  return `${n} time${n === 1 ? '' : 's'}`;
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
      // "Remove" alone does not say what goes: the accessible name names the document
      rm.setAttribute('aria-label', `Remove ${d.name}`);
      rm.disabled = isRunning();
      if (rm.disabled) rm.title = 'Pause training to change your documents';
      rm.addEventListener('click', () => void removeDoc(d.id));
      li.append(name, rm);
      return li;
    }),
  );
  renderDocsSummary();
  updateButtons();
}

async function docsChanged(): Promise<void> {
  await store.saveDocs(docs);
  clearProblem('docs');
  if (problemSlot.train.dataset.code === 'NO_DATA') clearProblem('train');
  renderDocs();
  await countTokens();
}

async function addDoc(name: string, text: string): Promise<void> {
  if (!text.trim()) {
    showProblem({
      sentence: `"${name}" is empty: there is no text in it to add.`,
      at: 'docs',
      code: 'EMPTY_DOCUMENT',
      raw: `${name} holds no text`,
    });
    return;
  }
  docs = [...docs, { id: crypto.randomUUID(), name, text, addedAt: Date.now() }];
  await docsChanged();
}

async function removeDoc(id: string): Promise<void> {
  docs = docs.filter((d) => d.id !== id);
  await docsChanged();
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

/** Why Start (or Resume) cannot be pressed now, in words; '' when it can. */
function startBlocked(): string {
  if (docs.length === 0) return 'Add some text in step 3 first: there is nothing to train on yet.';
  if (!hasSession && !parseJoin(ui.joinCode.value)) return 'Paste your join link in step 1 first.';
  return '';
}

function updateButtons(): void {
  const running = isRunning();
  const why = running ? '' : startBlocked();
  ui.start.hidden = running || state === 'paused';
  ui.start.disabled = why !== '';
  ui.pause.hidden = !running;
  ui.resume.hidden = state !== 'paused';
  ui.resume.disabled = why !== '';
  ui.startWhy.textContent = why;
  ui.startWhy.hidden = why === '';
  ui.engineSelect.disabled = running;
  ui.addDoc.disabled = running;
  ui.docFiles.disabled = running;
  ui.addDoc.title = running ? 'Pause training to change your documents' : '';
  const canGenerate = state === 'connected' || state === 'training';
  ui.generate.disabled = !canGenerate || generating;
  ui.generateWhy.textContent = generating
    ? 'Continuing…'
    : canGenerate
      ? ''
      : 'Continuing a prompt works while you are connected: press Start (or Resume) first.';
}

/** An ordinary status line next to Start / Pause / Resume (never an error). */
function status(text: string): void {
  ui.trainStatus.textContent = text;
}

const STATE_TEXT: Record<RunState, string> = {
  idle: 'not connected',
  joining: 'joining the run…',
  preparing: "getting the model's first layers and preparing the engine…",
  connected: 'connected, waiting for your turn',
  training: 'training',
  paused: 'paused',
  stopped: 'stopped',
  error: 'not connected (see the message above)',
};

/** the state before the last change: an error while 'joining' belongs to the join link */
let previousState: RunState = 'idle';

function setState(s: RunState): void {
  previousState = state;
  state = s;
  ui.connection.textContent = STATE_TEXT[s];
  ui.connection.dataset.state = s;
  if (!isRunning()) {
    ui.queue.textContent = '-';
    stopEngineTimer();
  }
  renderDocs();
}

// ---------------------------------------------------------------------------------------------
// the engine: which one, why, and whether it changed since last time

const ENGINE_NAME: Record<string, string> = {
  wgsl: 'WebGPU (graphics chip)',
  wasm: 'WebAssembly (processor)',
  reference: 'the built-in TypeScript engine (slowest)',
};
let engineChoice: store.EngineChoice = 'auto';
let engineTimer: ReturnType<typeof setInterval> | undefined;

function stopEngineTimer(): void {
  if (engineTimer) clearInterval(engineTimer);
  engineTimer = undefined;
}

/** While the engine starts (and, on 'auto', is timed): a line that shows the page is working. */
function engineStarting(): void {
  stopEngineTimer();
  const t0 = Date.now();
  const what =
    engineChoice === 'auto'
      ? 'checking which engine is faster on this device…'
      : `starting ${ENGINE_NAME[engineChoice] ?? engineChoice}…`;
  const tick = () => {
    const s = Math.round((Date.now() - t0) / 1000);
    ui.engine.textContent = what;
    ui.engineWhy.textContent = s >= 1 ? `(${s} s)` : '';
  };
  tick();
  ui.engine.dataset.kind = 'starting';
  engineTimer = setInterval(tick, 1000);
}

/** The client's reason for its engine, in plain words. */
function engineWords(kind: string, reason: string): string {
  if (/was asked for:/.test(reason)) return 'You chose this engine.';
  const timed = /wgsl ([\d.]+) ms\/step vs wasm ([\d.]+) ms\/step/.exec(reason);
  if (timed) {
    return (
      "Picked automatically: this browser's WebGPU runs in software, without a graphics chip, so the page " +
      `timed one training step with each engine (WebGPU ${timed[1]} ms, WebAssembly ${timed[2]} ms) and kept ` +
      'the faster.'
    );
  }
  if (/^WebGPU device available/.test(reason)) {
    return 'Picked automatically: this device has a graphics chip the page can use, usually the fastest.';
  }
  if (/^no WebGPU device/.test(reason)) {
    return 'Picked automatically: this browser offers no WebGPU, so the page computes on the processor.';
  }
  if (/failed|could not start/.test(reason)) {
    return `Picked automatically: the other engine could not start on this device, so the page uses ${
      ENGINE_NAME[kind] ?? kind
    }.`;
  }
  return 'Picked automatically.';
}

function onEngine(kind: string, reason: string): void {
  stopEngineTimer();
  ui.engine.textContent = ENGINE_NAME[kind] ?? kind;
  ui.engine.dataset.kind = kind;
  ui.engineWhy.textContent = engineWords(kind, reason);
  ui.engineReason.textContent = reason;
  ui.engineDetails.hidden = false;
  void (async () => {
    const before = await store.loadEngineUsed();
    const changed = before !== undefined && before.kind !== kind;
    ui.engineNote.hidden = !changed;
    ui.engineNote.textContent = changed
      ? `Last time this browser trained with ${ENGINE_NAME[before.kind] ?? before.kind}; now it uses ` +
        `${ENGINE_NAME[kind] ?? kind}, for the reason just given. Training goes on the same way.`
      : '';
    await store.saveEngineUsed({ kind, reason });
  })();
}

// ---------------------------------------------------------------------------------------------
// rounds, the shared model, the line, the loss

/** the newest shared model update this page has heard of */
let seenVersion = 0;

function renderVersion(v: number): void {
  seenVersion = Math.max(seenVersion, v);
  ui.version.textContent = String(seenVersion);
  ui.versionRound.textContent =
    seenVersion === 0 ? '(the starting point, before any round)' : `(made by round ${seenVersion})`;
}

function renderProgress(p: store.StoredProgress): void {
  progress = p;
  ui.tokens.textContent = p.tokens.toLocaleString('en');
  ui.turns.textContent = String(p.turns);
  renderVersion(p.version);
  chart.update(p.losses);
  const n = p.losses.length;
  ui.lossSummary.textContent = n
    ? `(latest ${p.losses[n - 1].loss.toFixed(3)} at step ${n}; first ${p.losses[0].loss.toFixed(3)})`
    : '';
  renderEnough();
}

/**
 * The edge's `position` counts everyone connected to it in line order, the person training now
 * included; `waiting` counts those waiting, this tab included. So among the people waiting this
 * tab is number min(position, waiting), and anyone ahead who is not waiting is training.
 */
function renderQueue(position: number, waiting?: number): void {
  ui.queue.dataset.position = String(position);
  ui.queue.dataset.waiting = waiting === undefined ? '' : String(waiting);
  if (position <= 0) {
    ui.queue.textContent = 'your turn';
    return;
  }
  if (waiting === undefined || waiting < 1) {
    // `welcome` says the place only: everyone ahead is either training or waiting, so the one
    // number that is sure is how many are ahead
    const ahead = position - 1;
    ui.queue.textContent =
      ahead === 0
        ? 'You are next in line.'
        : `You are in line; ${ahead} ${ahead === 1 ? 'person is' : 'people are'} ahead of you.`;
    return;
  }
  const place = Math.min(position, waiting);
  const training = position - place;
  ui.queue.dataset.place = String(place);
  const now = training > 0 ? '; someone is training now.' : '.';
  ui.queue.textContent = `You are #${place} in line (${waiting} waiting)${now}`;
}

// ---------------------------------------------------------------------------------------------
// worker events

let edgeUrl: string | undefined;
const NEXT_TURN = 'Waiting for your next turn.';
/** the start in progress used a join code: a failure while joining belongs to the join link */
let joiningWithCode = false;

function onEvent(e: PageEvent): void {
  switch (e.type) {
    case 'state':
      setState(e.state);
      if (e.state === 'error') {
        const where: Control = previousState === 'joining' && joiningWithCode ? 'join' : 'train';
        const host = hostOf(previousState === 'joining' ? cloudUrl : (edgeUrl ?? cloudUrl));
        showProblem(explain(e.code ?? 'ERROR', e.message ?? '', where, { host }));
        status('');
      } else if (e.state === 'stopped') {
        if (e.code === 'USER_REMOVED') showProblem(explain('USER_REMOVED', e.message ?? '', 'train'));
        else {
          showProblem({
            sentence: 'The connection to your edge server closed. Press Start to go back in line.',
            at: 'train',
            code: `CLOSED_${e.code ?? ''}`,
            raw: e.message ?? '',
          });
        }
        status('');
      } else if (e.state === 'paused') {
        status('Paused. Your documents, adapter and progress are kept in this browser; Resume puts you back in line.');
      } else if (e.state === 'connected') {
        status('Connected. Your turn comes when your edge server gets to you; keep this tab open.');
      } else if (e.state === 'joining') {
        status('Joining the run…');
      } else if (e.state === 'preparing') {
        status("Getting the model's first layers and preparing the engine…");
        ui.engine.textContent = 'waiting for the model…';
        ui.engineWhy.textContent = '';
      } else if (e.state === 'training') {
        status('Your turn: training on your text. Keep this tab open.');
      }
      break;
    case 'session':
      // the join code is spent now: a Start after a failed start goes on with this session,
      // which a second use of the code would be refused
      hasSession = true;
      joiningWithCode = false;
      clearProblem('join');
      if (ui.joinCode.value) {
        ui.joinCode.value = '';
        ui.joinHint.textContent = 'Joined: this browser keeps your place in the run; Start goes on with it.';
      }
      edgeUrl = e.edgeUrl;
      ui.userId.textContent = e.userId;
      ui.edge.textContent = `${e.edgeId} (${e.edgeUrl})`;
      break;
    case 'engine':
      onEngine(e.kind, e.reason);
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
        engineStarting();
      }
      break;
    case 'welcome':
      renderQueue(e.position);
      renderVersion(e.version);
      break;
    case 'queue':
      renderQueue(e.position, e.waiting);
      break;
    case 'turn':
      renderQueue(0);
      renderVersion(e.version);
      ui.stepProgress.max = e.steps;
      ui.stepProgress.value = 0;
      ui.stepStatus.textContent =
        `round ${e.round}, your turn (from shared model update ${e.version}): ` + `step 0 of ${e.steps}`;
      break;
    case 'step':
      ui.stepProgress.max = e.steps;
      ui.stepProgress.value = e.step;
      ui.stepStatus.textContent =
        `round ${e.round}, your turn: step ${e.step} of ${e.steps}, ` + `loss ${e.loss.toFixed(3)}`;
      ui.stepMs.textContent =
        `${e.ms.toFixed(0)} ms a step ` + `(${fmtBytes(e.bytesOut)} sent, ${fmtBytes(e.bytesIn)} received)`;
      ui.stepMs.dataset.ms = e.ms.toFixed(1);
      break;
    case 'turn-end':
      if (e.accepted) {
        ui.stepStatus.textContent = `round ${e.round}: your turn is done; waiting for the round to end`;
        // the edge tells a new place only when it changed: until then, what is sure is this
        ui.queue.textContent = 'Your turn this round is done; you are in line for a later round.';
        // a turn went through: what a failed one said no longer holds
        clearProblem('train');
      } else {
        ui.stepStatus.textContent = `round ${e.round}: your turn was not counted`;
        // a pause or a closed connection ends the turn as an ordinary event, not an error
        if (e.reason && (state === 'connected' || state === 'training') && !problemSlot.train.dataset.code)
          showProblem(explain(e.reason, `the turn of round ${e.round} ended: ${e.reason}`, 'train'));
      }
      break;
    case 'round-end':
      renderVersion(e.version);
      ui.stepStatus.textContent = `round ${e.round} ended: shared model update ${e.version} is ready. ${NEXT_TURN}`;
      break;
    case 'progress':
      renderProgress(e.progress);
      break;
    case 'data':
      textTokens = e.tokens;
      renderDocsSummary();
      renderEnough();
      break;
    case 'adapter-saved':
      ui.downloadAdapter.disabled = false;
      ui.adapterStatus.textContent = `from your turn in round ${e.round}`;
      clearProblem('download');
      break;
    case 'reconnecting':
      ui.connection.textContent = 'reconnecting…';
      ui.connection.title = e.reason;
      status('The connection to your edge server was lost; the page is finding one to go on with…');
      break;
    case 'reassigned':
      edgeUrl = e.edgeUrl;
      ui.edge.textContent = `${e.edgeId} (${e.edgeUrl})`;
      ui.connection.title = '';
      status('Moved to another edge server; you keep your place in the run.');
      break;
    case 'error':
      // USER_REMOVED comes as the edge's error frame before the close: 'removed' says it
      if (e.code !== 'USER_REMOVED') showProblem(explain(e.code, e.message, 'train', { host: hostOf(edgeUrl) }));
      break;
    case 'removed':
      showProblem(explain('USER_REMOVED', e.message, 'train'));
      break;
    case 'closed':
      break;
  }
}

async function startTraining(joinToken: string | undefined, url: string): Promise<void> {
  clearProblem('train');
  clearProblem('join');
  joiningWithCode = joinToken !== undefined;
  engineChoice = ui.engineSelect.value as store.EngineChoice;
  cloudUrl = url;
  setState('joining');
  try {
    await worker.start({ cloudUrl: url, joinToken, engine: engineChoice }, Comlink.proxy(onEvent));
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
      showProblem(explain('NO_SESSION', 'no join code and no stored session', 'join'));
      ui.joinCode.focus();
      return;
    }
    await startTraining(join?.joinToken, join?.cloudUrl ?? session!.cloudUrl);
  })();
});

ui.pause.addEventListener('click', () => {
  clearProblem('train');
  void worker.pause();
});
ui.resume.addEventListener('click', () => {
  void (async () => {
    const session = await store.loadSession();
    if (session) await startTraining(undefined, session.cloudUrl);
    else showProblem(explain('NO_SESSION', 'no stored session', 'join'));
  })();
});

ui.downloadAdapter.addEventListener('click', () => {
  clearProblem('download');
  void (async () => {
    try {
      const { filename, bytes } = await worker.exportAdapter();
      const a = document.createElement('a');
      a.href = URL.createObjectURL(new Blob([bytes as Uint8Array<ArrayBuffer>], { type: 'application/zip' }));
      a.download = filename;
      a.click();
      setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
    } catch (e) {
      const c = (e as { code?: string }).code ?? 'ERROR';
      showProblem(explain(c, (e as Error).message, 'download'));
    }
  })();
});

let generating = false;

ui.generate.addEventListener('click', () => {
  const prompt = ui.generatePrompt.value;
  clearProblem('generate');
  ui.generateOutput.textContent = prompt;
  ui.generateStatus.textContent = '';
  generating = true;
  updateButtons();
  void (async () => {
    try {
      const r = await worker.generate(
        prompt,
        24,
        Comlink.proxy((piece: string) => (ui.generateOutput.textContent += piece)),
      );
      ui.generateOutput.textContent = prompt + r.text;
      ui.generateOutput.dataset.tokens = String(r.tokens);
      ui.generateStatus.textContent =
        `${r.tokens} tokens in ${(r.ms / 1000).toFixed(1)} s, through this tab, your edge server and the cloud.` +
        (run?.model?.demo ? ' A small demo model: expect rough text.' : '');
    } catch (e) {
      const c = (e as { code?: string }).code ?? 'ERROR';
      showProblem(explain(c, (e as Error).message, 'generate', { host: hostOf(edgeUrl) }));
    } finally {
      generating = false;
      updateButtons();
    }
  })();
});

// ---------------------------------------------------------------------------------------------
// first load: what this browser already holds

async function init(): Promise<void> {
  renderGlossary(ui.glossary);
  readJoinFromAddress();
  renderPrivacy(undefined);
  const engine = params.get('engine');
  if (engine === 'auto' || engine === 'wgsl' || engine === 'wasm') ui.engineSelect.value = engine;
  docs = await store.loadDocs();
  renderDocs();
  renderProgress(await store.loadProgress());
  // not awaited: the settings show when the run answers, the rest of the page does not wait for it
  void runCloud().then(loadManifest);
  const adapter = await store.loadAdapter();
  if (adapter) {
    ui.downloadAdapter.disabled = false;
    ui.adapterStatus.textContent = `from your turn in round ${adapter.round}`;
  }
  const seg = await store.loadSegment();
  if (seg) {
    ui.downloadStatus.textContent =
      `${fmtBytes(seg.bytes.byteLength)} in this browser's cache ` + `(from shared model update ${seg.version})`;
  }
  const used = await store.loadEngineUsed();
  if (used) {
    ui.engine.textContent = `${ENGINE_NAME[used.kind] ?? used.kind} (last time)`;
  }
  const session = await store.loadSession();
  hasSession = session !== undefined;
  if (session) {
    edgeUrl = session.credentials.edgeUrl;
    ui.userId.textContent = session.credentials.userId;
    ui.edge.textContent = `${session.credentials.edgeId} (${session.credentials.edgeUrl})`;
    if (!params.get('engine')) ui.engineSelect.value = session.engine;
  }
  if (session && !ui.joinCode.value) {
    if (session.paused) {
      setState('paused');
      status('You paused training. Resume puts you back in line.');
      return;
    }
    if (docs.length > 0) {
      status('Resuming where you left off…');
      await startTraining(undefined, session.cloudUrl);
      return;
    }
  }
  setState(state);
  if (!session && !ui.joinCode.value) {
    ui.joinHint.textContent = 'To take part you need a join link from the person running this fine-tuning.';
  }
}

void init();
