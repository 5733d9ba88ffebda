/**
 * The cloud operator's invitations and the join race, in Chromium against a real cloud and one
 * edge (e2e/system.ts):
 *
 *  1. The operator opens the cloud's invitations page (/admin/invitations), gives its token, mints
 *     a link; a person opens that link in another browser, adds text and trains a turn; the
 *     invitations page then lists the invitation as used, and the same link cannot be used again
 *     (said in words under the join field, not as a code).
 *  2. Three people join at the same moment while a headless user makes the rounds (and with them
 *     the global version) move on every few seconds: every join succeeds and waits in line, with
 *     no problem shown (the race of issue 15: a join told a version that moved on before its
 *     downloads finished).
 */
import { expect, test, type BrowserContext, type Page } from '@playwright/test';
import { join } from 'node:path';
import { REPO_ROOT } from '../packages/cli/src/io';
import { type Part, startPart } from '../packages/cli/src/launcher';
import { LOG_DIR, startSystem, type System } from './system';

const TEXT = 'The keeper walked along the harbour wall and counted the boats that came home before the storm. '.repeat(
  40,
);

let sys: System;
const contexts: BrowserContext[] = [];
const parts: Part[] = [];

test.describe.configure({ mode: 'serial' });

test.beforeAll(async () => {
  sys = await startSystem({ name: 'operator', edges: 1, stepsPerUser: 2, usersPerEdge: 1, minUsers: 1, minEdges: 1 });
});

test.afterAll(async () => {
  for (const c of contexts) await c.close();
  for (const p of parts) await p.stop();
  await sys?.stop();
});

async function openPage(browser: import('@playwright/test').Browser, url: string): Promise<Page> {
  const ctx = await browser.newContext();
  contexts.push(ctx);
  const page = await ctx.newPage();
  page.on('pageerror', (e) => console.log(`[pageerror] ${e.message}`));
  await page.goto(url);
  return page;
}

test('an invitation minted on the operator page lets a person join and train; the page lists it as used', async ({
  browser,
}) => {
  test.setTimeout(300_000);
  const admin = await openPage(browser, `${sys.cloudUrl}/admin/invitations`);
  await admin.fill('#token', sys.operatorToken);
  await admin.click('#tokenForm button[type="submit"]');
  await admin.fill('#count', '1');
  await admin.click('#mintForm button[type="submit"]');
  await expect(admin.locator('#links')).toHaveValue(/\?join=/);
  const link = (await admin.locator('#links').inputValue()).trim();
  expect(link.startsWith(`${sys.cloudUrl}/`)).toBe(true);
  await expect(admin.locator('#rows tr')).toHaveCount(1);
  await expect(admin.locator('#rows')).toContainText('unused');

  const page = await openPage(browser, `${link}&engine=wasm`);
  await page.fill('#doc-text', TEXT);
  await page.click('#add-doc');
  await page.click('#start');
  await expect(page.locator('#connection')).toHaveAttribute('data-state', /connected|training/, { timeout: 120_000 });
  await expect(page.locator('#join-problem')).toBeHidden();
  // a whole turn: its steps are on the chart
  await expect(page.locator('#loss-chart')).toHaveAttribute('data-turns', /^[1-9]\d*$/, { timeout: 180_000 });

  await admin.reload();
  await admin.fill('#token', sys.operatorToken);
  await admin.click('#tokenForm button[type="submit"]');
  await expect(admin.locator('#rows')).toContainText('used');
  await expect(admin.locator('#rows')).not.toContainText('unused');

  // the link was spent by the join: a second person with it is told so in words
  const second = await openPage(browser, link);
  await second.fill('#doc-text', TEXT);
  await second.click('#add-doc');
  await second.click('#start');
  const problem = second.locator('#join-problem');
  await expect(problem).toBeVisible({ timeout: 60_000 });
  await expect(problem.locator('.sentence')).not.toContainText('BAD_JOIN_TOKEN');
  await expect(problem.locator('.sentence')).toContainText(/used|ask/i);
});

test('three people join at once while the rounds move on: every join succeeds', async ({ browser }) => {
  test.setTimeout(300_000);
  // a headless user who trains every round, so the version changes every few seconds
  const token = new URL(await sys.joinLink()).searchParams.get('join')!;
  const user = startPart(
    'race-user',
    ['user', '--cloud', sys.cloudUrl, '--data', join(REPO_ROOT, 'packages/assets/data/sotu/train/user-1.txt')],
    { logDir: join(LOG_DIR, 'operator'), env: { SPLITLLM_JOIN_TOKEN: token } },
  );
  parts.push(user);
  await user.ready;
  const versionNow = async () =>
    ((await (await fetch(`${sys.cloudUrl}/api/status`)).json()) as { version: number }).version;
  const v0 = await versionNow();
  await expect.poll(versionNow, { timeout: 120_000 }).toBeGreaterThan(v0);

  const pages = await Promise.all([0, 1, 2].map(async () => openPage(browser, await sys.joinLink({ engine: 'wasm' }))));
  for (const page of pages) {
    await page.fill('#doc-text', TEXT);
    await page.click('#add-doc');
  }
  const before = await versionNow();
  await Promise.all(pages.map((page) => page.click('#start')));
  for (const page of pages) {
    await expect(page.locator('#connection')).toHaveAttribute('data-state', /connected|training/, {
      timeout: 120_000,
    });
    await expect(page.locator('#join-problem')).toBeHidden();
  }
  // the version did move while they joined (else this raced nothing)
  await expect.poll(versionNow, { timeout: 120_000 }).toBeGreaterThan(before);
  for (const page of pages) await expect(page.locator('#join-problem')).toBeHidden();
});
