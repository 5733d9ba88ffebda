/**
 * A contributor's first hour on the page, at a phone's width (390 x 844) and at a desktop's, in
 * Chromium against a real cloud and one edge (e2e/system.ts, few steps a turn):
 *
 *  1. before joining: the model is named with its size and called a demo model; Start says why
 *     it cannot be pressed; a tiny document is counted in tokens and called too little (the rule
 *     in the sentence), and enough text makes the warning go; each Remove button names its
 *     document; a used-up join link and an unreachable server are said in words under the join
 *     field, the codes only inside a closed details line, and the words stay until the person
 *     edits the link; nothing is wider than the phone's screen.
 *  2. two people train two turns each on one edge (both engines' explanations in words): every
 *     line the queue showed adds up (place <= people waiting); the loss chart has its axis
 *     titles, a smoothed curve in the legend, a turn marker where the second turn starts, and an
 *     accessible name with the latest loss and step; the shared model update and its round agree;
 *     how often the text was seen is said; still nothing wider than the phone. The phone then
 *     pauses (said as an ordinary event, not an error) and resumes on WebGPU: the page says that
 *     the engine changed since last time.
 *
 * Screenshots land in test-results/e2e/screenshots/first-hour-*.png.
 */
import { expect, test, type Browser, type BrowserContext, type Page } from '@playwright/test';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { shippedTokenizer } from './privacy';
import { startSystem, type System } from './system';

const SHOTS = fileURLToPath(new URL('../test-results/e2e/screenshots', import.meta.url));
const STEPS = 3;
const tokenizer = shippedTokenizer();

const SIZES = {
  phone: { width: 390, height: 844 },
  desktop: { width: 1280, height: 900 },
} as const;
type Size = keyof typeof SIZES;

/** Every form the queue line takes: "-" (not in line), the turn, or a place that adds up. */
const QUEUE_LINE = new RegExp(
  '^(-|your turn|You are next in line\\.|You are in line; \\d+ (person is|people are) ahead of you\\.|' +
    'Your turn this round is done; you are in line for a later round\\.|' +
    'You are #\\d+ in line \\(\\d+ waiting\\)(; someone is training now)?\\.)$',
);

interface Manifest {
  model: { name: string; parameters: number; demo: boolean; description: string };
  train: { batch: number; seq: number; stepsPerUser: number };
}

let sys: System;
let manifest: Manifest;
/** tokens one turn trains on: the page's "too little" threshold */
let need: number;
const contexts: BrowserContext[] = [];

/** A text of at least `tokens` tokens with the shipped tokenizer (the run's). */
function textOf(tokens: number, who: string): string {
  const line = `${who} walked along the harbour wall and counted the boats that came home before the storm. `;
  let s = '';
  while (tokenizer.encode(s).length < tokens) s += line;
  return s;
}

async function open(browser: Browser, size: Size, url: string): Promise<Page> {
  const ctx = await browser.newContext({ viewport: SIZES[size] });
  contexts.push(ctx);
  const page = await ctx.newPage();
  page.on('pageerror', (e) => console.log(`[${size} pageerror] ${e.message}`));
  await page.goto(url);
  return page;
}

/** The page is no wider than the screen (at 390 px: no horizontal scrolling). */
async function fitsWidth(page: Page, size: Size): Promise<void> {
  const w = await page.evaluate(() => document.documentElement.scrollWidth);
  expect(w, `page width at ${size}`).toBeLessThanOrEqual(SIZES[size].width);
}

/** Every text #queue shows, recorded as it changes (window.__queue). */
async function recordQueue(page: Page): Promise<void> {
  await page.evaluate(() => {
    const el = document.getElementById('queue')!;
    const seen: string[] = [];
    (window as unknown as { __queue: string[] }).__queue = seen;
    new MutationObserver(() => seen.push(el.textContent ?? '')).observe(el, {
      childList: true,
      characterData: true,
      subtree: true,
    });
  });
}

