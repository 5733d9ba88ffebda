#!/usr/bin/env node
// The two README commands, `npm start` and `npm test`, land here. Plain JavaScript with Node's
// own modules only, because it runs before anything is installed. It installs what is missing
// (pnpm itself, the workspace's npm packages), then starts the system or runs every test.
// Decisions behind each step: docs/decisions.md.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const PNPM_VERSION = '12.21.0';
// onnxruntime-node's install script downloads CUDA libraries from outside the npm registry;
// better-sqlite3 compiles against the machine's Node headers (its prebuilt download fails here).
const INSTALL_ENV = {
  ...process.env,
  ONNXRUNTIME_NODE_INSTALL: 'skip',
  npm_config_nodedir: process.env.npm_config_nodedir ?? '/usr',
};

function step(message) {
  console.log(`==> ${message}`);
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: ROOT, stdio: 'inherit', env: INSTALL_ENV, ...opts });
  if (r.error) throw new Error(`${cmd} could not start: ${r.error.message}`);
  return r.status ?? 1;
}

function must(cmd, args, what, opts = {}) {
  const code = run(cmd, args, opts);
  if (code !== 0) throw new Error(`${what} failed (${cmd} ${args.join(' ')} exited ${code})`);
}

function pnpmVersion() {
  const r = spawnSync('pnpm', ['--version'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

function ensureNode() {
  const major = Number(process.versions.node.split('.')[0]);
  if (major < 20) throw new Error(`Node ${process.versions.node} is too old: splitllm needs Node 20 or newer`);
}

function ensurePnpm() {
  const v = pnpmVersion();
  if (v && v.split('.')[0] === PNPM_VERSION.split('.')[0]) return;
  step(v ? `pnpm ${v} found, installing pnpm ${PNPM_VERSION}` : `installing pnpm ${PNPM_VERSION} with npm`);
  must('npm', ['install', '--global', `pnpm@${PNPM_VERSION}`], 'installing pnpm');
}

function ensurePackages() {
  const marker = join(ROOT, 'node_modules/.modules.yaml');
  const lock = join(ROOT, 'pnpm-lock.yaml');
  if (existsSync(marker) && statSync(marker).mtimeMs >= statSync(lock).mtimeMs) return;
  step('installing npm packages (pnpm install --frozen-lockfile)');
  must('pnpm', ['install', '--frozen-lockfile'], 'pnpm install');
}

// Debian packages: Chromium (the browser of the end-to-end runs; its chromium-common ships
// SwiftShader, the software Vulkan driver the WGSL kernel tests run on) and the Vulkan loader.
const DEBIAN_PACKAGES = ['chromium', 'libvulkan1'];

function missingDebianPackages() {
  return DEBIAN_PACKAGES.filter((p) => {
    // biome-ignore lint/suspicious/noTemplateCurlyInString: dpkg-query's own format field, not a template
    const r = spawnSync('dpkg-query', ['-W', '-f=${Status}', p], { encoding: 'utf8' });
    return !(r.status === 0 && r.stdout.includes('install ok installed'));
  });
}

function ensureDebianPackages() {
  const missing = missingDebianPackages();
  if (missing.length === 0) return;
  const cmd = `apt-get update && apt-get install -y --no-install-recommends ${missing.join(' ')}`;
  if (process.getuid?.() !== 0) throw new Error(`Debian packages missing: ${missing.join(', ')}; run as root: ${cmd}`);
  step(`installing Debian packages: ${missing.join(', ')}`);
  const env = { ...INSTALL_ENV, DEBIAN_FRONTEND: 'noninteractive' };
  must('apt-get', ['update', '-qq'], 'apt-get update', { env });
  must('apt-get', ['install', '-y', '-qq', '--no-install-recommends', ...missing], 'apt-get install', { env });
}

function ensureAll() {
  ensureNode();
  ensureDebianPackages();
  ensurePnpm();
  ensurePackages();
}

/**
 * Biome's formatter keeps string literals, template literals and comments whole, so it cannot hold
 * them to its width: this check does, over every tracked TypeScript and JavaScript source.
 */
function linesWithin(width) {
  const r = spawnSync('git', ['ls-files', '*.ts', '*.mjs'], { cwd: ROOT, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`git ls-files failed: ${r.stderr}`);
  const over = [];
  for (const file of r.stdout.split('\n').filter(Boolean)) {
    if (!existsSync(join(ROOT, file))) continue;
    readFileSync(join(ROOT, file), 'utf8')
      .split('\n')
      .forEach((line, i) => {
        if (line.length > width) over.push(`${file}:${i + 1} (${line.length} columns)`);
      });
  }
  for (const o of over) console.log(`line over ${width} columns: ${o}`);
  return over.length === 0;
}

/** Packages with tests: every workspace folder that has a vitest.config.ts. */
function testedPackages() {
  const out = [];
  for (const group of ['packages', 'apps']) {
    for (const name of readdirSync(join(ROOT, group)).sort()) {
      if (existsSync(join(ROOT, group, name, 'vitest.config.ts'))) out.push(join(group, name));
    }
  }
  return out;
}

function test() {
  ensureAll();
  step('type check (tsc --noEmit, strict)');
  const tscOk = run('pnpm', ['typecheck']) === 0;
  // Biome: the formatter's layout (120 columns) and the linter's recommended rules, as biome.json sets them
  step('lint and format check (biome ci)');
  const lintOk = run('pnpm', ['exec', 'biome', 'ci', '.']) === 0 && linesWithin(120);
  // no import circles, within a package or across packages (tsconfig.deps.json maps the workspace names)
  step('import circles (madge)');
  const madgeArgs = ['exec', 'madge', '--circular', '--extensions', 'ts', '--ts-config', 'tsconfig.deps.json'];
  const circlesOk = run('pnpm', [...madgeArgs, 'packages', 'apps', 'e2e']) === 0;
  const reports = mkdtempSync(join(tmpdir(), 'splitllm-tests-'));
  let passed = 0;
  let failed = 0;
  let skipped = 0;
  const failedPackages = [];
  for (const pkg of testedPackages()) {
    step(`tests: ${pkg}`);
    const report = join(reports, `${pkg.replace('/', '-')}.json`);
    const code = run(
      'pnpm',
      ['exec', 'vitest', 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`],
      {
        cwd: join(ROOT, pkg),
      },
    );
    if (existsSync(report)) {
      const r = JSON.parse(readFileSync(report, 'utf8'));
      passed += r.numPassedTests;
      failed += r.numFailedTests;
      skipped += r.numPendingTests + r.numTodoTests;
      if (r.numTotalTests === 0) failedPackages.push(`${pkg} (ran no test)`);
    }
    if (code !== 0) failedPackages.push(pkg);
  }
  rmSync(reports, { recursive: true, force: true });
  // end to end: the built page against real servers in headless Chromium (e2e/, playwright.config.ts)
  step('build the user page (vite build)');
  if (run('pnpm', ['--filter', '@splitllm/user-web', 'build']) !== 0) failedPackages.push('user-web build');
  else {
    step('end-to-end tests: e2e/ (Playwright, headless Chromium with WebGPU)');
    const report = join(ROOT, 'test-results/e2e-report.json');
    rmSync(report, { force: true });
    const code = run('pnpm', ['exec', 'playwright', 'test']);
    if (existsSync(report)) {
      const s = JSON.parse(readFileSync(report, 'utf8')).stats;
      passed += s.expected + s.flaky;
      failed += s.unexpected;
      skipped += s.skipped;
      if (s.expected + s.unexpected + s.flaky === 0) failedPackages.push('e2e (ran no test)');
    } else failedPackages.push('e2e (no report)');
    if (code !== 0) failedPackages.push('e2e');
  }
  if (!tscOk) failedPackages.push('typecheck');
  if (!lintOk) failedPackages.push('lint (run: pnpm exec biome check --write .)');
  if (!circlesOk) failedPackages.push('import circles');
  if (skipped > 0) failedPackages.push(`${skipped} skipped test(s): a skipped test is not a passing one`);
  if (failedPackages.length > 0) console.log(`failed: ${[...new Set(failedPackages)].join(', ')}`);
  // the closing line CI reads
  console.log(`${passed} passed, ${failed} failed`);
  return failedPackages.length === 0 && failed === 0 && passed > 0 ? 0 : 1;
}

function start() {
  ensureAll();
  // the page the cloud serves at / (rebuilt every start: a few seconds, and never stale)
  step('building the user page (vite build)');
  must('pnpm', ['--filter', '@splitllm/user-web', 'build'], 'building the user page');
  step('starting the system on the shipped model: a cloud, one edge and a demo user (Ctrl-C stops it)');
  // `splitllm serve` keeps its state in out/serve-state, so a restart resumes at the last round
  return run('pnpm', ['splitllm', 'serve', ...process.argv.slice(3)]);
}

const commands = { start, test };
const name = process.argv[2];
if (!(name in commands)) {
  console.error(`usage: node packages/cli/bootstrap.mjs ${Object.keys(commands).join('|')}`);
  process.exit(2);
}
try {
  process.exitCode = commands[name]();
} catch (e) {
  console.error(`splitllm ${name}: ${e.message}`);
  process.exitCode = 1;
}
