"""The page of :mod:`rewards.label`: its HTML and its one script (served as ``/app.js``).

Model text only ever enters the document through ``textContent``, and the server's Content-Security-Policy
allows no inline script, so a completion holding ``<script>`` or an ``onerror`` attribute is shown as text.
``body[data-state]`` is ``loading``, ``ready``, ``saving`` or ``error`` (the browser test waits on it).
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Which completion is better?</title>
<style>
body { font: 16px/1.45 system-ui, sans-serif; max-width: 70rem; margin: 1.5rem auto; padding: 0 1rem; }
pre { white-space: pre-wrap; word-break: break-word; background: #f4f4f4; padding: .8rem; min-height: 3rem; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; } #status { color: #a40; }
button { font-size: 1rem; padding: .4rem 1rem; } kbd { border: 1px solid #999; padding: 0 .3rem; }
</style></head>
<body data-state="loading">
<h1>Which completion is better?</h1>
<p><strong id="count">0 pairs recorded</strong> in {path}. Keys: <kbd>1</kbd> <kbd>2</kbd> choose,
<kbd>0</kbd> tie, <kbd>s</kbd> skip.</p>
<h2>Prompt</h2><pre id="prompt"></pre>
<div class="pair">
<section><h2>1</h2><pre id="c1"></pre><button data-choice="1">1 is better</button></section>
<section><h2>2</h2><pre id="c2"></pre><button data-choice="2">2 is better</button></section>
</div>
<p><button data-choice="0">Tie (0)</button> <button data-choice="skip">Skip (s)</button></p>
<p id="status" role="status"></p>
<script src="/app.js"></script>
</body></html>
"""

SCRIPT = """"use strict";
// Model text only ever goes into textContent: it is shown, never parsed as HTML.
let current = null;
const $ = (id) => document.getElementById(id);
const KEYS = { "1": "1", "2": "2", "0": "0", "s": "skip" };
function setState(state) {
  document.body.dataset.state = state;
  for (const b of document.querySelectorAll("button")) b.disabled = state !== "ready";
}
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
function showCounts(c) {
  const ties = c.ties ? `, ${plural(c.ties, "tie")}` : "";
  $("count").textContent = `${plural(c.pairs, "pair")} recorded${ties}`;
}
async function call(url, options) {
  const response = await fetch(url, options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}
async function loadPair() {
  setState("loading");
  $("status").textContent = "sampling two completions...";
  try {
    current = await call("/api/pair");
  } catch (error) {
    $("status").textContent = `${error.message} (reload the page to retry)`;
    return setState("error");
  }
  $("prompt").textContent = current.prompt;
  $("c1").textContent = current.completions[0];
  $("c2").textContent = current.completions[1];
  showCounts(current);
  $("status").textContent = "";
  setState("ready");
}
async function choose(choice) {
  if (document.body.dataset.state !== "ready") return;
  setState("saving");
  try {
    showCounts(await call("/api/choice", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ id: current.id, choice }),
    }));
  } catch (error) {
    $("status").textContent = error.message;
  }
  await loadPair();
}
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || !(event.key in KEYS)) return;
  event.preventDefault();
  choose(KEYS[event.key]);
});
for (const button of document.querySelectorAll("button[data-choice]")) {
  button.addEventListener("click", () => choose(button.dataset.choice));
}
loadPair();
"""