/** Every text #engine showed while the engine started (window.__engine). */
async function recordEngine(page: Page): Promise<void> {
  await page.evaluate(() => {
    const el = document.getElementById('engine')!;
    const seen: string[] = [];
    (window as unknown as { __engine: string[] }).__engine = seen;
    new MutationObserver(() => seen.push(el.textContent ?? '')).observe(el, {
      childList: true,
      characterData: true,
      subtree: true,
    });
  });
}

test.describe.configure({ mode: 'serial' });

test.beforeAll(async () => {
  mkdirSync(SHOTS, { recursive: true });
  sys = await startSystem({
    name: 'page-first-hour',
    edges: 1,
    stepsPerUser: STEPS,
    usersPerEdge: 2,
    minUsers: 1,
    minEdges: 1,
  });
  manifest = (await (await fetch(`${sys.cloudUrl}/api/manifest`)).json()) as Manifest;
  need = manifest.train.batch * manifest.train.seq * manifest.train.stepsPerUser;
});

test.afterAll(async () => {
  for (const c of contexts) await c.close().catch(() => undefined);
  await sys?.stop();
});

for (const size of ['phone', 'desktop'] as const) {
  test(`before joining (${size}): the model, the amount of text, and a bad join link said in words`, async ({
    browser,
  }) => {
    // a join link whose code the cloud never issued
    const page = await open(browser, size, `${sys.cloudUrl}/?join=not-a-code-anyone-issued`);

    // the model: name, size, and that it is a demo model
    const m = manifest.model;
    await expect(page.locator('#model-name')).toHaveText(m.name);
    const size1 = m.parameters >= 1e5 ? `${(m.parameters / 1e6).toFixed(1)} M parameters` : 'k parameters';
    await expect(page.locator('#model-size')).toContainText(size1);
    await expect(page.locator('#model-description')).toHaveText(m.description);
    expect(m.demo).toBe(true);
    await expect(page.locator('#model-demo')).toBeVisible();
    await expect(page.locator('#model-demo')).toContainText('small demo model');

    // Start is greyed out with its reason next to it
    await expect(page.locator('#start')).toBeDisabled();
    await expect(page.locator('#start-why')).toBeVisible();
    await expect(page.locator('#start-why')).toContainText('Add some text');
    // so are Continue and Download, each with its reason next to it
    await expect(page.locator('#generate')).toBeDisabled();
    await expect(page.locator('#generate-why')).toContainText('press Start (or Resume) first');
    await expect(page.locator('#download-adapter')).toBeDisabled();
    await expect(page.locator('#adapter-status')).toHaveText('saved after your first completed turn');

    // a tiny document: counted in tokens, and called too little, with the rule
    await page.setInputFiles('#doc-files', {
      name: 'tiny.txt',
      mimeType: 'text/plain',
      buffer: Buffer.from('Call me Ishmael. Some years ago I went to sea.'),
    });
    const tinyTokens = tokenizer.encode('Call me Ishmael. Some years ago I went to sea.').length;
    await expect(page.locator('#docs-summary')).toHaveAttribute('data-tokens', String(tinyTokens));
    await expect(page.locator('#docs-summary')).toContainText(`${tinyTokens} tokens`);
    await expect(page.locator('#enough')).toBeVisible();
    await expect(page.locator('#enough')).toContainText('too little');
    const t = manifest.train;
    await expect(page.locator('#enough')).toContainText(
      `${t.batch} × ${t.seq} × ${t.stepsPerUser} = ${need.toLocaleString('en')} tokens`,
    );
    // each Remove button says what it removes
    await expect(page.getByRole('button', { name: 'Remove tiny.txt' })).toBeVisible();
    await expect(page.locator('#start')).toBeEnabled();
    await expect(page.locator('#start-why')).toBeHidden();
    if (size === 'phone') await fitsWidth(page, size);

    // Start with the bad code: the sentence under the join field, the code only in the details
    await page.click('#start');
    const joinProblem = page.locator('#join-problem');
    await expect(joinProblem).toBeVisible({ timeout: 30_000 });
    await expect(joinProblem.locator('.sentence')).toContainText('This join link is not valid');
    await expect(joinProblem.locator('.sentence')).toContainText('Ask the person who runs this fine-tuning');
    await expect(joinProblem).toHaveAttribute('data-code', 'BAD_JOIN_TOKEN');
    await expect(joinProblem.locator('details')).not.toHaveAttribute('open', '');
    await expect(page.getByText('BAD_JOIN_TOKEN')).toBeHidden();
    await expect(page.locator('#train-problem')).toBeHidden();
    // not overwritten within seconds
    await page.waitForTimeout(3000);
    await expect(joinProblem).toBeVisible();
    await expect(joinProblem.locator('.sentence')).toContainText('This join link is not valid');
    // the code is there for whoever opens the details
    await joinProblem.locator('summary').click();
    await expect(joinProblem.locator('details code')).toHaveText('BAD_JOIN_TOKEN');
    if (size === 'phone') await fitsWidth(page, size);
    await page.screenshot({ path: join(SHOTS, `first-hour-${size}-bad-link.png`), fullPage: true });

    // the person edits the link: what was said about the old one goes
    await page.fill('#join-code', 'http://127.0.0.1:9/?join=abc');
    await expect(joinProblem).toBeHidden();
    // a server that cannot be reached: said with its host, next to the join field
    await page.locator('#join-code').press('Enter');
    await page.locator('#join-code').blur();
    await expect(joinProblem.locator('.sentence')).toHaveText(
      'Cannot reach the server at 127.0.0.1:9. Check the link or your connection, then try again.',
      { timeout: 30_000 },
    );
    await expect(page.getByText('Failed to fetch')).toBeHidden();
    await expect(page.locator('#privacy-status')).toHaveAttribute('data-state', 'error');

    // back to this run; then enough text: the warning goes
    await page.fill('#join-code', `${sys.cloudUrl}/?join=still-not-a-code`);
    await page.locator('#join-code').blur();
    await expect(page.locator('#privacy-status')).toHaveAttribute('data-state', 'loaded');
    await page.fill('#doc-text', textOf(need + 50, `The ${size} keeper`));
    await page.click('#add-doc');
    await expect(page.locator('#docs li')).toHaveCount(2);
    await page.getByRole('button', { name: 'Remove tiny.txt' }).click();
    await expect(page.locator('#docs li')).toHaveCount(1);
    await expect(page.getByRole('button', { name: 'Remove pasted text 2' })).toBeVisible();
    const tokens = Number(await page.locator('#docs-summary').getAttribute('data-tokens'));
    expect(tokens).toBeGreaterThanOrEqual(need);
    await expect(page.locator('#enough')).toBeHidden();
    if (size === 'phone') await fitsWidth(page, size);
  });
}

