// MathJax 3 configuration, read by the vendored tex-svg.js that is loaded after this file
// (both are listed in mkdocs.yml extra_javascript, at the end of <body>).
//
// Markdown pages: pymdownx.arithmatex (generic mode) wraps math in .arithmatex elements with
// \( \) and \[ \] delimiters; everything else is ignored, so a stray "$" is never taken for math.
// Notebook pages (mkdocs-jupyter, .jupyter-wrapper): markdown cells keep $...$ and $$...$$, so
// the whole page is scanned (code and output blocks are <pre>, which MathJax always skips).
(function () {
  const notebook = document.querySelector(".jupyter-wrapper") !== null;
  window.MathJax = {
    tex: {
      inlineMath: notebook ? [["$", "$"], ["\\(", "\\)"]] : [["\\(", "\\)"]],
      displayMath: notebook ? [["$$", "$$"], ["\\[", "\\]"]] : [["\\[", "\\]"]],
      processEscapes: true,
      processEnvironments: true,
    },
    options: notebook
      ? {}
      : { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex" },
    svg: { fontCache: "global" },
  };
})();
