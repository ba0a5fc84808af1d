// What every view shares: who is signed in, and the message line above the view, where
// errors show as the API's own message (the error envelope's `message` and `code`).

import { ApiError } from "./api.js";
import { replace } from "./dom.js";

// Who is signed in ({client, role} from GET /whoami), for the views that offer actions only
// to those the API allows (activating a version: the model's owner or an admin).
export const session = { client: null, role: null };

export function mayManage(owner) {
  return session.role === "admin" || owner === session.client;
}

// Whether a model or dataset of `owner` must be named with owner=: a name alone means the
// caller's own (else a shared model), and only admins may name someone else's.
export function needsOwner(owner) {
  return session.role === "admin" && Boolean(owner) && owner !== session.client;
}

const NOTICE_MS = 6000;

// Show a message above the view: an error (kept until the next one) or a notice (a while).
export function notify(text, kind = "notice") {
  const message = document.getElementById("message");
  message.className = `message message-${kind}`;
  replace(message, text);
  message.hidden = false;
  if (kind === "notice") {
    setTimeout(() => {
      if (message.textContent === text) message.hidden = true;
    }, NOTICE_MS);
  }
}

export function clearMessage() {
  document.getElementById("message").hidden = true;
}

export function showError(error) {
  if (error?.name === "AbortError") return;
  if (error instanceof ApiError) {
    const status = error.status ? `, HTTP ${error.status}` : "";
    notify(`${error.message} (${error.code}${status})`, "error");
  } else {
    notify(`Something went wrong in the page: ${error?.message ?? error}`, "error");
    console.warn(error); // kept for whoever debugs the page
  }
}
