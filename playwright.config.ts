/**
 * Playwright runs against Debian's Chromium (never a downloaded browser) with WebGPU enabled;
 * the path and flags live in packages/lora-kernels/src/chromium.ts. The specs under e2e/ start
 * their own servers (e2e/system.ts) and need the built page (apps/user-web/dist): `npm test`
 * builds it first. Screenshots and logs stay in test-results/e2e/ as artifacts; the JSON
 * report is what the test command counts.
 */
import { defineConfig } from '@playwright/test';
import { CHROMIUM_ARGS, CHROMIUM_PATH } from './packages/lora-kernels/src/chromium';

export default defineConfig({
  testDir: 'e2e',
  outputDir: 'test-results/e2e',
  timeout: 300_000,
  expect: { timeout: 15_000 },
  workers: 1,
  retries: 0,
  reporter: [['list'], ['json', { outputFile: 'test-results/e2e-report.json' }]],
  use: {
    headless: true,
    screenshot: 'only-on-failure',
    launchOptions: { executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS },
  },
});
