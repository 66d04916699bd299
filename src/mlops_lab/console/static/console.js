// The lab console's only script: refresh the batch jobs every few seconds (server-rendered, escaped HTML).
(function () {
  "use strict";
  const REFRESH_MS = 3000;
  const target = document.getElementById("jobs");
  if (!target) return;
  let busy = false;
  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const response = await fetch(target.dataset.refresh, { credentials: "same-origin", cache: "no-store" });
      if (response.ok) {
        target.innerHTML = await response.text();
        target.dataset.refreshed = String(Date.now());
      }
    } catch (error) {
      // the console went away (make down): keep what is shown, try again later
    } finally {
      busy = false;
    }
  }
  setInterval(refresh, REFRESH_MS);
  document.addEventListener("visibilitychange", refresh);
})();
