/**
 * The edge operator's dashboard on a phone (390 x 844), end to end: a cloud, one edge and two
 * headless users (`splitllm user`, the TypeScript reference engine) as real processes on
 * loopback; the dashboard in headless Chromium. One system, tests in order:
 *
 *  1. the page at 390 px: no horizontal scroll, the model named, counts that match the rows, the
 *     loss chart drawn by uPlot (loaded from the edge under its CSP) with its axis titles and a
 *     round boundary, every Drop button named by whom it drops
 *  2. a Drop that fails (the user went while the dialog was open) says so in the dialog, and that
 *     user, whose process was killed like a closed tab, is listed as "left", not as an error
 *  3. a Drop that works: the user is listed as dropped, the edge closes its connection (4003) and
 *     its client stops for good
 *  4. people's errors: a wrong token, and the edge going away
 *
 * Screenshots land in test-results/e2e/screenshots/dashboard-*.png.
 */
import { expect, type Page, test } from '@playwright/test';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { REPO_ROOT } from '../packages/cli/src/io';
import { issueJoinToken, type Part, startPart } from '../packages/cli/src/launcher';
import { LOG_DIR, startSystem, type System } from './system';

const SHOTS = fileURLToPath(new URL('../test-results/e2e/screenshots', import.meta.url));
const PHONE = { width: 390, height: 844 };
const DATA = join(REPO_ROOT, 'packages/assets/data/sotu/train');

interface HeadlessUser {
  part: Part;
  userId: string;
  /** the client's JSON events (`--json`) after ready */
  events: Array<Record<string, unknown>>;
}

let sys: System;
let page: Page;
const users: HeadlessUser[] = [];
const consoleErrors: string[] = [];

async function startUser(name: string, file: string): Promise<HeadlessUser> {
  const part = startPart(
    name,
    ['user', '--cloud', sys.cloudUrl, '--data', join(DATA, file), '--engine', 'reference', '--json'],
    {
      logDir: join(LOG_DIR, 'dashboard'),
      env: { SPLITLLM_JOIN_TOKEN: await issueJoinToken(sys.cloudUrl, sys.operatorToken) },
    },
  );
  const events: Array<Record<string, unknown>> = [];
  part.onLine((j) => events.push(j));
  const ready = await part.ready;
  const u = { part, userId: String(ready.userId), events };
  users.push(u);
  return u;
}

/** No horizontal scrolling: the page is no wider than the phone. */
async function expectNoOverflow(what: string): Promise<void> {
  const widths = await page.evaluate(() => ({
    doc: document.documentElement.scrollWidth,
    body: document.body.scrollWidth,
  }));
  expect(widths.doc, `${what}: document width`).toBeLessThanOrEqual(PHONE.width);
  expect(widths.body, `${what}: body width`).toBeLessThanOrEqual(PHONE.width);
}