test('two people train two turns each, on a phone and on a desktop: the line, the chart, the words', async ({
  browser,
}) => {
  test.setTimeout(420_000);
  // the phone forces WebAssembly; the desktop lets the page choose (it times both on SwiftShader)
  const pages: Record<Size, Page> = {
    phone: await open(browser, 'phone', await sys.joinLink({ engine: 'wasm' })),
    desktop: await open(browser, 'desktop', await sys.joinLink({ engine: 'auto' })),
  };
  for (const [size, page] of Object.entries(pages)) {
    await recordQueue(page);
    await recordEngine(page);
    await page.fill('#doc-text', textOf(need * 2, `The ${size} keeper`));
    await page.click('#add-doc');
    await expect(page.locator('#enough')).toBeHidden();
  }
  for (const page of Object.values(pages)) await page.click('#start');
  for (const page of Object.values(pages)) {
    await expect(page.locator('#connection')).toHaveAttribute('data-state', /connected|training/, { timeout: 120_000 });
    await expect(page.locator('#join-problem')).toBeHidden();
  }

  // two turns each: the second turn's first step is marked on the chart
  for (const page of Object.values(pages)) {
    await expect(page.locator('#loss-chart')).toHaveAttribute('data-turns', /^([2-9]|\d\d+)$/, { timeout: 300_000 });
  }

  for (const [size, page] of Object.entries(pages) as [Size, Page][]) {
    // the engine, in words; the client's technical reason only in the details
    await expect(page.locator('#engine')).toHaveAttribute('data-kind', /^(wgsl|wasm)$/);
    const why = (await page.locator('#engine-why').textContent())!;
    expect(why).not.toMatch(/ms\/step|wgsl|adapter/);
    if (size === 'phone') expect(why).toBe('You chose this engine.');
    else expect(why).toMatch(/^Picked automatically: /);
    await expect(page.locator('#engine-details')).not.toHaveAttribute('open', '');
    const starting = await page.evaluate(() => (window as unknown as { __engine: string[] }).__engine);
    expect(starting).toContain(
      size === 'desktop' ? 'checking which engine is faster on this device…' : 'starting WebAssembly (processor)…',
    );

    // the chart explains itself
    const chart = page.locator('#loss-chart');
    await expect(chart.locator('canvas')).toBeVisible();
    await expect(page.locator('.axis-title.y')).toHaveText('↑ loss (nats, lower is better)');
    await expect(page.locator('.axis-title.x')).toHaveText('training step (yours, across turns) →');
    await expect(chart.locator('.u-legend')).toContainText('exponential moving average');
    await expect(page.locator('#loss-caption')).toContainText('the shared model changed here');
    const points = Number(await chart.getAttribute('data-points'));
    const starts = (await chart.getAttribute('data-turn-starts'))!.split(',').map(Number);
    expect(starts[0]).toBe(STEPS + 1);
    const losses = (await chart.getAttribute('data-losses'))!.split(',').map(Number);
    expect(losses).toHaveLength(points);
    await expect(chart).toHaveAttribute(
      'aria-label',
      new RegExp(`latest loss ${losses[points - 1].toFixed(3)} at step ${points} `),
    );
    // the canvas fits its box at this width (the chart follows the page, not a fixed size)
    const box = (await chart.boundingBox())!;
    const canvas = (await chart.locator('canvas').boundingBox())!;
    expect(canvas.width).toBeLessThanOrEqual(box.width + 1);

    // the shared model update and its round say the same thing
    const v = Number(await page.locator('#version').textContent());
    expect(v).toBeGreaterThanOrEqual(1);
    await expect(page.locator('#version-round')).toHaveText(`(made by round ${v})`);
    // how often the text was seen, from the tokens trained and the tokens of text
    await expect(page.locator('#passes')).toContainText('tokens trained');
    // the turn count and the chart's turns agree once the last turn has ended
    await expect(page.locator('#turns')).toHaveText(String(starts.length + 1), { timeout: 60_000 });

    // every line the queue showed adds up
    const lines = await page.evaluate(() => (window as unknown as { __queue: string[] }).__queue);
    expect(lines.length).toBeGreaterThan(0);
    for (const line of lines) {
      expect(line).toMatch(QUEUE_LINE);
      const m = /#(\d+) in line \((\d+) waiting\)/.exec(line);
      if (m) expect(Number(m[1]), line).toBeLessThanOrEqual(Number(m[2]));
    }
    console.log(`${size}: queue lines ${JSON.stringify([...new Set(lines)])}; engine: ${why}`);
    if (size === 'phone') await fitsWidth(page, size);
    await page.locator('#train-card').screenshot({ path: join(SHOTS, `first-hour-${size}-trained.png`) });
  }

  // the phone pauses: an ordinary event, said as such, not as an error; then it resumes on the
  // other engine, and the page says that the engine changed
  const phone = pages.phone;
  await phone.click('#pause');
  await expect(phone.locator('#connection')).toHaveAttribute('data-state', 'paused');
  await expect(phone.locator('#train-status')).toContainText('Paused.');
  await expect(phone.locator('#train-problem')).toBeHidden();
  await expect(phone.locator('#resume')).toBeEnabled();
  await phone.selectOption('#engine-select', 'wgsl');
  await phone.click('#resume');
  await expect(phone.locator('#engine')).toHaveAttribute('data-kind', 'wgsl', { timeout: 120_000 });
  await expect(phone.locator('#engine-note')).toBeVisible();
  await expect(phone.locator('#engine-note')).toContainText(
    'Last time this browser trained with WebAssembly (processor); now it uses WebGPU (graphics chip)',
  );
  await expect(phone.locator('#train-problem')).toBeHidden();
  await fitsWidth(phone, 'phone');
});
