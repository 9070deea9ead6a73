// Refreshes the page's live part in place, one request at a time, unless
// the reader is typing in it, has opened a detail, or is confirming.
(function () {
  "use strict";
  var every = parseInt(document.body.dataset.refresh, 10) || 2000;
  var live = document.getElementById("live");
  if (!live) return;
  function busy() {
    var a = document.activeElement;
    return (a && a !== document.body && live.contains(a) && (a.tagName === "INPUT" || a.tagName === "SELECT" || a.tagName === "TEXTAREA")) ||
      live.querySelector("details[open]") !== null || document.getElementById("confirm") !== null;
  }
  function next() { setTimeout(refresh, every); }
  function refresh() {
    if (document.hidden || busy()) { next(); return; }
    var ctl = new AbortController();
    var timer = setTimeout(function () { ctl.abort(); }, Math.max(every * 5, 10000));
    fetch(location.href, { headers: { "X-Console-Partial": "1" }, credentials: "same-origin", signal: ctl.signal })
      .then(function (r) { if (r.ok && !r.redirected) return r.text(); throw new Error(String(r.status)); })
      .then(function (html) { if (!busy()) { live.innerHTML = html; document.body.dataset.updated = String(Date.now()); } })
      .catch(function () {})
      .then(function () { clearTimeout(timer); next(); });
  }
  next();
})();
