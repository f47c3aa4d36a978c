// # Memory calculator: what a model needs, and which GPUs hold it
//
// Beside `NeoXModel` (`model.py`) and `fits` (`memory.py`). The numbers are `memory.py`'s: the docs hook writes
// `live/memory.json` at build time with each published model's weight bytes and the cache and activation bytes
// of one token (`kv_cache_bytes` and `activation_bytes` are that times `batch * tokens`), and the GPUs; this
// multiplies and adds, as `inference_bytes` and `fits` do. It downloads 2 kB and needs no model.
import { h, field } from "./ui.js";

const TABLE = new URL("../../live/memory.json", import.meta.url);
const MAX_GPUS = 8;

// The sizes of `model` in `dtype` for `batch` sequences of `tokens` tokens, in bytes (`inference_bytes`)
export function sizes(table, model, dtype, batch, tokens) {
  const m = table.models[model];
  const weights = m.weights[dtype];
  const kv = batch * tokens * m.kv_cache_per_token[dtype];
  const activations = batch * tokens * m.activations_per_token[dtype];
  return { weights, kv, activations, total: weights + kv + activations };
}

// The fewest cards of a kind that hold `total` (`fits` with `n_gpus`), or null above `MAX_GPUS`
export function gpusNeeded(total, memory) {
  for (let n = 1; n <= MAX_GPUS; n++) if (total <= memory * n) return n;
  return null;
}

const gb = (bytes, GB) => `${(bytes / GB).toFixed(bytes < 10 * GB ? 2 : 1)} GB`;

export async function mount(element) {
  const response = await fetch(TABLE);
  if (!response.ok) throw new Error(`${TABLE}: ${response.status}`);
  const table = await response.json();
  const names = Object.keys(table.models);
  const model = h("select", { "aria-label": "Model" },
                  names.map(n => h("option", { value: n, selected: n === "gpt-neox-20b" }, n)));
  const dtype = h("select", { "aria-label": "Number format" },
                  table.dtypes.map(d => h("option", { value: d, selected: d === "fp16" }, d)));
  const batch = h("input", { type: "number", min: 1, max: 1024, step: 1, value: 1, inputmode: "numeric" });
  const tokens = h("input", { type: "number", min: 1, max: 1000000, step: 1, value: 2048, inputmode: "numeric" });
  const result = h("div", { class: "neox-memory-result", "aria-live": "polite" });
  const note = h("p", { class: "neox-caption" });

  function show() {
    const GB = table.GB;
    const b = Math.max(1, Math.round(Number(batch.value)) || 1);
    const t = Math.max(1, Math.round(Number(tokens.value)) || 1);
    const m = table.models[model.value];
    const s = sizes(table, model.value, dtype.value, b, t);
    const row = (label, bytes, what) => h("tr", { "data-part": what },
      h("td", {}, label), h("td", { class: "neox-num", "data-bytes": String(bytes) }, gb(bytes, GB)),
      h("td", { class: "neox-num" }, `${((100 * bytes) / s.total).toFixed(0)}%`));
    const parts = h("table", { class: "neox-memory-parts" },
      h("thead", {}, h("tr", {}, h("th", {}, "part"), h("th", { class: "neox-num" }, "memory"),
                         h("th", { class: "neox-num" }, "share"))),
      h("tbody", {}, row("weights", s.weights, "weights"), row("key-value cache", s.kv, "kv"),
        row("activations", s.activations, "activations"), row("total", s.total, "total")));
    const gpus = h("table", { class: "neox-memory-gpus" },
      h("thead", {}, h("tr", {}, h("th", {}, "GPU"), h("th", { class: "neox-num" }, "cards needed"))),
      h("tbody", {}, Object.entries(table.gpus).map(([name, memory]) => {
        const n = gpusNeeded(s.total, memory);
        return h("tr", { "data-gpu": name, "data-needed": n === null ? "" : String(n) },
          h("td", {}, name),
          h("td", { class: `neox-num ${n === 1 ? "neox-fits" : n === null ? "neox-fits-no" : ""}` },
            n === null ? `more than ${MAX_GPUS}` : n === 1 ? "1, fits" : String(n)));
      })));
    result.replaceChildren(parts, gpus);
    note.textContent = `${model.value}: ${(m.parameters / 1e9).toFixed(m.parameters < 1e9 ? 3 : 2)} billion ` +
      "parameters. Activations: the peak of one forward pass over the context. GB is 10⁹ bytes. int8 is " +
      "LLM.int8: int8 weights, fp16 cache and activations. Layers split evenly over several cards (the loader's " +
      "devices=); the CUDA context and allocator slack are not counted.";
  }
  for (const control of [model, dtype, batch, tokens]) control.addEventListener("input", show);
  element.replaceChildren(h("div", { class: "neox-widget neox-memory" },
    h("p", { class: "neox-title" }, "Memory calculator: what a GPT-NeoX model needs to generate"),
    h("div", { class: "neox-controls" }, field("Model", model), field("Numbers", dtype), field("Batch", batch),
      field("Context (tokens)", tokens)),
    result, note));
  show();
}
