// Calls to the imgq API with the key the user signed in with.
//
// The key is kept in this tab's sessionStorage (gone when the tab closes) and sent only as
// `Authorization: Bearer <key>`: never in a URL, never in a cookie. Every error answer of the
// API is one envelope, {"error": {"code", "message", "details"}}; it becomes an ApiError whose
// message is the envelope's, so every view can show what the server said.

const KEY_SLOT = "imgq.console.key";

// The API's root: the page is /console beside the API's routes (under any mount prefix).
export const apiRoot = new URL(".", document.baseURI);

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

export function currentKey() {
  return sessionStorage.getItem(KEY_SLOT);
}

export function rememberKey(key) {
  sessionStorage.setItem(KEY_SLOT, key);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY_SLOT);
}

// The URL of an API path ("models/pets") with query parameters (null and "" are left out).
export function apiUrl(path, query = {}) {
  const url = new URL(path.replace(/^\//, ""), apiRoot);
  for (const [name, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== "") {
      url.searchParams.set(name, String(value));
    }
  }
  return url;
}

// A path segment as the API's routes expect it (names may hold characters URLs reserve).
export function segment(text) {
  return encodeURIComponent(String(text));
}

function headers(extra = {}) {
  const key = currentKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : { ...extra };
}

// The envelope of a failed answer as an ApiError; a 401 also tells the page to sign in again.
async function failure(response) {
  let error = null;
  try {
    error = (await response.json()).error;
  } catch {
    error = null; // not JSON: a proxy's page, say
  }
  if (response.status === 401) {
    window.dispatchEvent(new CustomEvent("imgq:unauthorized"));
  }
  return new ApiError(
    response.status,
    error?.code ?? "http_error",
    error?.message ?? `The server answered ${response.status} ${response.statusText}.`,
    error?.details,
  );
}

async function send(method, path, { query, json, form, signal, wait } = {}) {
  const init = { method, headers: headers(), signal, cache: "no-store" };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form; // the browser writes the multipart boundary
  }
  if (wait) {
    init.headers.Prefer = `wait=${wait}`;
  }
  let response;
  try {
    response = await fetch(apiUrl(path, query), init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, "unreachable", `The API did not answer (${error.message}).`);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

// A JSON answer (null for 204).
async function sendJson(method, path, options) {
  const response = await send(method, path, options);
  return response.status === 204 ? null : response.json();
}

export const api = {
  get: (path, query, signal) => sendJson("GET", path, { query, signal }),
  post: (path, json, options = {}) => sendJson("POST", path, { json, ...options }),
  postForm: (path, form, options = {}) => sendJson("POST", path, { form, ...options }),
  delete: (path, query) => sendJson("DELETE", path, { query }),
  // A file (plot, heatmap, export) as a Blob, fetched with the key.
  blob: async (path, query, signal) => (await send("GET", path, { query, signal })).blob(),
};

// The OpenAPI document (it needs no key): the fine-tune form's defaults and limits and the
// export formats are read from it, so the page never disagrees with the server.
let openapi = null;
export async function openapiDocument() {
  if (openapi === null) {
    const response = await fetch(apiUrl("openapi.json"), { cache: "no-store" });
    if (!response.ok) throw await failure(response);
    openapi = await response.json();
  }
  return openapi;
}

export async function schemaOf(name) {
  return (await openapiDocument()).components?.schemas?.[name] ?? { properties: {} };
}

// A multipart POST with upload progress (fetch cannot report it): resolves to the JSON answer.
export function uploadForm(path, form, onProgress, signal) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", apiUrl(path));
    for (const [name, value] of Object.entries(headers())) request.setRequestHeader(name, value);
    request.responseType = "json";
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    });
    request.addEventListener("load", () => {
      if (request.status >= 200 && request.status < 300) {
        resolve(request.response);
        return;
      }
      const error = request.response?.error;
      if (request.status === 401) window.dispatchEvent(new CustomEvent("imgq:unauthorized"));
      reject(
        new ApiError(
          request.status,
          error?.code ?? "http_error",
          error?.message ?? `The server answered ${request.status}.`,
          error?.details,
        ),
      );
    });
    request.addEventListener("error", () =>
      reject(new ApiError(0, "unreachable", "The upload could not reach the API.")),
    );
    request.addEventListener("abort", () =>
      reject(new DOMException("The upload was abandoned.", "AbortError")),
    );
    signal?.addEventListener("abort", () => request.abort());
    request.send(form);
  });
}

export const TERMINAL = new Set(["succeeded", "failed", "canceled"]);

// Follow a job until it ends: long polls (`?wait=`) so results arrive as soon as they exist,
// calling onUpdate with each document; `wait` short for jobs whose progress is shown.
export async function followJob(jobId, { onUpdate, signal, wait = 25 } = {}) {
  for (;;) {
    const job = await api.get(`jobs/${segment(jobId)}`, { wait }, signal);
    onUpdate?.(job);
    if (TERMINAL.has(job.status)) return job;
  }
}
