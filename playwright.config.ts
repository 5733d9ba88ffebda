/**
 * Playwright runs against Debian's Chromium (never a downloaded browser) with WebGPU enabled.
 * Flags from the shared webgpu.md: background networking off (this machine's network is
 * closed), SwiftShader's WebGPU adapter through --enable-unsafe-webgpu. The e2e specs under
 * e2e/ come with the user web page; this config is what they run under.
 */
import { defineConfig } from '@playwright/test';

export const CHROMIUM_PATH = process.env.SPLITLLM_CHROMIUM ?? '/usr/bin/chromium';

export const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
  '--disable-dev-shm-usage',
  '--enable-unsafe-webgpu',
];

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
