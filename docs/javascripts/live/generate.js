// # Generation, live: a prompt, the continuation streaming in, and the next-token distribution
//
// Beside `sample_next` and `generate_stream` (`generation.py`), and on the home page. The controls are
// `sample_next`'s arguments; under them, the ten most likely next tokens of the distribution it would draw from,
// which moves as the reader moves the temperature, top-k or top-p (the model runs once per prompt; the
// filters run on its logits).
import { h, field, loadButton } from "./ui.js";

const PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks? It is the";

export function mount(element, neox) {
  const prompt = h("textarea", { class: "neox-prompt", rows: 3, spellcheck: "false", "aria-label": "Prompt" },
                   PROMPT);
  const temperature = h("input", { type: "range", min: 0, max: 2, step: 0.05, value: 0.8 });
  const temperatureValue = h("output", {}, "0.80");
  const greedy = h("input", { type: "checkbox" });
  const topK = h("input", { type: "number", min: 0, max: 4096, step: 1, value: 0, inputmode: "numeric" });
  const topP = h("input", { type: "range", min: 0.05, max: 1, step: 0.05, value: 0.95 });
  const topPValue = h("output", {}, "0.95");
  const maxNew = h("input", { type: "number", min: 1, max: 250, step: 1, value: 60, inputmode: "numeric" });
  const run = h("button", { class: "md-button md-button--primary neox-run", type: "button", disabled: true },
                "Generate");
  const prefix = h("span", { class: "neox-output-prompt" });
  const continuation = h("span", { class: "neox-output-new" });
  const output = h("pre", { class: "neox-output", "aria-live": "polite" }, prefix, continuation);
  const speed = h("span", { class: "neox-status" });
  const distribution = h("div", { class: "neox-dist", role: "list" });
  const distributionNote = h("p", { class: "neox-caption" });

  const controls = h("div", { class: "neox-controls" },
    field("Temperature", temperature, temperatureValue),
    field("Greedy", greedy),
    field("Top-k (0: off)", topK),
    field("Top-p", topP, topPValue),
    field("New tokens", maxNew));

  let model = null;
  let running = false;
  const options = () => ({
    temperature: greedy.checked ? 0 : Number(temperature.value),
    top_k: Number(topK.value) > 0 ? Math.round(Number(topK.value)) : null,
    top_p: Number(topP.value) < 1 ? Number(topP.value) : null,
  });

  // The next-token distribution for the prompt as it stands; logits are kept per prompt text
  let logitsFor = { text: null, logits: null };
  let pending = null;
  async function showDistribution() {
    if (!model) return;
    const text = prompt.value;
    if (logitsFor.text !== text) {
      const ids = model.encode(text);
      if (ids.length === 0) {
        distribution.replaceChildren();
        distributionNote.textContent = "Type a prompt to see the next-token distribution.";
        return;
      }
      logitsFor = { text, logits: await model.nextLogits(ids) };
      if (prompt.value !== text) return;
    }
    const o = options();
    const probs = neox.nextTokenDistribution(logitsFor.logits, o);
    const kept = probs.reduce((n, p) => n + (p > 0 ? 1 : 0), 0);
    // The ten most likely tokens by the model's own logits, so that the same rows stay while the reader moves the
    // controls, and each bar shows what the settings leave of that token's probability
    distribution.replaceChildren(...neox.topEntries(logitsFor.logits, 10).map(({ id }) => {
      const p = probs[id];
      const token = model.decode([id]);
      const shown = JSON.stringify(token).slice(1, -1);
      return h("div", { class: p > 0 ? "neox-row" : "neox-row neox-dropped", role: "listitem" },
        h("code", { class: "neox-token", title: `id ${id}` }, shown),
        h("span", { class: "neox-bar" }, h("span", { style: `width:${(100 * p).toFixed(2)}%` })),
        h("span", { class: "neox-p" }, p > 0 ? `${(100 * p).toFixed(1)}%` : "cut"));
    }));
    distributionNote.textContent = o.temperature === 0
      ? "Greedy: the most likely token gets everything."
      : `The next token is drawn from ${kept.toLocaleString()} of the ${probs.length.toLocaleString()} tokens; ` +
        "shown, the ten the model finds most likely (\"cut\": removed by top-k or top-p).";
  }
  const refresh = () => {
    temperatureValue.textContent = Number(temperature.value).toFixed(2);
    topPValue.textContent = Number(topP.value).toFixed(2);
    temperature.disabled = greedy.checked;
    clearTimeout(pending);
    pending = setTimeout(() => showDistribution().catch(e => { distributionNote.textContent = String(e); }), 60);
  };
  for (const control of [temperature, greedy, topK, topP, prompt]) control.addEventListener("input", refresh);

  run.addEventListener("click", async () => {
    if (running) {
      running = false;
      return;
    }
    const o = { ...options(), max_new_tokens: Math.max(1, Math.min(250, Math.round(Number(maxNew.value)) || 1)) };
    const promptIds = model.encode(prompt.value);
    prefix.textContent = prompt.value;
    continuation.textContent = "";
    running = true;
    run.textContent = "Stop";
    const ids = [];
    const start = performance.now();
    try {
      for await (const id of model.generateStream(promptIds, o)) {
        if (!running) break;
        ids.push(id);
        // A token can end in the middle of a character: decode the whole continuation each time
        continuation.textContent = model.decode(ids);
        speed.textContent = `${ids.length} tokens, ${(ids.length / ((performance.now() - start) / 1000)).toFixed(0)}` +
          " tokens/s";
      }
    } catch (error) {
      speed.textContent = String(error.message || error);
    }
    running = false;
    run.textContent = "Generate";
  });

  const live = h("div", { class: "neox-widget neox-generate" },
    h("p", { class: "neox-title" }, "Try it: the demo model (5.3 M parameters, trained on Shakespeare) " +
      "generating in your browser"),
    prompt, controls,
    loadButton(neox, loaded => {
      model = loaded;
      run.disabled = false;
      refresh();
    }),
    h("div", { class: "neox-run-row" }, run, speed),
    output,
    h("p", { class: "neox-subtitle" }, "Next token after the prompt"),
    distribution, distributionNote);
  element.replaceChildren(live);
}
