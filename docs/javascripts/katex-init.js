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

  if (typeof document$ !== "undefined") {
    // Material's observable: fires on the first load and after every instant navigation
    document$.subscribe(function () { render(document); });
  } else {
    document.addEventListener("DOMContentLoaded", function () { render(document); });
  }
})();
