/**
 * The user page and the edge operator's dashboard, end to end: a cloud (serving the built
 * page), two edges, and browser users in separate contexts of headless Chromium with WebGPU
 * (SwiftShader here). Real processes, real sockets, no mocks. Tests run in order on one system:
 *
 *  1. first load: what a person sees before joining
 *  2. three users add text and train round 1; the tab of one is closed mid-round; the round
 *     completes without it, losses fall, the dashboard lists the users
 *  3. a continuation through the three tiers, and the adapter download (PEFT zip)
 *  4. pause, reload, resume from IndexedDB (documents, progress, cached segment)
 *  5. a user on the forced wasm engine trains round 2
 *  6. the privacy audit over everything every tab sent: no window of a private text, as UTF-8
 *     or as token ids, left any tab (the run keeps its labels on the device, the default)
 *
 * Then a short second run with the labels in the cloud (`--labels cloud`): the page says the labels
 * leave, and the same audit finds the text's token ids in what the tab sent (it can catch a leak).
 *
 * Screenshots land in test-results/e2e/screenshots/ (kept as artifacts), with the step times.
 */
import { expect, test, type Browser, type BrowserContext, type Page } from '@playwright/test';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { RunPrivacy } from '../packages/wire/src/manifest';
import { PrivacyRecorder, shippedTokenizer } from './privacy';
import { startSystem, type System } from './system';

const SHOTS = fileURLToPath(new URL('../test-results/e2e/screenshots', import.meta.url));
const STEPS = 10;
/** the labels-in-the-cloud run: one user, a few steps are enough to send labels */
const CLOUD_STEPS = 3;
const tokenizer = shippedTokenizer();

/** Private texts, one per user: distinctive, so any 16-byte window of one is found only if sent. */
function privateText(who: string, place: string, secret: string): string {
  const s = [
    `${who} keeps a private notebook about the lighthouse at ${place}.`,
    `The keeper of ${place} writes every evening that the lamp must be trimmed before the tide turns.`,
    `${who} never tells anyone that the code to the boathouse is ${secret}.`,
    `On windy nights at ${place} the gulls sleep on the rail and the keeper counts the ships.`,
  ];
  return Array.from({ length: 6 }, (_, i) => s.map((x) => `${x} (${i + 1})`).join(' ')).join('\n');
}

const TEXT = {
  a: privateText('Amelia Quarrington', 'Skerrycove Point', 'AQ-7731-walrus'),
  a2: privateText('Amelia Quarrington', 'Fennimore Rock', 'AQ-5512-heron'),
  b: privateText('Bartholomew Inkwell', 'Gannet Spit', 'BI-2089-otter'),
  c: privateText('Cordelia Vantrum', 'Ravensholm Head', 'CV-4410-puffin'),
  d: privateText('Dashiell Moorcroft', 'Tern Ledge', 'DM-9923-seal'),
};
/** the labels-in-the-cloud run's user */
const CLOUD_TEXT = privateText('Evangeline Hartsorrow', 'Puffin Skerry', 'EH-3307-gannet');

interface User {
  name: string;
  ctx: BrowserContext;
  page: Page;
  userId: string;
}

let sys: System;
const recorder = new PrivacyRecorder();
const users: Record<string, User> = {};
const stepMs: Record<string, number[]> = {};
let dashboard: Page | undefined;

async function openUser(browser: Browser, name: string, params: Record<string, string>): Promise<User> {
  const ctx = await browser.newContext();
  recorder.watchContext(ctx);
  const page = await ctx.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error') console.log(`[${name} console] ${m.text()}`);
  });
  page.on('pageerror', (e) => console.log(`[${name} pageerror] ${e.message}`));
  await page.goto(await sys.joinLink(params));
  const u: User = { name, ctx, page, userId: '' };
  users[name] = u;
  return u;
}

async function addText(page: Page, text: string): Promise<void> {
  await page.fill('#doc-text', text);
  await page.click('#add-doc');
}

