// Building the page: elements from plain calls, numbers as people read them, and images that
// are fetched with the key and shown as blob: URLs (an <img src> cannot send a bearer header).
//
// Nothing here writes HTML from strings: text is always set as text, so names and labels that
// come from the API can never become markup, and no inline style is ever written (the page's
// Content-Security-Policy forbids it).

import { api } from "./api.js";

// h("button", {class: "primary", onclick: go}, "Sign in"): an element with attributes,
// event handlers (on…) and children (strings become text; null and false are skipped).
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) {
      element.addEventListener(name.slice(2), value);
    } else if (name === "class") {
      element.className = value;
    } else if (name in element && typeof value !== "string") {
      element[name] = value; // properties such as value, checked, disabled, multiple
    } else {
      element.setAttribute(name, value === true ? "" : value);
    }
  }
  append(element, children);
  return element;
}

export function append(parent, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

export function replace(parent, ...children) {
  parent.replaceChildren();
  return append(parent, children);
}

// A table with a header row; rows are arrays of cells (text or elements). Wrapped so that a
// wide table scrolls sideways on a phone instead of widening the page.
export function table(header, rows, { caption, empty = "Nothing yet.", kind } = {}) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { class: kind ? `${kind}-table` : null },
      caption ? h("caption", {}, caption) : null,
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          header.map((name) => h("th", { scope: "col" }, name)),
        ),
      ),
      h(
        "tbody",
        {},
        rows.map((row) =>
          row instanceof Node
            ? row
            : h(
                "tr",
                {},
                row.map((cell) => h("td", {}, cell)),
              ),
        ),
      ),
    ),
  );
}

export function badge(text, kind = text) {
  return h("span", { class: `badge badge-${kind}` }, text);
}

export const NONE = "—";

export function number(value, digits = 3) {
  return value === null || value === undefined ? NONE : Number(value).toFixed(digits);
}

export function percent(value, digits = 1) {
  return value === null || value === undefined ? NONE : `${(value * 100).toFixed(digits)} %`;
}

export function bytes(count) {
  if (count === null || count === undefined) return NONE;
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = count;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

// A Unix time (seconds) or ISO string as local date and time, to the second.
export function when(value, dateStyle = "medium") {
  if (value === null || value === undefined || value === "") return NONE;
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return date.toLocaleString(undefined, { dateStyle, timeStyle: "medium" });
}

export function seconds(value) {
  if (value === null || value === undefined) return NONE;
  if (value < 90) return `${Math.round(value)} s`;
  if (value < 5400) return `${Math.round(value / 60)} min`;
  return `${(value / 3600).toFixed(1)} h`;
}

// Object URLs made for the current view; the router revokes them when the view changes.
const objectUrls = new Set();

export function objectUrl(blob) {
  const url = URL.createObjectURL(blob);
  objectUrls.add(url);
  return url;
}

export function revokeObjectUrls() {
  for (const url of objectUrls) URL.revokeObjectURL(url);
  objectUrls.clear();
}

// An <img> of an API file (plot, heatmap), fetched with the key; `data-state` says "loaded"
// once it shows, or the figure says why it could not be fetched.
export function apiImage(path, alt, { query, signal, caption } = {}) {
  const image = h("img", { alt, "data-state": "loading", decoding: "async" });
  const figure = h(
    "figure",
    { class: "plot" },
    image,
    caption ? h("figcaption", {}, caption) : null,
  );
  image.addEventListener("load", () => image.setAttribute("data-state", "loaded"));
  api
    .blob(path, query, signal)
    .then((blob) => {
      image.src = objectUrl(blob);
    })
    .catch((error) => {
      if (error.name === "AbortError") return;
      image.setAttribute("data-state", "failed");
      figure.append(h("p", { class: "error" }, `${alt}: ${error.message}`));
    });
  return figure;
}

// Fetch an API file with the key and hand it to the browser as a download.
export async function download(path, query, fileName) {
  const blob = await api.blob(path, query);
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: fileName, class: "hidden" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

// A labelled form control: the label names it (and only it: its accessible name is the field's
// name), a hint below is tied to it with aria-describedby.
let fieldCount = 0;
export function field(text, control, hint) {
  fieldCount += 1;
  control.id ||= `field-${fieldCount}`;
  const hintElement = hint ? h("small", { class: "hint", id: `${control.id}-hint` }, hint) : null;
  if (hintElement) control.setAttribute("aria-describedby", hintElement.id);
  return h(
    "div",
    { class: "field" },
    h("label", { class: "field-name", for: control.id }, text),
    control,
    hintElement,
  );
}

// A checkbox with its label to the right, and a hint as for field().
export function checkbox(text, control, hint) {
  fieldCount += 1;
  control.id ||= `field-${fieldCount}`;
  const hintElement = hint ? h("small", { class: "hint", id: `${control.id}-hint` }, hint) : null;
  if (hintElement) control.setAttribute("aria-describedby", hintElement.id);
  return h(
    "div",
    { class: "field" },
    h("span", { class: "check" }, control, h("label", { for: control.id }, text)),
    hintElement,
  );
}

export function link(href, ...children) {
  return h("a", { href }, ...children);
}

// The hash route of a view, with query parameters (empty ones left out).
export function route(path, query = {}) {
  const parameters = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== "") parameters.set(name, value);
  }
  const text = parameters.toString();
  return `#/${path}${text ? `?${text}` : ""}`;
}
