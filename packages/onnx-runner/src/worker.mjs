// The worker thread behind SegmentRunner (runner.ts). Plain JavaScript so that it starts in any
// Node process without a TypeScript loader. It owns onnxruntime-node sessions: `session.run()`
// blocks the thread it runs on, so running it here keeps the server's event loop free.
//
// Weight sets: frozen weights that graphs take as inputs (segment graphs built with
// `weights: 'inputs'`), held once here and fed to every session loaded with the set. The binding
// wraps a CPU tensor's typed array without copying it, so no session holds a copy of its own.
//
// Messages in:  { id, op: 'init', provider, threads, memoryPattern, prepackWeights, cpuArena }
//               { id, op: 'weights', set, tensors: [{ name, data (Float32Array, transferred), dims }] }
//               { id, op: 'load', name, model (Uint8Array, transferred), weights? (a set) }
//               { id, op: 'run', name, feeds: { [input]: { type, data, dims } }, fetch? (output names) }
//               { id, op: 'unload', name }   { id, op: 'dropWeights', set }   { id, op: 'memory' }
// Messages out: { id, ok: true, result } | { id, ok: false, error: { code, message } }
import { parentPort } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';

const sessions = new Map();
/** weight set name -> Map(input name -> ort.Tensor) */
const weightSets = new Map();
/** session name -> { set, names: input names the set feeds } */
const boundWeights = new Map();
let requested = 'cpu';
let provider = 'cpu';
let threads = 0;
let memoryPattern = false;
let prepackWeights = true;
let cpuArena = true;
let fallbackNote;

function sessionOptions(ep) {
  return {
    executionProviders: [ep],
    graphOptimizationLevel: 'all',
    // 0 lets onnxruntime pick (one per core); inter-op stays 1 because segment graphs are chains.
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    // off by default: with it, the edge's peak grew ~170 MiB from the second run on (runner.ts)
    enableMemPattern: memoryPattern,
    // onnxruntime's BFC arena for intermediates (on by default in onnxruntime; see runner.ts)
    enableCpuMemArena: cpuArena,
    // the node binding reads `extra` as session config entries; only set when asked, so the default
    // sessions are exactly what they were
    ...(prepackWeights ? {} : { extra: { session: { disable_prepacking: '1' } } }),
  };
}

async function createSession(model) {
  if (provider !== 'cpu') {
    try {
      return await ort.InferenceSession.create(model, sessionOptions(provider));
    } catch (e) {
      // No silent fallback: the runner reports it, and the caller logs it.
      const why = String(e.message ?? e).split('\n')[0];
      fallbackNote = `execution provider '${provider}' could not start (${why}); using 'cpu'`;
      provider = 'cpu';
    }
  }
  return ort.InferenceSession.create(model, sessionOptions('cpu'));
}

const handlers = {
  init(msg) {
    requested = msg.provider;
    provider = msg.provider;
    threads = msg.threads;
    memoryPattern = msg.memoryPattern;
    prepackWeights = msg.prepackWeights;
    cpuArena = msg.cpuArena;
    return { backends: ort.listSupportedBackends().map((b) => b.name) };
  },
  weights(msg) {
    const set = weightSets.get(msg.set) ?? new Map();
    weightSets.set(msg.set, set);
    for (const t of msg.tensors) set.set(t.name, new ort.Tensor('float32', t.data, t.dims));
    return { tensors: set.size };
  },
  dropWeights(msg) {
    if (!weightSets.has(msg.set))
      throw Object.assign(new Error(`no weight set '${msg.set}'`), { code: 'ONNX_UNKNOWN_WEIGHTS' });
    const users = [...boundWeights].filter(([, b]) => b.set === msg.set).map(([name]) => name);
    if (users.length)
      throw Object.assign(new Error(`weight set '${msg.set}' is still used by graphs ${users.join(', ')}`), {
        code: 'ONNX_WEIGHTS_IN_USE',
      });
    weightSets.delete(msg.set);
    return {};
  },
  async load(msg) {
    const set = msg.weights === undefined ? undefined : weightSets.get(msg.weights);
    if (msg.weights !== undefined && !set)
      throw Object.assign(new Error(`loading graph '${msg.name}': no weight set '${msg.weights}'`), {
        code: 'ONNX_UNKNOWN_WEIGHTS',
      });
    const before = provider;
    let session;
    try {
      session = await createSession(msg.model);
    } catch (e) {
      throw Object.assign(new Error(`loading graph '${msg.name}': ${e.message}`), { code: 'ONNX_LOAD_FAILED' });
    }
    const old = sessions.get(msg.name);
    if (old) await old.release();
    sessions.set(msg.name, session);
    const fed = set ? session.inputNames.filter((n) => set.has(n)) : [];
    if (set) boundWeights.set(msg.name, { set: msg.weights, names: fed });
    else boundWeights.delete(msg.name);
    return {
      // the inputs the caller feeds: the weight set's are fed here
      inputs: session.inputNames.filter((n) => !fed.includes(n)),
      outputs: session.outputNames,
      requested,
      provider,
      fellBack: before !== provider ? fallbackNote : undefined,
    };
  },
  async run(msg) {
    const session = sessions.get(msg.name);
    if (!session)
      throw Object.assign(new Error(`no graph named '${msg.name}' is loaded`), { code: 'ONNX_UNKNOWN_GRAPH' });
    const feeds = {};
    for (const [k, t] of Object.entries(msg.feeds)) feeds[k] = new ort.Tensor(t.type, t.data, t.dims);
    const bound = boundWeights.get(msg.name);
    if (bound) {
      const set = weightSets.get(bound.set);
      for (const n of bound.names) feeds[n] = set.get(n);
    }
    let out;
    try {
      // only the outputs asked for are copied out (onnxruntime runs every node either way)
      out = msg.fetch ? await session.run(feeds, msg.fetch) : await session.run(feeds);
    } catch (e) {
      throw Object.assign(new Error(`running graph '${msg.name}': ${e.message}`), { code: 'ONNX_RUN_FAILED' });
    }
    const result = {};
    const transfer = [];
    for (const [k, t] of Object.entries(out)) {
      result[k] = { type: t.type, data: t.data, dims: t.dims };
      if (!transfer.includes(t.data.buffer)) transfer.push(t.data.buffer);
    }
    return { result, transfer };
  },
  async unload(msg) {
    const s = sessions.get(msg.name);
    sessions.delete(msg.name);
    boundWeights.delete(msg.name);
    if (s) await s.release();
    return {};
  },
  memory() {
    return process.memoryUsage();
  },
};

parentPort.on('message', async (msg) => {
  try {
    const r = await handlers[msg.op](msg);
    if (r?.transfer) parentPort.postMessage({ id: msg.id, ok: true, result: r.result }, r.transfer);
    else parentPort.postMessage({ id: msg.id, ok: true, result: r });
  } catch (e) {
    parentPort.postMessage({
      id: msg.id,
      ok: false,
      error: { code: e.code ?? 'ONNX_RUNNER_ERROR', message: e.message },
    });
  }
});