async function startTraining(u: User): Promise<void> {
  await u.page.click('#start');
  await expect(u.page.locator('#connection')).toHaveAttribute('data-state', /connected|training/, { timeout: 120_000 });
  u.userId = (await u.page.locator('#user-id').textContent())!.trim();
  expect(u.userId).toMatch(/\S/);
}

async function losses(page: Page): Promise<number[]> {
  const s = await page.locator('#loss-chart').getAttribute('data-losses');
  return s ? s.split(',').map(Number) : [];
}

function mean(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}

/** Step times the page reported (ms), read from each step's display as it changes. */
async function followSteps(u: User, engine: string): Promise<void> {
  await u.page.exposeFunction(`__stepMs_${u.name}`, (ms: number) => {
    stepMs[engine] ??= [];
    stepMs[engine].push(ms);
  });
  await u.page.evaluate((fn) => {
    const el = document.getElementById('step-ms')!;
    new MutationObserver(() => {
      const ms = Number(el.dataset.ms);
      if (Number.isFinite(ms)) (window as unknown as Record<string, (x: number) => void>)[fn](ms);
    }).observe(el, { attributes: true, attributeFilter: ['data-ms'] });
  }, `__stepMs_${u.name}`);
}

async function waitForRound(version: number, timeoutMs = 240_000, on: System = sys) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = (await on.rounds()).find((x) => x.version === version);
    if (r) return r;
    if (Date.now() > deadline) throw new Error(`round ${version} was not recorded within ${timeoutMs / 1000} s`);
    await new Promise((res) => setTimeout(res, 500));
  }
}

