// relay dashboard: the only script. Progressive: every page works without it.
// Copy buttons: <button data-copy="ID" hidden> copies the text of the element with that id.
// Live template preview: [data-live-preview] renders the editor's fields as typed.
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
