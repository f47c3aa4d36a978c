// # The demo model, live in the reader's browser
//
// This module owns the live model: where its files sit, the ONNX Runtime session, the tokenizer, and the
// generation loop. It mirrors `labml_nn/neox/generation.py`: the same sampling order (temperature, then top-k,
// then top-p, then a draw), the same names (`temperature`, `top_k`, `top_p`, `max_new_tokens`; temperature 0 is
// greedy), and the same stop at the end-of-text token (id 0). The widgets (`generate.js`, `tokenize.js`,
// `attention.js`) ask this module for what they show; none of them knows a file's address.
//
// Nothing is downloaded when a page opens. `loadTokenizer()` (the tokenizer, 260 kB) and `loadModel()` (the
// runtime's WASM, 14.8 MB, and the exported demo) run when the reader presses a widget's button, or when a script
// calls `window.neox` (the testing contract, at the end of this file).
//
// The exported demo (`live/demo/`: `config.json`, `tokenizer.json`, `onnx/model.onnx`) is written by the docs
// hook `docs/hooks/live.py` at build time; ONNX Runtime's files are vendored in `docs/assets/onnxruntime-web/`
// (`scripts/vendor_js.py`). Both are found relative to this file, so the site works under any path.

const ASSETS = new URL("../../assets/", import.meta.url);
const MODEL = new URL("../../live/demo/", import.meta.url);
export const EOS_TOKEN_ID = 0;

// ## Loading, once per page
//
// Each loader keeps its promise, so two widgets that ask at once share one download. `onProgress(bytes, total)`
// reports the model's download, for the button's label.
let tokenizerPromise = null;
let modelPromise = null;
let attentionPromise = null;
const listeners = new Set();

export function onModelReady(callback) {
  listeners.add(callback);
}

export function isModelLoaded() {
  return modelPromise !== null;
}

async function fetchJson(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status} ${response.statusText}`);
  return response.json();
}

// `fetch` with progress; resolves to the bytes
async function fetchBytes(url, onProgress) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status} ${response.statusText}`);
  const total = Number(response.headers.get("Content-Length")) || 0;
  if (!response.body || !onProgress) return new Uint8Array(await response.arrayBuffer());
  const chunks = [];
  let received = 0;
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    onProgress(received, total);
  }
  const bytes = new Uint8Array(received);
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.length;
  }
  return bytes;
}

export function loadTokenizer() {
  tokenizerPromise ??= (async () => {
    const { Tokenizer } = await import(new URL("tokenizers/tokenizers.min.mjs", ASSETS).href);
    // `tokenizer_config.json` holds nothing the demo needs (`{}`), as transformers.js also accepts
    const json = await fetchJson(new URL("tokenizer.json", MODEL));
    return new Tokenizer(json, {});
  })();
  tokenizerPromise.catch(() => { tokenizerPromise = null; });
  return tokenizerPromise;
}

async function ortRuntime() {
  const ort = await import(new URL("onnxruntime-web/ort.wasm.min.mjs", ASSETS).href);
  ort.env.wasm.wasmPaths = new URL("onnxruntime-web/", ASSETS).href;
  // One thread: without cross-origin isolation (COOP/COEP headers, which `mkdocs serve` does not send) the
  // runtime cannot start more, and on two cores one thread was faster anyway
  ort.env.wasm.numThreads = 1;
  return ort;
}