test.describe('a run with labels on the device (the default)', () => {
  test.describe.configure({ mode: 'serial' });

  test.beforeAll(async () => {
    mkdirSync(SHOTS, { recursive: true });
    // round 1 waits for three users on two edges; two users per edge per round
    sys = await startSystem({
      name: 'user-page',
      edges: 2,
      stepsPerUser: STEPS,
      usersPerEdge: 2,
      minUsers: 3,
      minEdges: 2,
      lr: 0.003,
    });
  });

  test.afterAll(async () => {
    for (const u of Object.values(users)) await u.ctx.close().catch(() => undefined);
    await dashboard
      ?.context()
      .close()
      .catch(() => undefined);
    await sys?.stop();
    writeFileSync(join(SHOTS, 'step-times.json'), JSON.stringify(stepMs, null, 2));
  });

  test('first load: what a person sees before joining', async ({ browser }) => {
    const u = await openUser(browser, 'a', { engine: 'wgsl' });
    const page = u.page;
    // the join code was taken from the link and removed from the address
    await expect(page.locator('#join-code')).not.toHaveValue('');
    expect(page.url()).not.toContain('join=');
    // what leaves and what stays is listed before anything starts, generated from the run's
    // settings: this run keeps its labels on the device (the default), so no label is said to leave
    const { privacy } = (await (await fetch(`${sys.cloudUrl}/api/manifest`)).json()) as { privacy: RunPrivacy };
    expect(privacy.labels).toBe('device');
    await expect(page.locator('#privacy-status')).toHaveAttribute('data-state', 'loaded');
    await expect(page.locator('#privacy')).toHaveAttribute('data-labels', 'device');
    await expect(page.locator('#leaves li')).toHaveCount(4);
    const layers = privacy.k === 1 ? "the model's first layer" : `the model's first ${privacy.k} layers`;
    await expect(page.locator('#leaves li[data-item="activations"]')).toContainText(`Activations of ${layers}`);
    await expect(page.locator('#leaves li[data-item="activations"]')).toContainText(
      privacy.noiseSigma > 0 ? `noise of standard deviation ${privacy.noiseSigma}` : 'without added noise',
    );
    await expect(page.locator('#leaves li[data-item="head-grad"]')).toContainText('last layer output');
    await expect(page.locator('#leaves li[data-item="head-grad"]')).toContainText('loss as a number');
    await expect(page.locator('#leaves li[data-item="adapter"]')).toContainText(`adapter for ${layers}`);
    await expect(page.locator('#leaves')).not.toContainText(/label/i);
    await expect(page.locator('#stays')).toContainText('never uploaded');
    await expect(page.locator('#stays li[data-item="token-ids"]')).toBeVisible();
    // how much an edge operator could read back: the run's measured figure, or that none was measured
    const edgeFigures = (privacy.recovery?.figures ?? []).filter((f) => f.who === 'edge');
    const edgeLine = page.locator('#recovery li[data-who="edge"]');
    if (edgeFigures.length > 0) {
      const worst = Math.max(...edgeFigures.map((f) => f.wordRate));
      await expect(edgeLine).toContainText(
        `An edge operator could read back about ${Math.round(worst * 100)}% of your words`,
      );
    } else {
      await expect(edgeLine).toHaveText(
        "How much of your text an edge operator could read back has not been measured for this run's settings.",
      );
    }
    await expect(page.locator('#recovery-how')).toContainText('docs/privacy.md');
    // nothing to train on yet
    await expect(page.locator('#start')).toBeDisabled();
    await expect(page.locator('#connection')).toHaveText('not connected');
    await page.screenshot({ path: join(SHOTS, '01-first-load.png'), fullPage: true });
  });

  test('three users train a round; one tab closed mid-round; the dashboard lists them', async ({ browser }) => {
    test.setTimeout(420_000);
    const a = users.a;
    await addText(a.page, TEXT.a);
    // a second document, picked as a .txt file
    await a.page.setInputFiles('#doc-files', {
      name: 'fennimore.txt',
      mimeType: 'text/plain',
      buffer: Buffer.from(TEXT.a2),
    });
    await expect(a.page.locator('#docs li')).toHaveCount(2);
    await expect(a.page.locator('#start')).toBeEnabled();
    await a.page.screenshot({ path: join(SHOTS, '02-documents-added.png'), fullPage: true });

    const b = await openUser(browser, 'b', { engine: 'wgsl' });
    await addText(b.page, TEXT.b);
    // the third keeps the page's default engine choice: on a software WebGPU adapter it times both
    const c = await openUser(browser, 'c', {});
    await addText(c.page, TEXT.c);
    for (const u of [a, b]) await followSteps(u, 'wgsl');
    await followSteps(c, 'auto');
    for (const u of [a, b, c]) await startTraining(u);
    for (const u of [a, b]) {
      await expect(u.page.locator('#engine')).toHaveAttribute('data-kind', 'wgsl', { timeout: 60_000 });
      await expect(u.page.locator('#engine-reason')).toContainText('asked for');
    }
    await expect(c.page.locator('#engine-reason')).toContainText(
      /software WebGPU adapter .*wgsl \d+ ms\/step vs wasm \d+ ms\/step, using (wgsl|wasm)/,
      { timeout: 60_000 },
    );
    console.log(`engine chosen by 'auto' ${await c.page.locator('#engine-reason').textContent()}`);

    // the operator of the edge that holds two users watches its dashboard
    const byEdge = new Map<string, User[]>();
    for (const u of [a, b, c]) {
      const edge = (await u.page.locator('#edge').textContent())!.split(' ')[0];
      byEdge.set(edge, [...(byEdge.get(edge) ?? []), u]);
    }
    const [busyEdgeId, busyUsers] = [...byEdge].sort((x, y) => y[1].length - x[1].length)[0];
    expect(busyUsers.length).toBe(2);
    const busyEdge = sys.edges.find((e) => e.id === busyEdgeId)!;
    const opCtx = await browser.newContext();
    dashboard = await opCtx.newPage();
    await dashboard.goto(`${busyEdge.adminUrl}#token=${sys.operatorToken}`);
    for (const u of busyUsers)
      await expect(dashboard.locator(`#users tr[data-user-id="${u.userId}"]`)).toBeVisible({ timeout: 30_000 });

    // a user of the busy edge goes away in the middle of its turn: its tab closes after two
    // steps (a WGSL user: its steps are slow enough on SwiftShader to close mid-turn)
    const leaver = busyUsers.find((u) => u !== c) ?? busyUsers[1];
    const stayers = [a, b, c].filter((u) => u !== leaver);
    await leaver.page.waitForFunction(
      () => Number((document.getElementById('step-progress') as HTMLProgressElement).value) >= 2,
      null,
      { polling: 20, timeout: 240_000 },
    );
    const stepAtClose = Number(await leaver.page.locator('#step-progress').getAttribute('value'));
    await leaver.page.screenshot({ path: join(SHOTS, '03-user-training.png'), fullPage: true });
    await leaver.ctx.close();
    expect(stepAtClose, 'the tab closed before its turn ended').toBeLessThan(STEPS);
    await dashboard.screenshot({ path: join(SHOTS, '04-dashboard-mid-round.png'), fullPage: true });

    const round1 = await waitForRound(1);
    // the aggregate's participants: both edges, and the users who completed their turns
    expect(round1.participants.sort()).toEqual(
      [...sys.edges.map((e) => `edge:${e.id}`), ...stayers.map((u) => `user:${u.userId}`)].sort(),
    );

    for (const u of stayers) {
      await expect(u.page.locator('#version')).toHaveText('1', { timeout: 60_000 });
      await expect(u.page.locator('#loss-chart')).toHaveAttribute('data-points', String(STEPS));
      const l = await losses(u.page);
      expect(l).toHaveLength(STEPS);
      // the loss falls over the turn: the last three steps' mean below the first three's
      expect(mean(l.slice(-3))).toBeLessThan(mean(l.slice(0, 3)));
      await expect(u.page.locator('#tokens')).not.toHaveText('0');
    }
    // the dashboard shows the remaining user and the round's losses, and the leaver is gone
    const stayerThere = busyUsers.find((u) => u !== leaver)!;
    await expect(dashboard.locator(`#users tr[data-user-id="${stayerThere.userId}"]`)).toBeVisible();
    await expect(dashboard.locator(`#users tr[data-user-id="${leaver.userId}"]`)).toHaveCount(0, { timeout: 30_000 });
    // a closed tab is a departure, listed as such, not an error
    await expect(dashboard.locator(`#left li[data-user-id="${leaver.userId}"]`)).toHaveAttribute('data-kind', 'left');
    await expect(dashboard.locator(`#errors li[data-user-id="${leaver.userId}"]`)).toHaveCount(0);
    await expect(dashboard.locator('#users-count [data-count="connected"]')).toHaveText('1 connected');
    expect(Number(await dashboard.locator('#loss-chart').getAttribute('data-points'))).toBeGreaterThan(0);
    await dashboard.screenshot({ path: join(SHOTS, '05-dashboard-after-round.png'), fullPage: true });
    await stayers[0].page.screenshot({ path: join(SHOTS, '06-user-after-round.png'), fullPage: true });
    delete users[leaver.name];
  });

  test('a continuation through the three tiers, and the adapter as a PEFT zip', async () => {
    const u = users.a ?? users.b;
    const page = u.page;
    await expect(page.locator('#generate')).toBeEnabled();
    await page.fill('#generate-prompt', 'The keeper');
    await page.click('#generate');
    await expect(page.locator('#generate-output')).toHaveAttribute('data-tokens', /\d+/, { timeout: 120_000 });
    const out = (await page.locator('#generate-output').textContent())!;
    expect(out.startsWith('The keeper')).toBe(true);
    expect(out.length).toBeGreaterThan('The keeper'.length);

    await expect(page.locator('#download-adapter')).toBeEnabled();
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download-adapter')]);
    expect(download.suggestedFilename()).toMatch(/^splitllm-adapter-v\d+-round\d+\.zip$/);
    const path = await download.path();
    const zip = readFileSync(path);
    expect(zip.subarray(0, 4).toString('latin1')).toBe('PK\x03\x04');
    expect(zip.includes(Buffer.from('adapter_config.json'))).toBe(true);
    expect(zip.includes(Buffer.from('adapter_model.safetensors'))).toBe(true);
    await page.screenshot({ path: join(SHOTS, '07-generate.png'), fullPage: true });
  });

  test('pause, reload, and resume from what IndexedDB holds', async () => {
    const u = users.b ?? users.a;
    const page = u.page;
    const before = await losses(page);
    await page.click('#pause');
    await expect(page.locator('#connection')).toHaveAttribute('data-state', 'paused');
    await page.reload();
    // after a reload: still paused, documents, progress and segment come from this browser
    await expect(page.locator('#connection')).toHaveAttribute('data-state', 'paused');
    await expect(page.locator('#docs li')).toHaveCount(1);
    await expect(page.locator('#loss-chart')).toHaveAttribute('data-points', String(before.length));
    await expect(page.locator('#user-id')).toHaveText(u.userId);
    await expect(page.locator('#download-adapter')).toBeEnabled();
    await page.click('#resume');
    await expect(page.locator('#connection')).toHaveAttribute('data-state', /connected|training/, { timeout: 60_000 });
    await expect(page.locator('#download-status')).toHaveAttribute('data-cached', 'true');
    await expect(page.locator('#user-id')).toHaveText(u.userId);
    await page.screenshot({ path: join(SHOTS, '08-resumed-after-reload.png'), fullPage: true });
  });

  test('a user on the wasm engine trains round 2', async ({ browser }) => {
    test.setTimeout(360_000);
    const d = await openUser(browser, 'd', { engine: 'wasm' });
    await addText(d.page, TEXT.d);
    await followSteps(d, 'wasm');
    await startTraining(d);
    await expect(d.page.locator('#engine')).toHaveAttribute('data-kind', 'wasm', { timeout: 60_000 });
    await expect(d.page.locator('#engine-reason')).toContainText('asked for');
    const round2 = await waitForRound(2, 300_000);
    expect(round2.participants).toContain(`user:${d.userId}`);
    await expect(d.page.locator('#loss-chart')).toHaveAttribute('data-points', String(STEPS), { timeout: 30_000 });
    const l = await losses(d.page);
    expect(mean(l.slice(-3))).toBeLessThan(mean(l.slice(0, 3)));
    await expect(d.page.locator('#version')).toHaveText('2', { timeout: 60_000 });
    await d.page.screenshot({ path: join(SHOTS, '09-wasm-user.png'), fullPage: true });
    console.log(
      `step ms per engine: ${JSON.stringify(
        Object.fromEntries(
          Object.entries(stepMs).map(([k, v]) => [
            k,
            { steps: v.length, median: [...v].sort((x, y) => x - y)[v.length >> 1] },
          ]),
        ),
      )}`,
    );
  });

  test('privacy audit: no window of any private text, as UTF-8 or as token ids, left any tab', async () => {
    // the audit saw the training traffic (else it could not fail)
    expect(recorder.wsFrames).toBeGreaterThan(4 * STEPS);
    expect(recorder.wsBytes).toBeGreaterThan(1_000_000);
    expect(recorder.httpBodies).toBeGreaterThan(0);
    // and it finds a text when one is sent, in each form (the matcher works): UTF-8, and a run of
    // 8 token ids as int32 and as uint16, each at an unaligned offset inside other bytes
    const ids = tokenizer.encode(TEXT.c).slice(40, 52);
    const i32 = Buffer.alloc(3 + 4 * ids.length);
    const u16 = Buffer.alloc(1 + 2 * ids.length);
    for (const [j, id] of ids.entries()) {
      i32.writeInt32LE(id, 3 + 4 * j);
      u16.writeUInt16LE(id, 1 + 2 * j);
    }
    const control = new PrivacyRecorder();
    control.sent.push(
      { what: 'utf8', bytes: Buffer.concat([Buffer.from([1, 2, 3]), Buffer.from(TEXT.c.slice(100, 117), 'utf8')]) },
      { what: 'int32', bytes: i32 },
      { what: 'uint16', bytes: u16 },
    );
    expect(control.findLeaks([TEXT.c], tokenizer).map((l) => `${l.what}:${l.kind}`)).toEqual([
      'utf8:utf8',
      'int32:int32',
      'uint16:uint16',
    ]);
    const leaks = recorder.findLeaks(Object.values(TEXT), tokenizer);
    // every kind of window was searched for
    for (const n of Object.values(recorder.searched)) expect(n).toBeGreaterThan(100);
    expect(leaks, JSON.stringify(leaks.slice(0, 5))).toEqual([]);
    console.log(
      `privacy audit: ${recorder.requests} requests, ${recorder.httpBodies} request bodies, ` +
        `${recorder.wsFrames} WebSocket frames ` +
        `(${(recorder.wsBytes / 2 ** 20).toFixed(1)} MiB) sent; searched for ${JSON.stringify(recorder.searched)} ` +
        'windows (UTF-8 bytes, 8-token runs as int32 and uint16): none found',
    );
  });
});

