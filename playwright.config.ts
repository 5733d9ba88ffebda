/**
 * Playwright runs against Debian's Chromium (never a downloaded browser) with WebGPU enabled;
 * the path and flags live in packages/shared/src/node/chromium.ts. The e2e specs under e2e/
 * come with the user web page; this config is what they run under.
 */
import { defineConfig } from '@playwright/test';
import { CHROMIUM_ARGS, CHROMIUM_PATH } from './packages/shared/src/node/chromium';

export default defineConfig({
  testDir: 'e2e',
  outputDir: 'test-results/e2e',
  timeout: 300_000,
  workers: 1,
  reporter: [['list']],
  use: {
    headless: true,
    screenshot: 'on',
    launchOptions: { executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS },
  },
});
