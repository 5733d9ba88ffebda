/**
 * Debian's Chromium, the browser of every headless run (never a downloaded one), and its flags:
 * background networking off (the machines' network is closed), and WebGPU on, which gives
 * SwiftShader's adapter where there is no GPU (see the shared webgpu.md).
 */
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
