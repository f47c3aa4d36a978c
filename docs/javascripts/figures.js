// A figure wider than its box (it keeps the width at which its text reads at 10 px, figures.py) scrolls
// sideways; the class ann-figure-scrolls draws the cue (annotate.css). Checked again when the window is resized.
(function () {
  "use strict";

  function mark() {
    var boxes = document.querySelectorAll(".ann-figure > a");
    for (var i = 0; i < boxes.length; i++) {
      var box = boxes[i];
      box.parentElement.classList.toggle("ann-figure-scrolls", box.scrollWidth > box.clientWidth + 1);
    }
  }

  function markWhenLoaded() {
    mark();
    var images = document.querySelectorAll(".ann-figure img");
    for (var i = 0; i < images.length; i++) {
      if (!images[i].complete) images[i].addEventListener("load", mark);
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", markWhenLoaded);
  else markWhenLoaded();
  var resizing = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizing);
    resizing = setTimeout(mark, 150);
  });
  // Material's instant navigation replaces the page without a new load
  if (window.document$ && window.document$.subscribe) window.document$.subscribe(markWhenLoaded);
})();