test.describe('a run with labels in the cloud', () => {
  let cloudSys: System | undefined;
  let ctx: BrowserContext | undefined;
  const cloudRecorder = new PrivacyRecorder();

  test.afterAll(async () => {
    await ctx?.close().catch(() => undefined);
    await cloudSys?.stop();
  });

  test('the page says the labels leave, and the audit finds the token ids the tab sent', async ({ browser }) => {
    test.setTimeout(300_000);
    cloudSys = await startSystem({
      name: 'labels-cloud',
      edges: 1,
      stepsPerUser: CLOUD_STEPS,
      usersPerEdge: 1,
      minUsers: 1,
      minEdges: 1,
      labels: 'cloud',
    });
    ctx = await browser.newContext();
    cloudRecorder.watchContext(ctx);
    const page = await ctx.newPage();
    page.on('pageerror', (e) => console.log(`[labels-cloud pageerror] ${e.message}`));
    // wasm: the faster engine on a software WebGPU adapter, and this run is about what is sent
    await page.goto(await cloudSys.joinLink({ engine: 'wasm' }));
    // before Start: the labels are listed among what leaves, and said to be readable
    await expect(page.locator('#privacy-status')).toHaveAttribute('data-state', 'loaded');
    await expect(page.locator('#privacy')).toHaveAttribute('data-labels', 'cloud');
    await expect(page.locator('#leaves li[data-item="labels"]')).toContainText(
      'Anyone with the public tokenizer can read them back',
    );
    await expect(page.locator('#leaves li[data-item="activations"]')).toBeVisible();
    await expect(page.locator('#leaves li[data-item="head-grad"]')).toHaveCount(0);
    await expect(page.locator('#stays li[data-item="token-ids"]')).toHaveCount(0);
    await expect(page.locator('#recovery li[data-who="labels"]')).toContainText('all of your text');
    await page.screenshot({ path: join(SHOTS, '10-labels-in-the-cloud.png'), fullPage: true });

    await addText(page, CLOUD_TEXT);
    await page.click('#start');
    const round = await waitForRound(1, 240_000, cloudSys);
    expect(round.users).toBe(1);
    await expect(page.locator('#loss-chart')).toHaveAttribute('data-points', String(CLOUD_STEPS), {
      timeout: 30_000,
    });

    const leaks = cloudRecorder.findLeaks([CLOUD_TEXT], tokenizer);
    // the labels went out as int32 token ids on the socket, in every step's forward frame ...
    const idFrames = leaks.filter((l) => l.kind === 'int32' && l.what.startsWith('ws '));
    expect(idFrames.length, JSON.stringify(leaks.slice(0, 3))).toBeGreaterThanOrEqual(CLOUD_STEPS);
    // ... and only so: never the text itself, nor ids in another form
    expect(leaks.filter((l) => l.kind !== 'int32')).toEqual([]);
    console.log(
      `labels in the cloud: the audit found runs of 8 token ids in ${idFrames.length} of ` +
        `${cloudRecorder.wsFrames} frames, e.g. ${idFrames[0]?.found}`,
    );
  });
});
