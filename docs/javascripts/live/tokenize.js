// # The tokenizer, live: the reader's text as BPE tokens and their ids
//
// Beside `tokenizer.py`. It loads only the demo's tokenizer (`tokenizer.json`, 260 kB, the same file
// `load_tokenizer` reads), the first time the reader presses the button or types.
import { h } from "./ui.js";

const TEXT = "Tomorrow, and tomorrow, and tomorrow: héllo wörld 🙂";

export function mount(element, neox) {
  const input = h("textarea", { class: "neox-prompt", rows: 2, spellcheck: "false", "aria-label": "Text to tokenize" },
                  TEXT);
  const tokens = h("div", { class: "neox-tokens", "aria-live": "polite" });
  const summary = h("p", { class: "neox-caption" });
  const button = h("button", { class: "md-button neox-load", type: "button" }, "Tokenize (loads 260 kB)");
  let tokenizer = null;

  async function show() {
    if (!tokenizer) {
      button.disabled = true;
      summary.textContent = "Loading the tokenizer…";
      try {
        tokenizer = await neox.loadTokenizer();
      } catch (error) {
        button.disabled = false;
        summary.textContent = `Could not load the tokenizer: ${error.message || error}`;
        return;
      }
      button.remove();
    }
    const { ids, tokens: pieces } = tokenizer.encode(input.value);
    tokens.replaceChildren(...ids.map((id, i) => {
      // The token's text; a token that holds part of a character shows its bytes as the BPE writes them
      const text = tokenizer.decode([id]);
      const shown = text.includes("\uFFFD") ? pieces[i] : JSON.stringify(text).slice(1, -1);
      return h("span", { class: `neox-chip neox-chip-${i % 4}`, title: `token ${i}: id ${id}` },
               h("code", {}, shown.replaceAll(" ", "␣")), h("small", {}, String(id)));
    }));
    summary.textContent = `${input.value.length} characters, ${ids.length} tokens ` +
      "(␣ is a space; Ġ and Ã… are the BPE's names for the bytes of a character split over tokens)";
  }
  button.addEventListener("click", show);
  input.addEventListener("input", show);
  element.replaceChildren(h("div", { class: "neox-widget neox-tokenize" },
    h("p", { class: "neox-title" }, "Try it: the demo's tokenizer, in your browser"),
    input, button, tokens, summary));
}