async function session(ort, bytes) {
  return ort.InferenceSession.create(await bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
}

// The runtime, the tokenizer, the config and the graph are fetched at once; the session starts when all are here
export function loadModel(onProgress) {
  modelPromise ??= (async () => {
    const graph = fetchBytes(new URL("onnx/model.onnx", MODEL), onProgress);
    const [ort, tokenizer, config] = await Promise.all([ortRuntime(), loadTokenizer(),
                                                        fetchJson(new URL("config.json", MODEL))]);
    const main = await session(ort, graph);
    const model = new LiveModel(ort, main, tokenizer, config);
    for (const callback of listeners) callback(model);
    return model;
  })();
  modelPromise.catch(() => { modelPromise = null; });
  return modelPromise;
}

// ## One forward pass, with the key-value cache as inputs and outputs
//
// The exported graph takes `input_ids` `[B, T]`, `attention_mask` `[B, P + T]`, `position_ids` `[B, T]` and, for
// each layer `N`, `past_key_values.N.key` / `.value` `[B, H, P, D]` (the `P` tokens already seen; `P = 0` in the
// first step); it returns `logits` `[B, T, V]` and `present.N.key` / `.value` `[B, H, P + T, D]`, which are
// the next step's past. `B` is 1 here. The cache is the runtime's tensors, passed back without a copy.
class LiveModel {
  constructor(ort, session, tokenizer, config) {
    this.ort = ort;
    this.session = session;
    this.tokenizer = tokenizer;
    this.config = config;
    this.n_layers = config.num_hidden_layers;
    this.n_heads = config.num_attention_heads;
    this.d_head = config.hidden_size / config.num_attention_heads;
    this.n_ctx = config.max_position_embeddings;
    this.hasAttentions = session.outputNames.includes("attentions.0");
    this.queue = Promise.resolve();
  }

  // One run at a time: a session does not take a second run while one is going (the reader may move a slider
  // while text is generating), so runs wait in line
  run(session, feeds, names) {
    const result = this.queue.then(() => session.run(feeds, names));
    this.queue = result.catch(() => {});
    return result;
  }

  encode(text) {
    return this.tokenizer.encode(text).ids;
  }

  decode(ids) {
    return this.tokenizer.decode(ids);
  }

  emptyCache() {
    const cache = {};
    for (let i = 0; i < this.n_layers; i++) {
      for (const kv of ["key", "value"]) {
        cache[`past_key_values.${i}.${kv}`] =
          new this.ort.Tensor("float32", new Float32Array(0), [1, this.n_heads, 0, this.d_head]);
      }
    }
    return cache;
  }

  feeds(ids, past, cache) {
    const int64 = values => BigInt64Array.from(values, v => BigInt(v));
    const t = ids.length;
    return {
      input_ids: new this.ort.Tensor("int64", int64(ids), [1, t]),
      attention_mask: new this.ort.Tensor("int64", int64(new Array(past + t).fill(1)), [1, past + t]),
      position_ids: new this.ort.Tensor("int64", int64(ids.map((_, i) => past + i)), [1, t]),
      ...cache,
    };
  }

  // Runs `ids` after `past` cached tokens; returns the last position's logits `[V]` and the new cache
  async step(ids, past, cache) {
    const wanted = ["logits"];
    for (let i = 0; i < this.n_layers; i++) wanted.push(`present.${i}.key`, `present.${i}.value`);
    const out = await this.run(this.session, this.feeds(ids, past, cache), wanted);
    const logits = out.logits;
    const v = logits.dims[2];
    const last = logits.data.slice((ids.length - 1) * v, ids.length * v);
    const next = {};
    for (let i = 0; i < this.n_layers; i++) {
      next[`past_key_values.${i}.key`] = out[`present.${i}.key`];
      next[`past_key_values.${i}.value`] = out[`present.${i}.value`];
    }
    return { logits: last, cache: next };
  }

  // ## The generation loop, one token at a time (`generate_stream`)
  //
  // The first step runs the whole prompt; each later step runs only the token just chosen. Yields each new id;
  // stops after `max_new_tokens`, at the end of the model's context, or after the end-of-text token.
  async *generateStream(promptIds, { max_new_tokens = 50, temperature = 0, top_k = null, top_p = null,
                                     seed = null } = {}) {
    checkSamplingArgs(max_new_tokens, temperature, top_k, top_p);
    if (promptIds.length === 0) throw new Error("the prompt is empty: type some text");
    if (promptIds.length > this.n_ctx) promptIds = promptIds.slice(-this.n_ctx);
    const steps = Math.min(max_new_tokens, this.n_ctx - promptIds.length);
    const random = seed === null ? Math.random : seededRandom(seed);
    let cache = this.emptyCache();
    let ids = promptIds;
    let past = 0;
    for (let step = 0; step < steps; step++) {
      const out = await this.step(ids, past, cache);
      past += ids.length;
      cache = out.cache;
      const next = sampleNext(out.logits, { temperature, top_k, top_p }, random);
      yield next;
      if (next === EOS_TOKEN_ID) return;
      ids = [next];
    }
  }

  // The logits `[V]` for the token after `promptIds`, from one pass without a cache
  async nextLogits(promptIds) {
    return (await this.step(promptIds.slice(-this.n_ctx), 0, this.emptyCache())).logits;
  }

  // ## Attention probabilities, for the attention widget
  //
  // $\operatorname{softmax}(QK^\top/\sqrt{D} + M)$ of every layer and head, `attentions.N` `[B, H, T, P + T]`,
  // from the same graph when it has these outputs, otherwise from the export's second graph
  // (`onnx/model_attentions.onnx`), loaded the first time it is asked for. Returns `[layer][head][query][key]`.
  async attention(ids) {
    let session = this.session;
    if (!this.hasAttentions) {
      attentionPromise ??= session(this.ort, fetchBytes(new URL("onnx/model_attentions.onnx", MODEL)));
      session = await attentionPromise;
    }
    ids = ids.slice(-this.n_ctx);
    const names = [...Array(this.n_layers).keys()].map(i => `attentions.${i}`);
    const out = await this.run(session, this.feeds(ids, 0, this.emptyCache()), names);
    const t = ids.length;
    return names.map(name => {
      const data = out[name].data;
      return [...Array(this.n_heads).keys()].map(h =>
        [...Array(t).keys()].map(q => Array.from(data.subarray((h * t + q) * t, (h * t + q + 1) * t))));
    });
  }
}

// ## Choosing the next token (`sample_next`)
//
// `nextTokenDistribution` is the distribution `sampleNext` draws from, as `next_token_distribution` is in
// `generation.py`: the largest logit subtracted and the rest divided by the temperature, in fp32; every logit
// below the `top_k`-th largest removed; then, in order of probability, every token removed once the tokens before
// it add up to at least `top_p` (the most likely token always stays); a softmax. A temperature below the
// smallest fp32 number (0 included) is greedy: all the probability on the largest logit.
const FP32_TINY = 1.1754943508222875e-38;

export function nextTokenDistribution(logits, { temperature = 1, top_k = null, top_p = null } = {}) {
  const n = logits.length;
  const probs = new Float64Array(n);
  if (!(temperature >= FP32_TINY)) {
    probs[argmax(logits)] = 1;
    return probs;
  }
  const max = logits[argmax(logits)];
  const z = Float64Array.from(logits, x => Math.fround(Math.fround(x - max) / temperature));
  if (top_k !== null && top_k > 0 && top_k < n) {
    const kth = Float64Array.from(z).sort()[n - top_k];
    for (let i = 0; i < n; i++) if (z[i] < kth) z[i] = -Infinity;
  }
  if (top_p !== null && top_p < 1) {
    const order = [...z.keys()].sort((a, b) => z[b] - z[a]);
    const sorted = softmax(order.map(i => z[i]));
    let before = 0;
    for (let r = 0; r < n; r++) {
      if (r > 0 && before >= top_p) z[order[r]] = -Infinity;
      before += sorted[r];
    }
  }
  return softmax(z);
}

export function sampleNext(logits, options, random = Math.random) {
  if (!(options.temperature >= FP32_TINY)) return argmax(logits);
  const probs = nextTokenDistribution(logits, options);
  let u = random();
  for (let i = 0; i < probs.length; i++) {
    u -= probs[i];
    if (u < 0) return i;
  }
  return argmax(probs);
}

// The `k` most likely entries of a distribution, `[{id, p}]`, most likely first
export function topEntries(probs, k = 10) {
  return [...probs.keys()].sort((a, b) => probs[b] - probs[a]).slice(0, k).map(id => ({ id, p: probs[id] }));
}

function argmax(values) {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

function softmax(values) {
  let max = -Infinity;
  for (const v of values) if (v > max) max = v;
  const out = Float64Array.from(values, v => Math.exp(v - max));
  const sum = out.reduce((a, b) => a + b, 0);
  return out.map(v => v / sum);
}

// A small seeded generator (mulberry32), so that a `seed` repeats a sample in this browser. It is not PyTorch's
// generator: the same seed draws different tokens here and in `generation.py`.
function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// The checks of `check_sampling_args`, with the same messages
export function checkSamplingArgs(max_new_tokens, temperature, top_k, top_p) {
  if (!Number.isInteger(max_new_tokens) || max_new_tokens < 1)
    throw new Error(`max_new_tokens=${max_new_tokens} must be at least 1`);
  if (!Number.isFinite(temperature) || temperature < 0)
    throw new Error(`temperature=${temperature} must be 0 (greedy) or positive`);
  if (top_k !== null && (!Number.isInteger(top_k) || top_k < 1))
    throw new Error(`top_k=${top_k} must be at least 1 (or null for no top-k filter)`);
  if (top_p !== null && !(top_p > 0 && top_p <= 1))
    throw new Error(`top_p=${top_p} must be in (0, 1] (or null for no nucleus filter)`);
}

// ## The testing contract, `window.neox`
//
// For our tests in headless Chromium and anyone else's: each call loads the model first if needed.
// * `generate(prompt, {max_new_tokens, temperature, top_k, top_p, seed})` $\rightarrow$ `{ids, text}`, the new
//   tokens and their text (temperature 0, the default, is greedy);
// * `nextTokenProbabilities(prompt, {temperature, top_k, top_p, k})` $\rightarrow$ the `k` (10) most likely next
//   tokens of the filtered distribution, `[{id, token, p}]`;
// * `attention(prompt)` $\rightarrow$ `[layer][head][query][key]`.
export const contract = {
  async generate(prompt, options = {}) {
    const model = await loadModel();
    const ids = [];
    for await (const id of model.generateStream(model.encode(prompt), { temperature: 0, ...options })) ids.push(id);
    return { ids, text: model.decode(ids) };
  },
  async nextTokenProbabilities(prompt, { temperature = 1, top_k = null, top_p = null, k = 10 } = {}) {
    const model = await loadModel();
    const probs = nextTokenDistribution(await model.nextLogits(model.encode(prompt)), { temperature, top_k, top_p });
    return topEntries(probs, k).map(({ id, p }) => ({ id, token: model.decode([id]), p }));
  },
  async attention(prompt) {
    const model = await loadModel();
    return model.attention(model.encode(prompt));
  },
};
