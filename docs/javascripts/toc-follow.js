// The outline in the sidebar highlights the section being read. Material marks a heading active only once it
// has reached the top of the window, so while a section fills the screen under its heading the outline still
// names the one before. Here the active entry is the last heading above the top third of the window. Material
// sets its own choice on every scroll; a MutationObserver puts ours back after it (setting the same classes
// again changes nothing, so the observer settles).
(function () {
  var links = [];

  function outline() {
    links = [].slice.call(document.querySelectorAll(".md-sidebar--primary .md-nav--secondary a.md-nav__link"))
      .filter(function (a) { return (a.getAttribute("href") || "").charAt(0) === "#"; });
  }

  function reading() {
    var line = window.innerHeight / 3, chosen = null;
    for (var i = 0; i < links.length; i++) {
      var target = document.getElementById(decodeURIComponent(links[i].hash.slice(1)));
      if (!target) continue;
      if (target.getBoundingClientRect().top <= line) chosen = links[i];
      else break;
    }
    return chosen;
  }

  function apply() {
    var chosen = reading();
    for (var i = 0; i < links.length; i++) {
      var active = links[i] === chosen;
      if (links[i].classList.contains("md-nav__link--active") !== active) {
        links[i].classList.toggle("md-nav__link--active", active);
      }
    }
  }

  var scheduled = false;
  function soon() {
    if (scheduled) return;
    scheduled = true;
    Promise.resolve().then(function () { scheduled = false; apply(); });
  }

  function start() {
    outline();
    if (!links.length) return;
    var observer = new MutationObserver(soon);
    links.forEach(function (a) { observer.observe(a, { attributes: true, attributeFilter: ["class"] }); });
    window.addEventListener("scroll", soon, { passive: true });
    apply();
  }

  if (typeof document$ !== "undefined") document$.subscribe(start);
  else document.addEventListener("DOMContentLoaded", start);
})();
