// Renders the maths that pymdownx.arithmatex (generic mode) left in the page:
// <span class="arithmatex">\(...\)</span> inline and <div class="arithmatex">\[...\]</div> (or a bare
// \begin{align}...\end{align}) on its own lines. Only these elements are touched, so a `$` in code or prose
// is never taken for maths. KaTeX is vendored in assets/katex/: nothing is fetched from outside.
(function () {
  function strip(tex) {
    tex = tex.trim();
    var pairs = [["\\(", "\\)"], ["\\[", "\\]"], ["$$", "$$"], ["$", "$"]];
    for (var i = 0; i < pairs.length; i++) {
      var open = pairs[i][0], close = pairs[i][1];
      if (tex.length >= open.length + close.length && tex.startsWith(open) && tex.endsWith(close)) {
        return tex.slice(open.length, tex.length - close.length);
      }
    }
    return tex;
  }

  function render(root) {
    if (typeof katex === "undefined") return;
    var nodes = (root || document).querySelectorAll(".arithmatex");
    for (var i = 0; i < nodes.length; i++) {
      var el = nodes[i];
      if (el.dataset.katexDone) continue;
      var display = el.tagName !== "SPAN";
      var tex = strip(el.textContent);
      try {
        katex.render(tex, el, { displayMode: display, throwOnError: false, strict: "ignore" });
        el.dataset.katexDone = "1";
      } catch (e) {
        console.error("KaTeX:", e, tex);
      }
    }
  }

  // A display formula wider than its column is set smaller, down to 70%; if it still does not fit, it scrolls,
  // and the class ann-math-scrolls draws the cue (annotate.css). Run again when the window is resized.
  function fit(root) {
    var nodes = (root || document).querySelectorAll(".katex-display");
    for (var i = 0; i < nodes.length; i++) {
      var el = nodes[i];
      el.style.fontSize = "";
      el.classList.remove("ann-math-scrolls");
      var scale = 1;
      while (el.scrollWidth > el.clientWidth + 1 && scale > 0.7) {
        scale = Math.max(0.7, scale * Math.min(0.95, el.clientWidth / el.scrollWidth));
        el.style.fontSize = scale + "em";
      }
      if (el.scrollWidth > el.clientWidth + 1) el.classList.add("ann-math-scrolls");
    }
  }

  function renderAndFit(root) {
    render(root);
    fit(root);
    if (document.fonts && document.fonts.ready) document.fonts.ready.then(function () { fit(root); });
  }

  var resizing = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(function () { fit(document); }, 100);
  });

  if (typeof document$ !== "undefined") {
    // Material's observable: fires on the first load and after every instant navigation
    document$.subscribe(function () { renderAndFit(document); });
  } else {
    document.addEventListener("DOMContentLoaded", function () { renderAndFit(document); });
  }
})();
