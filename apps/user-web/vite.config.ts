/**
 * Builds the page into dist/ (served by the cloud server at /, see apps/cloud-server/src/web.ts).
 * The training worker is a module worker. onnxruntime-web's wasm-only entry embeds its JS glue
 * and finds its .wasm binary with `new URL(..., import.meta.url)`, which Vite turns into a
 * hashed file under assets/: the page loads nothing from outside its own origin.
 */
import { defineConfig } from 'vite';

export default defineConfig({
  root: import.meta.dirname,
  build: { outDir: 'dist', emptyOutDir: true, target: 'es2022', chunkSizeWarningLimit: 4096 },
  worker: { format: 'es' },
  // the dev server's dependency pre-bundling would move onnxruntime-web away from its .wasm
  optimizeDeps: { exclude: ['onnxruntime-web'] },
});
