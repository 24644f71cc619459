// The front page's script: copy buttons, the composer's answer as you type, and a running build followed live.
// Everything it improves works without it: the form submits, the pages render on the server.

/**
 * Copy buttons, shown only where a script can copy. The button keeps its name; what happened is said beside it,
 * in a status that screen readers announce.
 */
function enableCopy(root) {
  for (const button of root.querySelectorAll("button.copy")) {
    button.hidden = false;
    const status = document.createElement("span");
    status.className = "copy-status";
    status.setAttribute("role", "status");
    button.after(status);
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(button.dataset.copy ?? "");
        status.textContent = "Copied";
      } catch {
        status.textContent = "Select the text and copy it";
      }
      setTimeout(() => (status.textContent = ""), 2000);
    });
  }
}
enableCopy(document);

/** The composer: the server renders its answer (/compose); the page asks for it as the fields change. */
const composer = document.getElementById("composer");
const composed = document.getElementById("composed");
if (composer && composed) {
  let timer;
  let asked = 0;
  const update = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const query = new URLSearchParams(new FormData(composer));
      const mine = ++asked;
      const answer = await fetch(`/compose?${query}`, { headers: { Accept: "text/html" } }).catch(() => null);
      if (!answer?.ok || mine !== asked) return;
      composed.innerHTML = await answer.text();
      enableCopy(composed);
      history.replaceState(null, "", `/?${query}`);
    }, 250);
  };
  composer.addEventListener("input", update);
  composer.addEventListener("change", update);
}

/** A build page of a running build: its phase and progress from /api/builds/<key>, every second until it ends. */
const live = document.querySelector("[data-live-build]");
if (live) {
  const key = live.getAttribute("data-live-build");
  const phase = document.querySelector('[data-field="phase"]');
  const summary = document.querySelector('[data-field="summary"]');
  const log = document.querySelector('[data-field="log"]');
  const poll = async () => {
    const answer = await fetch(`/api/builds/${key}`).catch(() => null);
    if (answer?.ok) {
      const build = await answer.json();
      if (phase) {
        phase.textContent = build.phase;
        phase.className = `phase phase-${build.phase}`;
      }
      if (summary) summary.textContent = build.summary;
      if (log && build.progress.log) log.textContent = build.progress.log.join("\n");
      // Finished: the server renders the outcome (the failure and its log, or the image's link).
      if (build.phase === "done" || build.phase === "failed") return location.reload();
    }
    setTimeout(poll, 1000);
  };
  setTimeout(poll, 1000);
}
