// The dashboard's only script: an execution page reloads itself every 2 s while the execution
// runs (not while a form field has the focus), so its counts and status stay current.
(function () {
  "use strict";
  var status = document.querySelector(".status[data-live]");
  if (!status || status.getAttribute("data-live") !== "true") {
    return;
  }
  window.setInterval(function () {
    var active = document.activeElement;
    if (active && active.closest && active.closest("form")) {
      return;
    }
    // Drop `?done=...` so the notice of the last action is not shown again.
    window.location.replace(window.location.pathname);
  }, 2000);
})();
