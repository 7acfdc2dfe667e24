// artnote review: keyboard shortcuts and the alt text's character count. No framework.
(function () {
  "use strict";

  function typing(target) {
    var tag = target && target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (target && target.isContentEditable);
  }

  function follow(id) {
    var link = document.getElementById(id);
    if (link) { window.location.href = link.href; return true; }
    return false;
  }

  function moveFocus(step) {
    var tiles = Array.prototype.slice.call(document.querySelectorAll("#grid .tile a"));
    if (!tiles.length) { return false; }
    var at = tiles.indexOf(document.activeElement);
    var next = at < 0 ? 0 : Math.min(tiles.length - 1, Math.max(0, at + step));
    if (at === next && at === tiles.length - 1 && step > 0) { return follow("next-page"); }
    if (at === 0 && step < 0) { return follow("prev-page"); }
    tiles[next].focus();
    return true;
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) { return; }
    var key = event.key, onGrid = !!document.getElementById("grid"), done = false;
    if (key === "j" || key === "ArrowRight" || (key === "ArrowDown" && onGrid)) {
      done = onGrid ? moveFocus(1) : follow("next");
    } else if (key === "k" || key === "ArrowLeft" || (key === "ArrowUp" && onGrid)) {
      done = onGrid ? moveFocus(-1) : follow("prev");
    } else if (key === "a") {
      var form = document.getElementById("approve-form");
      if (form) { form.requestSubmit ? form.requestSubmit() : form.submit(); done = true; }
    }
    if (done) { event.preventDefault(); }
  });

  var alt = document.getElementById("alt_text"), count = document.getElementById("alt-count");
  if (alt && count) {
    var aim = Number(count.dataset.aim), most = Number(count.dataset.max);
    var update = function () {
      var n = Array.from(alt.value.trim()).length;  // code points, as the server counts
      count.textContent = String(n);
      count.parentNode.classList.toggle("over", n > aim && n <= most);
      count.parentNode.classList.toggle("too-long", n > most);
    };
    alt.addEventListener("input", update);
    update();
  }
})();
