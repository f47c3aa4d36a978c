// # The live parts of a page
//
// Loaded on every page (a few kB). It exposes the testing contract `window.neox` (`neox.js`) and mounts each
// widget the docs hook placed (`<div class="neox-live" data-widget="generate">`) with its module, `generate.js`,
// `tokenize.js`, `attention.js` or `memory.js`. The widgets download nothing large until the reader asks.
import * as neox from "./neox.js";

window.neox = neox.contract;

for (const element of document.querySelectorAll(".neox-live[data-widget]")) {
  import(`./${element.dataset.widget}.js`)
    .then(widget => widget.mount(element, neox))
    .catch(error => { element.querySelector(".neox-live-note").textContent = `This widget failed: ${error}`; });
}
