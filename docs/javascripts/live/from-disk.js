// Opened from disk (file://), a browser loads no ES module and no WASM, so the live widgets cannot start
// (`main.js` never runs). This classic script says so, in one line, in each widget's place.
(function () {
  if (location.protocol !== "file:") return;
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".neox-live .neox-live-note").forEach(function (note) {
      note.innerHTML = "Opened from disk, the browser will not run this page’s live parts: serve the site with " +
        "<code>mkdocs serve</code>, or <code>python -m http.server</code> in <code>site/</code>, and open it " +
        "from <code>http://localhost</code>.";
      note.classList.add("neox-live-from-disk");
    });
  });
})();
