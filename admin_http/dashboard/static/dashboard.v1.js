// relay dashboard: the only script. Progressive: every page works without it.
// Copy buttons: <button data-copy="ID" hidden> copies the text of the element with that id.
// Live template preview: [data-live-preview] renders the editor's fields as typed.
// Campaign progress: [data-campaign-progress] polls its progress.json and moves the bar.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    const source = document.getElementById(button.dataset.copy);
    if (!source) continue;
    button.hidden = false;
    button.addEventListener("click", async () => {
      const label = button.textContent;
      try {
        await navigator.clipboard.writeText(source.textContent);
        button.textContent = "Copied";
      } catch {
        // No clipboard (plain HTTP off loopback): select the text for Ctrl+C instead.
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      }
      setTimeout(() => { button.textContent = label; }, 2000);
    });
  }
  for (const box of document.querySelectorAll("[data-live-preview]")) livePreview(box);
  for (const box of document.querySelectorAll("[data-campaign-progress]")) campaignProgress(box);
});

const LIVE_DELAY_MS = 400;
const LIVE_FIELDS = ["subject", "text", "html", "variables"];

// The fields #t-subject, #t-text, #t-html and #t-variables, rendered 400 ms after the last
// change by POST (with the page's CSRF token) to the box's URL, which answers JSON
// {subject, text, html, problems}. Every answer is written as text, never as markup; the HTML
// part goes to the sandboxed iframe through the hidden form (the server sets its policy).
function livePreview(box) {
  const fields = LIVE_FIELDS.map((name) => document.getElementById("t-" + name));
  const frameForm = box.querySelector("form.live-frame-form");
  if (fields.some((field) => !field) || !frameForm) return;
  const state = box.querySelector(".live-state");
  const problems = box.querySelector(".live-problems");
  const output = box.querySelector(".live-output");
  const subject = box.querySelector(".live-subject");
  const text = box.querySelector(".live-text");
  const html = box.querySelector(".live-html");
  let timer = null;
  let inFlight = null;
  let latest = 0;

  const show = (answer, sent) => {
    problems.replaceChildren(...(answer.problems || []).map((problem) => {
      const item = document.createElement("li");
      item.className = "problem";
      item.textContent = problem;
      return item;
    }));
    problems.hidden = problems.children.length === 0;
    output.hidden = !problems.hidden;
    subject.textContent = answer.subject ?? "—";
    text.hidden = answer.text == null;
    text.querySelector("pre").textContent = answer.text ?? "";
    html.hidden = !answer.html;
    if (answer.html) {
      for (const name of LIVE_FIELDS) frameForm.elements[name].value = sent.get(name);
      // A fresh frame each time: its first load replaces its blank page, so the renders
      // add no entries to the tab's history (Back still leaves the page).
      const frame = html.querySelector("iframe");
      frame.replaceWith(frame.cloneNode(false));
      frameForm.submit();
    }
    for (const old of document.querySelectorAll(".static-rendered")) old.hidden = true;
  };

  const render = async () => {
    const mine = ++latest;
    if (inFlight) inFlight.abort();
    inFlight = new AbortController();
    const body = new URLSearchParams();
    body.set(frameForm.elements[0].name, frameForm.elements[0].value); // the CSRF token
    for (const field of fields) body.set(field.name, field.value);
    state.textContent = "Rendering…";
    let answer;
    try {
      const response = await fetch(box.dataset.livePreview, {
        method: "POST", body, signal: inFlight.signal, headers: { Accept: "application/json" },
      });
      answer = await response.json(); // a login or error page is HTML: caught below
    } catch (error) {
      if (error.name === "AbortError") return;
      answer = { problems: ["The preview is unavailable: reload the page (the session may have ended)."] };
    }
    if (mine !== latest) return;
    show(answer, body); // the frame renders what this answer rendered, not newer typing
    state.textContent = "As typed, not saved: rendered at " + new Date().toLocaleTimeString() + ".";
  };

  const later = () => {
    clearTimeout(timer);
    timer = setTimeout(render, LIVE_DELAY_MS);
  };
  for (const field of fields) field.addEventListener("input", later);
  for (const hidden of document.querySelectorAll(".needs-script")) hidden.hidden = false;
  box.hidden = false;
  render();
}

