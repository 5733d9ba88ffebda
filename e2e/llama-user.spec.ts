/**
 * One browser user on the LLaMA-architecture model (packages/assets/models/moby-llama-tiny), end
 * to end: a cloud serving the built page and that model, one edge, and one contributor in headless
 * Chromium with WebGPU (SwiftShader here). Real processes and sockets, no mocks. It shows that the
 * page, its worker and the engines it picks are not GPT-2-only: the model card is shown, the text is
 * counted with the run's own (Hugging Face) tokenizer, the page's automatic engine choice trains a
 * turn, the round ends and the shared model update advances, a continuation runs through the three
 * tiers, the adapter downloads as a PEFT zip for a LlamaForCausalLM (q_proj / v_proj ...), and after a
 * pause the same user trains a full turn on the WGSL engine (which 'auto' only times on SwiftShader).
 *
 * Kept short (one round, a few steps): the whole e2e suite already takes minutes on a small machine.
 * Screenshots land in test-results/e2e/screenshots/llama-*.png, logs in test-results/e2e/logs/llama-user/.
 */
import { expect, test, type BrowserContext, type Page } from '@playwright/test';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SHIPPED_MODELS } from '../packages/cli/src/io';
import { llamaAdapterFromPeft } from '../packages/model/src/formats/peft-llama';
import { loadLlamaDir } from '../packages/model/src/node/llama-io';
import { startSystem, type System } from './system';

const SHOTS = fileURLToPath(new URL('../test-results/e2e/screenshots', import.meta.url));
const MODEL_DIR = SHIPPED_MODELS['moby-llama-tiny'];
const card = JSON.parse(readFileSync(join(MODEL_DIR, 'model-card.json'), 'utf8')) as {
  name: string;
  description: string;
};
const llama = loadLlamaDir(MODEL_DIR);
/** one turn: enough steps to train and send an adapter, few enough to keep the spec short */
const STEPS = 3;
/**
 * The loss of guessing uniformly over the vocabulary, ln(1024) = 6.93 nats. The model was
 * pre-trained on Moby-Dick, so on English prose it must do clearly better than that; a wrong
 * LLaMA forward anywhere in the three tiers (RoPE, grouped heads, RMSNorm, the untied head) would
 * not.
 */
const UNIFORM_LOSS = Math.log(llama.config.vocabSize);

const TEXT = [
  'The whale rose beside the boat at dawn, and the mate stood in the bow with the harpoon raised.',
  'All hands watched the white water where the spout had been, and nobody spoke for a long time.',
  'Then the captain called from the quarter-deck that the sea was calm and the wind was fair,',
  'and the ship turned slowly to the east, towards the islands where the old men said whales sleep.',
]
  .join(' ')
  .repeat(4);

let sys: System;
let ctx: BrowserContext;
let page: Page;

/** The files of a zip whose entries are stored (method 0), as the page writes its adapter zip. */
function storedZipEntries(zip: Buffer): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  let at = 0;
  while (zip.readUInt32LE(at) === 0x04034b50) {
    const flags = zip.readUInt16LE(at + 6);
    const method = zip.readUInt16LE(at + 8);
    const size = zip.readUInt32LE(at + 18);
    const nameLength = zip.readUInt16LE(at + 26);
    const extraLength = zip.readUInt16LE(at + 28);
    const name = zip.subarray(at + 30, at + 30 + nameLength).toString('utf8');
    // sizes after the data (flag bit 3) or compression would need a real unzipper: the page uses neither
    if (flags & 8 || method !== 0)
      throw new Error(`zip entry ${name}: flags ${flags}, method ${method}; expected stored`);
    const start = at + 30 + nameLength + extraLength;
    files.set(name, zip.subarray(start, start + size));
    at = start + size;
  }
  return files;
}

async function cloudVersion(): Promise<number> {
  const res = await fetch(`${sys.cloudUrl}/api/status`);
  if (!res.ok) throw new Error(`GET /api/status: ${res.status}`);
  return ((await res.json()) as { version: number }).version;
}

async function waitForRound(version: number, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = (await sys.rounds()).find((x) => x.version === version);
    if (r) return r;
    if (Date.now() > deadline) throw new Error(`round ${version} was not recorded within ${timeoutMs / 1000} s`);
    await new Promise((res) => setTimeout(res, 500));
  }
}

