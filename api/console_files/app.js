// The console's shell: signing in and out, the navigation, and one view at a time chosen by
// the URL's fragment (#/jobs, #/models/pets?v=2), so views can be bookmarked and the back
// button works. A view gets an AbortSignal that fires when another view replaces it, which
// stops its long polls and fetches; an error a view throws is shown as the API's message.

import { api, currentKey, forgetKey, rememberKey } from "./api.js";
import { h, replace, revokeObjectUrls } from "./dom.js";
import { clearMessage, notify, session, showError } from "./notices.js";
import { renderClassify } from "./classify.js";
import { renderDataset, renderDatasets } from "./datasets.js";
import { renderFinetune } from "./finetune.js";
import { renderJob, renderJobs } from "./jobs.js";
import { renderModel, renderModels } from "./models.js";

const ROUTES = [
  [/^classify$/, renderClassify, "classify"],
  [/^jobs$/, renderJobs, "jobs"],
  [/^jobs\/([^/]+)$/, renderJob, "jobs"],
  [/^models$/, renderModels, "models"],
  [/^models\/([^/]+)$/, renderModel, "models"],
  [/^finetune$/, renderFinetune, "finetune"],
  [/^datasets$/, renderDatasets, "datasets"],
  [/^datasets\/([^/]+)$/, renderDataset, "datasets"],
];

const main = document.getElementById("view");
const signInView = document.getElementById("sign-in");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const signOutButton = document.getElementById("sign-out");

let viewController = null;

function parseRoute() {
  const raw = decodeURIComponent(location.hash.replace(/^#\/?/, ""));
  const [path, query = ""] = raw.split("?");
  return { path: path || "classify", query: new URLSearchParams(query) };
}

async function showView() {
  viewController?.abort();
  revokeObjectUrls();
  clearMessage(); // a message is about the view it came from
  viewController = new AbortController();
  const { signal } = viewController;
  const { path, query } = parseRoute();
  const found = ROUTES.map(([pattern, render, section]) => [
    path.match(pattern),
    render,
    section,
  ]).find(([match]) => match);
  for (const item of nav.querySelectorAll("a")) {
    item.toggleAttribute("aria-current", found?.[2] === item.dataset.section);
  }
  if (!found) {
    replace(
      main,
      h("h1", {}, "No such page"),
      h("p", {}, h("a", { href: "#/classify" }, "Classify")),
    );
    return;
  }
  const [match, render] = found;
  const container = h("section", { class: "view", "aria-busy": "true" });
  replace(main, container);
  try {
    await render(container, { params: match.slice(1), query, signal });
  } catch (error) {
    if (error?.name === "AbortError" || signal.aborted) return;
    showError(error);
    if (!container.childElementCount) {
      container.append(h("p", { class: "error" }, error.message ?? String(error)));
    }
  } finally {
    container.removeAttribute("aria-busy");
  }
}

function showSignedIn() {
  document.body.classList.add("signed-in");
  signInView.hidden = true;
  nav.hidden = false;
  signOutButton.hidden = false;
  replace(who, `Signed in as ${session.client} (${session.role})`);
  who.hidden = false;
  showView();
}

function showSignedOut(text) {
  viewController?.abort();
  revokeObjectUrls();
  document.body.classList.remove("signed-in");
  session.client = session.role = null;
  replace(main);
  nav.hidden = true;
  signOutButton.hidden = true;
  who.hidden = true;
  signInView.hidden = false;
  if (text) notify(text, "error");
  document.getElementById("api-key").focus();
}

async function signIn(key) {
  rememberKey(key);
  try {
    Object.assign(session, await api.get("whoami"));
  } catch (error) {
    forgetKey();
    throw error;
  }
  clearMessage();
  showSignedIn();
}

function signOut() {
  forgetKey();
  showSignedOut();
  notify("Signed out: the key is forgotten.");
}

document.getElementById("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("api-key");
  const key = input.value.trim();
  if (!key) {
    notify("Paste an API key first.", "error");
    return;
  }
  try {
    await signIn(key);
    input.value = "";
  } catch (error) {
    showError(error);
  }
});

signOutButton.addEventListener("click", signOut);
window.addEventListener("hashchange", () => {
  if (currentKey()) showView();
});
window.addEventListener("imgq:unauthorized", () => {
  if (!currentKey()) return;
  forgetKey();
  showSignedOut("The API refused the key (revoked?): sign in again.");
});
window.addEventListener("unhandledrejection", (event) => {
  if (event.reason?.name === "AbortError") {
    event.preventDefault(); // a view that was left stopped its fetches: not an error
    return;
  }
  showError(event.reason); // and the browser still logs it, for whoever debugs the page
});

if (currentKey()) {
  signIn(currentKey()).catch((error) => {
    showSignedOut();
    showError(error);
  });
} else {
  showSignedOut();
}