const POLL_MS = 1500;
const RATE_WINDOW_S = 30; // "rate now": messages sent over the polls of the last 30 s
const RATE_MIN_SPAN_S = 3;

// Polls the box's URL (JSON: counts, segments, texts; see admin_http/dashboard/campaigns_view.py)
// every 1.5 s while the tab is visible, and writes what changed: [data-field] texts, the bar's
// segments and its aria values. The rate now comes from consecutive answers (the server's clock,
// its sent count); the average rate and the time left are the server's. A change of status
// reloads the page (its buttons change); a finished campaign stops the polling.
function campaignProgress(box) {
  const state = box.querySelector("[data-live-state]");
  const bar = box.querySelector("[role=progressbar]");
  const samples = [];
  let timer = null;
  let busy = false;
  let stopped = false;
  const format = (n) => Number(n).toLocaleString("en-US").replace(/,/g, "\u202f");
  const set = (name, text) => {
    const element = box.querySelector(`[data-field="${name}"]`);
    if (element && element.textContent !== text) element.textContent = text;
    return element;
  };

  const rateNow = (answer) => {
    samples.push({ at: answer.now, sent: answer.sent });
    while (samples.length > 2 && samples[0].at < answer.now - RATE_WINDOW_S) samples.shift();
    const first = samples[0];
    const span = answer.now - first.at;
    if (answer.status !== "in_progress") return "— (" + answer.status.replace("_", " ") + ")";
    if (span < RATE_MIN_SPAN_S) return "— (measuring)";
    return format(Math.round((answer.sent - first.sent) / span * 60)) + " / min";
  };

  const show = (answer) => {
    for (const name of ["sent", "failed", "skipped", "queued", "total"]) set(name, format(answer[name]));
    set("percent", answer.percent.toFixed(1) + " %");
    for (const name of ["rate_measured_text", "eta_text", "started_at", "finished_at"]) set(name, answer[name]);
    set("rate_now", rateNow(answer));
    const note = set("note", answer.note || "");
    if (note) note.hidden = !answer.note;
    for (const segment of answer.segments) {
      const rect = bar.querySelector(`[data-segment="${segment.kind}"]`);
      rect.setAttribute("x", segment.x);
      rect.setAttribute("width", segment.width);
    }
    bar.setAttribute("aria-valuemax", Math.max(answer.scale, 1));
    bar.setAttribute("aria-valuenow", answer.done);
    bar.setAttribute("aria-valuetext", answer.value_text);
    bar.title = answer.value_text;
  };

  const poll = async () => {
    timer = null;
    busy = true;
    try {
      await pollOnce();
    } finally {
      busy = false;
    }
  };

  const pollOnce = async () => {
    let answer;
    try {
      const response = await fetch(box.dataset.campaignProgress, {
        headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store",
      });
      if (response.status === 401 || response.status === 404) {
        state.textContent = response.status === 401
          ? "Not updating: the session ended. Reload the page to log in."
          : "Not updating: the campaign is gone.";
        stopped = true;
        return;
      }
      answer = await response.json();
    } catch {
      state.textContent = "Not updating: the relay did not answer. Trying again…";
      timer = setTimeout(poll, POLL_MS * 4);
      return;
    }
    if (answer.status !== box.dataset.status) {
      state.textContent = "Status changed: reloading…";
      stopped = true;
      window.location.reload();
      return;
    }
    show(answer);
    if (answer.final) {
      state.textContent = "Finished.";
      stopped = true;
      return;
    }
    state.textContent = "Live: updated " + new Date().toISOString().slice(11, 19) + " UTC.";
    if (!document.hidden) timer = setTimeout(poll, POLL_MS);
  };

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && timer === null && !busy && !stopped) poll();
  });
  stopped = ["completed", "cancelled", "failed"].includes(box.dataset.status);
  if (!stopped) poll();
}