test.describe('the edge operator dashboard on a phone', () => {
  test.describe.configure({ mode: 'serial' });

  test.beforeAll(async ({ browser }) => {
    test.setTimeout(300_000);
    mkdirSync(SHOTS, { recursive: true });
    // round 1 waits for both users; each trains a short turn per round
    sys = await startSystem({
      name: 'dashboard',
      edges: 1,
      stepsPerUser: 4,
      usersPerEdge: 2,
      minUsers: 2,
      minEdges: 1,
    });
    await startUser('user-a', 'user-1.txt');
    await startUser('user-b', 'user-2.txt');
    const ctx = await browser.newContext({ viewport: PHONE, isMobile: true, hasTouch: true });
    page = await ctx.newPage();
    page.on('console', (m) => {
      // the refused Drop's 404 is logged by the browser itself; the page said it in its dialog
      if (m.type() === 'error' && !m.text().includes('status of 404')) consoleErrors.push(m.text());
    });
    page.on('pageerror', (e) => consoleErrors.push(e.message));
    // what uPlot draws on its canvas (its axis titles and our round markers are canvas text)
    await page.addInitScript(() => {
      const drawn = new Set<string>();
      (window as unknown as { __drawn: Set<string> }).__drawn = drawn;
      const fillText = CanvasRenderingContext2D.prototype.fillText;
      CanvasRenderingContext2D.prototype.fillText = function (t: string, x: number, y: number, w?: number) {
        drawn.add(String(t));
        return w === undefined ? fillText.call(this, t, x, y) : fillText.call(this, t, x, y, w);
      };
    });
  });

  test.afterAll(async () => {
    await page
      ?.context()
      .close()
      .catch(() => undefined);
    for (const u of users) await u.part.stop('SIGKILL');
    await sys?.stop();
  });

  test('at 390 px: the model, counts that add up, the uPlot chart, named Drops, no sideways scroll', async () => {
    test.setTimeout(300_000);
    await page.goto(`${sys.edges[0].adminUrl}#token=${sys.operatorToken}`);
    // the token left the address bar
    expect(page.url()).not.toContain('token=');
    for (const u of users) await expect(page.locator(`#users tr[data-user-id="${u.userId}"]`)).toBeVisible();

    // the model, as the manifest names it
    const { model } = (await (await fetch(`${sys.cloudUrl}/api/manifest`)).json()) as {
      model: { name: string; description: string; demo: boolean };
    };
    await expect(page.locator('#model-name')).toHaveText(model.name);
    await expect(page.locator('#model-size')).toContainText('parameters');
    await expect(page.locator('#model-description')).toHaveText(model.description);
    await expect(page.locator('#model-demo')).toBeVisible({ visible: model.demo });

    // two rounds' steps, so that the chart has a round boundary
    const chart = page.locator('#loss-chart');
    await expect(chart).toHaveAttribute('data-rounds', /^\d+(,\d+)+$/, { timeout: 240_000 });
    await expect(chart.locator('canvas').first()).toBeVisible();
    const rounds = (await chart.getAttribute('data-rounds'))!.split(',');
    expect(Number(await chart.getAttribute('data-points'))).toBeGreaterThan(0);
    await expect(chart).toHaveAttribute('data-series', '2');
    const drawn = await page.evaluate(() => [...(window as unknown as { __drawn: Set<string> }).__drawn]);
    expect(drawn).toContain('step');
    expect(drawn).toContain('loss (nats)');
    expect(drawn).toContain(`round ${rounds[1]}`);
    await expect(page.locator('figcaption')).toContainText('the shared model changed there');
    // the chart fits the phone
    const box = (await chart.locator('canvas').first().boundingBox())!;
    expect(box.x + box.width).toBeLessThanOrEqual(PHONE.width);

    // the counts are made of the rows: "N connected" is the sum of the phases, each matching its rows
    const counts = await page.evaluate(() =>
      Object.fromEntries(
        [...document.querySelectorAll<HTMLElement>('#users-count [data-count]')].map((s) => [
          s.dataset.count,
          Number.parseInt(s.textContent ?? '', 10),
        ]),
      ),
    );
    const phases = await page.evaluate(() =>
      [...document.querySelectorAll<HTMLElement>('#users tr[data-user-id]')].map((tr) => tr.dataset.phase),
    );
    expect(counts.connected).toBe(phases.length);
    for (const p of ['training', 'waiting', 'done', 'sitting-out'])
      expect(counts[p] ?? 0, p).toBe(phases.filter((x) => x === p).length);
    await expect(page.locator('#legend')).toContainText('shared model update R−1');
    await expect(page.locator('#version')).toHaveText(/^update \d+$/);

    // each Drop button says whom it drops, and is within the phone's width
    for (const u of users) {
      const drop = page.getByRole('button', { name: `Drop user ${u.userId}`, exact: true });
      await expect(drop).toBeVisible();
      const b = (await drop.boundingBox())!;
      expect(b.x).toBeGreaterThanOrEqual(0);
      expect(b.x + b.width).toBeLessThanOrEqual(PHONE.width);
    }
    await expectNoOverflow('the dashboard');
    await page.screenshot({ path: join(SHOTS, 'dashboard-phone.png'), fullPage: true });
    await page
      .locator('#loss-chart')
      .locator('..')
      .screenshot({ path: join(SHOTS, 'dashboard-phone-chart.png') });
  });

  test('a Drop that fails says why in its dialog; a killed client (a closed tab) is "left", not an error', async () => {
    const b = users[1];
    await page.getByRole('button', { name: `Drop user ${b.userId}`, exact: true }).click();
    const dialog = page.locator('#drop-dialog');
    await expect(dialog).toBeVisible();
    await expect(dialog).toContainText(`Drop user ${b.userId}?`);
    await expect(dialog).toContainText("until the cloud's operator re-admits it");
    await expectNoOverflow('the Drop dialog');
    // the user goes while the operator reads: its process dies as a closed tab does, without a bye
    await b.part.stop('SIGKILL');
    await expect(page.locator(`#users tr[data-user-id="${b.userId}"]`)).toHaveCount(0, { timeout: 30_000 });
    await dialog.getByRole('button', { name: `Drop ${b.userId}`, exact: true }).click();
    await expect(page.locator('#drop-error')).toBeVisible();
    await expect(page.locator('#drop-error-text')).toContainText('is no longer connected to this edge');
    await expect(page.locator('#drop-error-code')).toContainText('UNKNOWN_USER');
    await page.screenshot({ path: join(SHOTS, 'dashboard-drop-failed.png'), fullPage: true });
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await expect(dialog).toBeHidden();

    const left = page.locator(`#left li[data-user-id="${b.userId}"]`);
    await expect(left).toHaveAttribute('data-kind', 'left');
    await expect(left).toContainText(`${b.userId}: Left`);
    await expect(page.locator(`#errors li[data-user-id="${b.userId}"]`)).toHaveCount(0);
    await expect(page.locator('#errors [data-code="USER_GONE"]')).toHaveCount(0);
  });

  test('a Drop that works: the user is listed as dropped and the edge shuts it out', async () => {
    const a = users[0];
    await page.getByRole('button', { name: `Drop user ${a.userId}`, exact: true }).click();
    await page
      .locator('#drop-dialog')
      .getByRole('button', { name: `Drop ${a.userId}`, exact: true })
      .click();
    await expect(page.locator('#drop-dialog')).toBeHidden();
    await expect(page.locator(`#users tr[data-user-id="${a.userId}"]`)).toHaveCount(0);
    const left = page.locator(`#left li[data-user-id="${a.userId}"]`);
    await expect(left).toHaveAttribute('data-kind', 'removed');
    await expect(left).toContainText("Dropped by you. It cannot rejoin until the cloud's operator re-admits it.");
    await expect(page.locator('#users-count')).toHaveText('0 connected');
    // the edge closed its connection as a removal (4003): the client says it was removed and does
    // not come back
    await expect
      .poll(() => a.events.find((e) => e.type === 'closed'), { timeout: 15_000 })
      .toMatchObject({ event: 'user', type: 'closed', code: 4003 });
    expect(a.events).toContainEqual(expect.objectContaining({ event: 'user', type: 'removed' }));
    expect(a.events.filter((e) => e.type === 'reconnecting')).toEqual([]);
    const pub = (await (await fetch(`${sys.edges[0].url}/api/status`)).json()) as { users: { connected: number } };
    expect(pub.users.connected).toBe(0);
    await expectNoOverflow('after the Drop');
    await page.screenshot({ path: join(SHOTS, 'dashboard-after-drop.png'), fullPage: true });
  });

  test("people's errors: a wrong token, and the edge going away", async ({ browser }) => {
    const ctx = await browser.newContext({ viewport: PHONE });
    const other = await ctx.newPage();
    await other.goto(`${sys.edges[0].adminUrl}#token=not-the-token`);
    await expect(other.locator('#auth-message')).toContainText('This edge did not accept that token');
    await expect(other.locator('#auth-code')).toContainText('UNAUTHORIZED');
    await expect(other.locator('#token')).toBeVisible();
    await ctx.close();

    // the page never logged an error (a CSP refusal of uPlot would be one)
    expect(consoleErrors).toEqual([]);
    await sys.stop();
    await expect(page.locator('#conn-problem')).toBeVisible({ timeout: 15_000 });
    await expect(page.locator('#conn-problem-text')).toContainText('The connection to this edge is lost');
    await expect(page.locator('#conn-problem-code')).not.toBeEmpty();
    await expectNoOverflow('with the connection lost');
    await page.screenshot({ path: join(SHOTS, 'dashboard-edge-gone.png'), fullPage: true });
  });
});
