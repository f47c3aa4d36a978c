// Code blocks in prose that are wider than the screen (on a phone; on wider screens they wrap, annotate.css)
// get the class ann-code-scrolls, which fades their right edge as a cue that they scroll; scrolled to the end,
// ann-code-end lifts the fade. Annotated code (.ann-code) wraps at every width and is left alone.
(function () {
  function mark() {
    var blocks = document.querySelectorAll("article pre > code");
    for (var i = 0; i < blocks.length; i++) {
      var code = blocks[i];
      if (code.closest(".ann-code")) continue;
      var scrolls = code.scrollWidth > code.clientWidth + 1;
      code.classList.toggle("ann-code-scrolls", scrolls);
      code.classList.toggle("ann-code-end", scrolls && code.scrollLeft + code.clientWidth >= code.scrollWidth - 1);
      if (scrolls && !code.dataset.cueWatched) {
        code.dataset.cueWatched = "1";
        code.addEventListener("scroll", function (event) {
          var c = event.target;
          c.classList.toggle("ann-code-end", c.scrollLeft + c.clientWidth >= c.scrollWidth - 1);
        }, { passive: true });
      }
    }
  }
  // Material replaces the page's content on instant navigation; document$ tells us when
  if (typeof document$ !== "undefined") document$.subscribe(mark);
  else document.addEventListener("DOMContentLoaded", mark);
  window.addEventListener("resize", mark);
})();
