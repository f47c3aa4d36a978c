// # Attention, live: the reader's sentence, any layer and head
//
// Beside `Attention.forward` (`model.py`), under the static figure of the same maps on a line of Macbeth.
// `neox.js` gives $\operatorname{softmax}(QK^\top/\sqrt{D} + M)$ of every layer and head; this draws one head as
// a heat map, a row per query, a column per key it may see, with a colour bar. The map is SVG, so it scales to
// the column and reads at any width.
import { h, field, loadButton } from "./ui.js";

const SENTENCE = "Tomorrow, and tomorrow, and tomorrow, creeps in this petty pace";
const SVG = "http://www.w3.org/2000/svg";

// Colours from light (0) to dark (1), near matplotlib's `magma_r` that the static figure uses
const STOPS = [[252, 253, 191], [254, 159, 109], [222, 73, 104], [140, 41, 129], [59, 15, 112], [0, 0, 4]];
function colour(x) {
  const at = Math.max(0, Math.min(1, x)) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(at));
  const f = at - i;
  const c = STOPS[i].map((v, j) => Math.round(v + f * (STOPS[i + 1][j] - v)));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

// The colour bar, 0 to 1, under the map (in HTML, so that it stays in view when the map scrolls)
function colourBar() {
  const stops = Array.from({ length: 11 }, (_, i) => `${colour(i / 10)} ${i * 10}%`).join(", ");
  return h("div", { class: "neox-colourbar", "aria-hidden": "true" }, h("span", {}, "0"),
           h("span", { class: "neox-colourbar-scale", style: `background: linear-gradient(to right, ${stops})` }),
           h("span", {}, "1"), h("span", { class: "neox-caption" }, "attention weight"));
}

function s(tag, attributes = {}, text = null) {
  const element = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attributes)) element.setAttribute(k, v);
  if (text !== null) element.textContent = text;
  return element;
}

// One head's map `[query][key]` with the tokens' texts along both axes
function heatMap(map, tokens) {
  const n = tokens.length;
  const cell = 18;
  const label = 8 + 6.5 * Math.min(14, Math.max(...tokens.map(t => t.length)));
  const width = label + n * cell + 4;
  const height = label + n * cell + 4;
  const svg = s("svg", { viewBox: `0 0 ${width} ${height}`, class: "neox-heatmap", role: "img",
                         "aria-label": "Attention weights: rows are queries, columns are keys" });
  const clip = t => (t.length > 14 ? `${t.slice(0, 13)}…` : t);
  tokens.forEach((t, i) => {
    svg.append(s("text", { x: label - 4, y: label + i * cell + cell * 0.7, "text-anchor": "end", class: "neox-axis" },
                 clip(t)));
    svg.append(s("text", { x: 0, y: 0, class: "neox-axis", "text-anchor": "start",
                           transform: `translate(${label + i * cell + cell * 0.7},${label - 4}) rotate(-90)` },
                 clip(t)));
  });
  map.forEach((row, q) => row.forEach((p, k) => {
    if (k > q) return;
    const rect = s("rect", { x: label + k * cell, y: label + q * cell, width: cell - 1, height: cell - 1,
                             fill: colour(p) });
    rect.append(s("title", {}, `${tokens[q]} → ${tokens[k]}: ${p.toFixed(3)}`));
    svg.append(rect);
  }));
  // At least three quarters of its natural size: on a phone the map scrolls sideways in its box rather than
  // shrinking its labels past reading
  svg.style.minWidth = `${Math.round(0.75 * width)}px`;
  svg.style.maxWidth = `${Math.round(1.2 * width)}px`;
  return svg;
}

export function mount(element, neox) {
  const input = h("input", { type: "text", class: "neox-sentence", value: SENTENCE, "aria-label": "Sentence",
                             spellcheck: "false" });
  const layer = h("select", { "aria-label": "Layer" });
  const head = h("select", { "aria-label": "Head" });
  const picture = h("div", { class: "neox-heatmap-box" });
  const bar = colourBar();
  bar.hidden = true;
  const note = h("p", { class: "neox-caption" });
  const controls = h("div", { class: "neox-controls" }, field("Layer", layer), field("Head", head));
  let model = null;
  let computed = { text: null, maps: null, tokens: null };

  async function show() {
    if (!model) return;
    const text = input.value;
    if (computed.text !== text) {
      const ids = model.encode(text).slice(0, 48);
      if (ids.length === 0) {
        picture.replaceChildren();
        note.textContent = "Type a sentence.";
        return;
      }
      const shown = id => model.decode([id]).replaceAll(" ", "␣").replaceAll("\n", "↵");
      computed = { text, maps: await model.attention(ids), tokens: ids.map(shown) };
      if (input.value !== text) return;
    }
    const l = Number(layer.value);
    const hd = Number(head.value);
    picture.replaceChildren(heatMap(computed.maps[l][hd], computed.tokens));
    bar.hidden = false;
    note.textContent = `Layer ${l}, head ${hd}: each row is a token (a query) and how it spreads its attention ` +
      "over itself and the tokens before it (the keys); each row adds up to 1." +
      (computed.tokens.length >= 48 ? " (The first 48 tokens.)" : "");
  }

  let pending = null;
  input.addEventListener("input", () => { clearTimeout(pending); pending = setTimeout(show, 150); });
  layer.addEventListener("change", show);
  head.addEventListener("change", show);
  element.replaceChildren(h("div", { class: "neox-widget neox-attention" },
    h("p", { class: "neox-title" }, "Try it: the demo model's attention on your sentence"),
    input, controls,
    loadButton(neox, loaded => {
      model = loaded;
      layer.replaceChildren(...[...Array(model.n_layers).keys()].map(i => h("option", { value: i }, String(i))));
      head.replaceChildren(...[...Array(model.n_heads).keys()].map(i => h("option", { value: i }, String(i))));
      show().catch(error => { note.textContent = String(error.message || error); });
    }),
    picture, bar, note));
}