test.describe('one user on the LLaMA-architecture model', () => {
  test.describe.configure({ mode: 'serial' });

  test.beforeAll(async ({ browser }) => {
    mkdirSync(SHOTS, { recursive: true });
    sys = await startSystem({
      name: 'llama-user',
      modelDir: MODEL_DIR,
      edges: 1,
      stepsPerUser: STEPS,
      usersPerEdge: 1,
      minUsers: 1,
      minEdges: 1,
    });
    ctx = await browser.newContext();
    page = await ctx.newPage();
    page.on('console', (m) => {
      if (m.type() === 'error') console.log(`[llama console] ${m.text()}`);
    });
    page.on('pageerror', (e) => console.log(`[llama pageerror] ${e.message}`));
  });

  test.afterAll(async () => {
    await ctx?.close().catch(() => undefined);
    await sys?.stop();
  });

  test('the page names the model, counts the text with its tokenizer, and trains a round', async () => {
    test.setTimeout(300_000);
    expect(await cloudVersion()).toBe(0);
    // no engine asked for: the page's own choice (on a software WebGPU adapter it times both)
    await page.goto(await sys.joinLink());
    await expect(page.locator('#model-name')).toHaveText(card.name);
    expect(card.name).toBe('moby-llama-tiny');
    await expect(page.locator('#model-description')).toHaveText(card.description);
    let parameters = 0;
    for (const t of llama.weights.values()) parameters += t.data.length;
    await expect(page.locator('#model-size')).toHaveAttribute('data-parameters', String(parameters));

    await page.fill('#doc-text', TEXT);
    await page.click('#add-doc');
    await expect(page.locator('#docs li')).toHaveCount(1);
    // counted by the worker with the tokenizer the cloud serves (this model's tokenizer.json)
    await expect(page.locator('#docs-summary')).toHaveAttribute(
      'data-tokens',
      String(llama.tokenizer.encode(TEXT).length),
    );
    await expect(page.locator('#start')).toBeEnabled();

    await page.click('#start');
    await expect(page.locator('#connection')).toHaveAttribute('data-state', /connected|training/, { timeout: 120_000 });
    const userId = (await page.locator('#user-id').textContent())!.trim();
    expect(userId).toMatch(/\S/);
    await expect(page.locator('#engine')).toHaveAttribute('data-kind', /^(wgsl|wasm)$/, { timeout: 120_000 });
    const kind = await page.locator('#engine').getAttribute('data-kind');
    const reason = (await page.locator('#engine-reason').textContent())!;
    expect(reason).toMatch(
      new RegExp(`software WebGPU adapter .*wgsl \\d+ ms/step vs wasm \\d+ ms/step, using ${kind}`),
    );
    console.log(`llama: engine chosen by 'auto': ${kind} (${reason})`);

    const round1 = await waitForRound(1, 240_000);
    expect(round1.participants).toContain(`user:${userId}`);
    expect(round1.users).toBe(1);
    expect(round1.loss).not.toBeNull();
    expect(Number.isFinite(round1.loss)).toBe(true);
    expect(round1.loss!).toBeGreaterThan(0);
    expect(round1.loss!).toBeLessThan(UNIFORM_LOSS);
    expect(await cloudVersion()).toBeGreaterThanOrEqual(1);

    // the user stays in line, so later rounds may follow round 1 while this is checked: at least one
    await expect(page.locator('#version')).toHaveText(/^[1-9]\d*$/, { timeout: 60_000 });
    await expect(page.locator('#turns')).toHaveText(/^[1-9]\d*$/, { timeout: 30_000 });
    const losses = (await page.locator('#loss-chart').getAttribute('data-losses'))!.split(',').map(Number);
    expect(losses.length).toBeGreaterThanOrEqual(STEPS);
    for (const l of losses) {
      expect(Number.isFinite(l)).toBe(true);
      expect(l).toBeLessThan(UNIFORM_LOSS);
    }
    // the round's loss is the mean of its turns' step losses, and round 1 was this user's first turn:
    // the cloud saw the losses the page trained with (5e-5: float32 losses of about 4 differ by far less)
    const firstTurn = losses.slice(0, STEPS);
    expect(firstTurn.reduce((a, b) => a + b, 0) / STEPS).toBeCloseTo(round1.loss!, 4);
    // no problem is shown anywhere on the page (each control's slot stays hidden)
    await expect(page.locator('.problem:visible')).toHaveCount(0);
    await page.screenshot({ path: join(SHOTS, 'llama-after-round.png'), fullPage: true });
    console.log(`llama: round 1 loss ${round1.loss!.toFixed(3)}, the page's steps ${losses.map((l) => l.toFixed(3))}`);
  });

  test('a continuation through the three tiers, and the adapter as a PEFT zip for LLaMA', async () => {
    test.setTimeout(180_000);
    await expect(page.locator('#generate')).toBeEnabled();
    await page.fill('#generate-prompt', 'The whale');
    await page.click('#generate');
    await expect(page.locator('#generate-output')).toHaveAttribute('data-tokens', /\d+/, { timeout: 120_000 });
    const out = (await page.locator('#generate-output').textContent())!;
    expect(out.startsWith('The whale')).toBe(true);
    expect(out.length).toBeGreaterThan('The whale'.length);
    await expect(page.locator('#generate-problem')).toBeHidden();

    await expect(page.locator('#download-adapter')).toBeEnabled();
    const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download-adapter')]);
    expect(download.suggestedFilename()).toMatch(/^splitllm-adapter-v\d+-round\d+\.zip$/);
    const files = storedZipEntries(readFileSync(await download.path()));
    expect([...files.keys()].sort()).toEqual(['adapter_config.json', 'adapter_model.safetensors']);
    const config = JSON.parse(files.get('adapter_config.json')!.toString('utf8')) as Record<string, unknown>;
    expect(config.peft_type).toBe('LORA');
    expect(config.base_model_name_or_path).toBe('moby-llama-tiny');
    const targets = config.target_modules as string[];
    expect(targets).toEqual(expect.arrayContaining(['q_proj', 'v_proj']));
    expect(targets.every((t) => /^(q|k|v|o|gate|up|down)_proj$/.test(t))).toBe(true);
    // the weights read back as an adapter for this model (every name and shape checked against it)
    const adapter = llamaAdapterFromPeft(config, new Uint8Array(files.get('adapter_model.safetensors')!), {
      model: llama.config,
    });
    expect([...adapter.config.targets].sort()).toEqual([...targets].sort());
    // B starts at zero: a nonzero B is the user's turn having trained the adapter it sent
    const trained = [...adapter.layers.values()].some((p) => p.B.data.some((x) => x !== 0));
    expect(trained).toBe(true);
    await expect(page.locator('.problem:visible')).toHaveCount(0);
    await page.screenshot({ path: join(SHOTS, 'llama-generate.png'), fullPage: true });
  });

  test('paused, switched to the WGSL engine and resumed, the same user trains another turn', async () => {
    test.setTimeout(240_000);
    // 'auto' keeps wasm on a software adapter, where WGSL ran one timed step only: a full turn on it here
    await page.click('#pause');
    await expect(page.locator('#connection')).toHaveAttribute('data-state', 'paused');
    const turnsBefore = Number(await page.locator('#turns').textContent());
    await page.selectOption('#engine-select', 'wgsl');
    await page.click('#resume');
    await expect(page.locator('#engine')).toHaveAttribute('data-kind', 'wgsl', { timeout: 120_000 });
    await expect(page.locator('#engine-reason')).toContainText('asked for');
    // read once the new engine is up: every step after this is a WGSL step
    const before = Number(await page.locator('#loss-chart').getAttribute('data-points'));
    // a turn on WGSL accepted by the edge; the round after the cloud's version at that moment holds
    // only turns begun after it (one user, one turn a round), so WGSL turns
    await page.waitForFunction((n) => Number(document.getElementById('turns')!.textContent) > n, turnsBefore, {
      timeout: 120_000,
    });
    const round = await waitForRound((await cloudVersion()) + 1, 180_000);
    expect(round.users).toBe(1);
    expect(Number.isFinite(round.loss)).toBe(true);
    expect(round.loss!).toBeLessThan(UNIFORM_LOSS);
    await page.waitForFunction(
      (n) => Number(document.getElementById('loss-chart')!.dataset.points) >= n,
      before + STEPS,
      { timeout: 60_000 },
    );
    const losses = (await page.locator('#loss-chart').getAttribute('data-losses'))!.split(',').map(Number);
    for (const l of losses.slice(before)) {
      expect(Number.isFinite(l)).toBe(true);
      expect(l).toBeLessThan(UNIFORM_LOSS);
    }
    await expect(page.locator('.problem:visible')).toHaveCount(0);
    await page.screenshot({ path: join(SHOTS, 'llama-wgsl.png'), fullPage: true });
    console.log(`llama: WGSL turn losses ${losses.slice(before, before + STEPS).map((l) => l.toFixed(3))}`);
  });
});
