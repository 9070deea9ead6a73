// Refreshes the page's live part in place, unless the reader is typing in
// it or has opened a detail.
(function () {
  "use strict";
  var every = parseInt(document.body.dataset.refresh, 10) || 2000;
  var live = document.getElementById("live");
  if (!live) return;
  function busy() {
    var a = document.activeElement;
    return (a && a !== document.body && live.contains(a) && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA")) ||
      live.querySelector("details[open]") !== null;
  }
  function refresh() {
    if (document.hidden || busy() || document.querySelector("form[method=post] button#confirm")) return;
    fetch(location.href, { headers: { "X-Console-Partial": "1" }, credentials: "same-origin" })
      .then(function (r) { if (r.ok && !r.redirected) return r.text(); throw new Error(r.status); })
      .then(function (html) { live.innerHTML = html; document.body.dataset.updated = String(Date.now()); })
      .catch(function () {});
  }
  setInterval(refresh, every);
})();
