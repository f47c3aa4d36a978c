// Small pieces the widgets share: an element builder, and the button that loads the live model.

// `h("button", {class: "x", onclick: f}, "text", child)` makes an element
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key === "class") element.className = value;
    else element.setAttribute(key, value === true ? "" : value);
  }
  element.append(...children.flat().filter(c => c !== null && c !== undefined));
  return element;
}

// A labelled control: `field("Temperature", input, output)`
export function field(label, ...controls) {
  return h("label", { class: "neox-field" }, h("span", { class: "neox-field-label" }, label), ...controls);
}

const MB = 1e6;

// The button that downloads the live model; `ready(model)` runs once it is loaded (also when another widget on
// the page loaded it first)
export function loadButton(neox, ready, what = "the live model") {
  const status = h("span", { class: "neox-status", role: "status" });
  const button = h("button", { class: "md-button neox-load", type: "button" },
                   `Run ${what} in this browser (about 15 MB)`);
  const row = h("div", { class: "neox-load-row" }, button, status);
  let done = false;
  const finish = model => {
    if (done) return;
    done = true;
    row.remove();
    ready(model);
  };
  neox.onModelReady(finish);
  button.addEventListener("click", async () => {
    button.disabled = true;
    status.textContent = "Loading the runtime…";
    try {
      const model = await neox.loadModel((bytes, total) => {
        status.textContent = `Downloading the model: ${(bytes / MB).toFixed(1)}` +
          (total ? ` of ${(total / MB).toFixed(1)} MB` : " MB");
      });
      finish(model);
    } catch (error) {
      button.disabled = false;
      status.textContent = `Could not load the model: ${error.message || error}`;
    }
  });
  return row;
}
