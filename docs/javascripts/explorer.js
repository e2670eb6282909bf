// Taxonomy explorer: hide the methods that match none of the ticked values of some facet.
// Plain JavaScript, shipped with the site (no CDN); the rows carry their facets in a
// <span class="fu-facets" data-FACET="value|value"> of their first cell.
(function () {
  function apply(root) {
    var boxes = root.querySelectorAll("input[type=checkbox][data-facet]");
    var chosen = {};
    boxes.forEach(function (box) {
      if (box.checked) {
        (chosen[box.dataset.facet] = chosen[box.dataset.facet] || []).push(box.value);
      }
    });
    var shown = 0, total = 0;
    root.querySelectorAll("span.fu-facets").forEach(function (span) {
      var row = span.closest("tr");
      var keep = Object.keys(chosen).every(function (facet) {
        var values = (span.getAttribute("data-" + facet) || "").split("|");
        return chosen[facet].some(function (v) { return values.indexOf(v) !== -1; });
      });
      row.hidden = !keep;
      total += 1;
      if (keep) { shown += 1; }
    });
    var count = root.querySelector(".fu-explorer-count");
    if (count) { count.textContent = shown + " of " + total + " methods shown"; }
  }
  function setup() {
    document.querySelectorAll(".fu-explorer").forEach(function (root) {
      root.addEventListener("change", function () { apply(root); });
      apply(root);
    });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", setup);
  } else {
    setup();
  }
})();
