// Jobs: the caller's jobs newest first (GET /jobs, filtered by type and status, a page at a
// time with the API's cursors, refreshed while any of them runs), and one job's page: its
// document, progress, result, webhook attempts, "Redeliver" and "Cancel".

import { TERMINAL, api, openapiDocument, segment } from "./api.js";
import { notify, showError } from "./notices.js";
import {
  badge,
  bytes,
  h,
  link,
  number,
  percent,
  replace,
  route,
  seconds,
  table,
  when,
} from "./dom.js";

const REFRESH_MS = 2000;
const WEBHOOK_LOOKS = 15;
const FALLBACK_TYPES = ["predict", "finetune", "export", "ingest"];
const FALLBACK_STATUSES = ["queued", "running", "succeeded", "failed", "canceled"];

// The values a /jobs query parameter takes, as the OpenAPI document lists them.
async function queryChoices(name, fallback) {
  try {
    const parameters = (await openapiDocument()).paths?.["/jobs"]?.get?.parameters ?? [];
    return parameters.find((one) => one.name === name)?.schema?.enum ?? fallback;
  } catch {
    return fallback;
  }
}

// Cursors of the pages before the one shown, per filter: the API's cursors only go forward.
const earlier = { filters: "", cursors: [] };

function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(new DOMException("left the view", "AbortError"));
    });
  });
}

export function summary(job) {
  if (job.error) return `${job.error.code}: ${job.error.message}`;
  const result = job.result;
  if (!result) {
    const progress = job.progress;
    return progress ? `${progress.phase}, epoch ${progress.epoch}/${progress.total_epochs}` : "";
  }
  if (job.type === "predict") {
    const first = result.predictions?.[0]?.[0];
    const more =
      result.predictions?.length > 1 ? ` (+${result.predictions.length - 1} images)` : "";
    return `${result.model} v${result.version}: ${first ? first.label : "—"}${more}`;
  }
  if (job.type === "finetune") {
    return `${result.model} v${result.version}, accuracy ${number(result.metrics?.accuracy)}`;
  }
  if (job.type === "export") return `${result.format}, ${bytes(result.size_bytes)}`;
  if (job.type === "ingest")
    return `dataset ${result.dataset?.name ?? ""} v${result.version ?? result.dataset?.version ?? ""}`;
  return "";
}

export async function renderJobs(container, { query, signal }) {
  const [types, statuses] = await Promise.all([
    queryChoices("type", FALLBACK_TYPES),
    queryChoices("status", FALLBACK_STATUSES),
  ]);
  const filters = { type: query.get("type") ?? "", status: query.get("status") ?? "" };
  const cursor = query.get("cursor") ?? "";
  const key = JSON.stringify(filters);
  if (earlier.filters !== key || !cursor) {
    earlier.filters = key;
    earlier.cursors = [];
  }
  const select = (name, values) => {
    const control = h(
      "select",
      { name, "aria-label": name === "type" ? "Type" : "Status" },
      h("option", { value: "" }, `any ${name}`),
      values.map((value) => h("option", { value, selected: filters[name] === value }, value)),
    );
    control.addEventListener("change", () => {
      location.hash = route("jobs", { ...filters, [name]: control.value });
    });
    return control;
  };
  const listing = h("div", { class: "listing" });
  replace(
    container,
    h("h1", {}, "Jobs"),
    h("div", { class: "row filters" }, select("type", types), select("status", statuses)),
    listing,
  );
  for (;;) {
    const page = await api.get("jobs", { ...filters, cursor, limit: 20 }, signal);
    drawJobs(listing, page, filters, cursor);
    if (page.jobs.every((job) => TERMINAL.has(job.status))) return;
    await pause(REFRESH_MS, signal); // live status while something runs
  }
}

function drawJobs(listing, page, filters, cursor) {
  const rows = page.jobs.map((job) => [
    h(
      "a",
      { href: route(`jobs/${job.id}`), title: job.id },
      h("code", {}, `${job.id.slice(0, 8)}…`),
    ),
    job.type,
    badge(job.status),
    when(job.created_at, "short"),
    summary(job),
  ]);
  const previous = earlier.cursors.at(-1);
  const pager = h(
    "div",
    { class: "row pager" },
    cursor
      ? h(
          "a",
          {
            href: route("jobs", { ...filters, cursor: previous ?? "" }),
            onclick: () => earlier.cursors.pop(),
          },
          "← Newer",
        )
      : null,
    page.next_cursor
      ? h(
          "a",
          {
            href: route("jobs", { ...filters, cursor: page.next_cursor }),
            onclick: () => earlier.cursors.push(cursor),
          },
          "Older →",
        )
      : null,
  );
  replace(
    listing,
    table(["Job", "Type", "Status", "Created", "Summary"], rows, {
      empty: "No jobs match.",
      kind: "jobs",
    }),
    pager,
  );
}

// A fine-tune's progress: a progressbar with the epoch, loss, accuracy and time left.
export function trainingProgress(progress, status) {
  const total = progress?.total_epochs ?? 1;
  const epoch = progress?.epoch ?? 0;
  const parts = progress
    ? [
        progress.phase === "fine_tune"
          ? "fine-tuning the backbone"
          : progress.phase === "head"
            ? "training the head"
            : (progress.phase ?? "training"),
        `epoch ${epoch}/${total}`,
        progress.loss !== undefined ? `loss ${number(progress.loss)}` : null,
        progress.accuracy !== undefined ? `accuracy ${number(progress.accuracy)}` : null,
        progress.val_accuracy !== undefined
          ? `val. accuracy ${number(progress.val_accuracy)}`
          : null,
        progress.eta_s !== undefined ? `ETA ${seconds(progress.eta_s)}` : null,
      ].filter(Boolean)
    : [status === "queued" ? "queued: waiting for a training worker" : "starting"];
  const text = parts.join(" · ");
  return h(
    "div",
    { class: "progress" },
    h("progress", {
      "aria-label": "Training",
      max: total,
      value: epoch,
      "aria-valuetext": text,
      "data-epoch": String(epoch),
      "data-total": String(total),
    }),
    h("span", { class: "progress-text" }, text),
  );
}

function details(entries) {
  return h(
    "dl",
    { class: "details" },
    entries
      .filter(([, value]) => value !== null && value !== undefined && value !== "")
      .map(([name, value]) => [h("dt", {}, name), h("dd", {}, value)]),
  );
}

function resultSection(job) {
  const result = job.result;
  if (job.error) {
    return h("p", { class: "error" }, `${job.error.message} (${job.error.code})`);
  }
  if (!result) return null;
  if (job.type === "predict") {
    return table(
      ["Image", "Label", "Score"],
      result.predictions.flatMap((top, index) =>
        top.map((prediction, rank) => [
          rank === 0 ? String(index + 1) : "",
          prediction.label,
          percent(prediction.score),
        ]),
      ),
      { caption: `${result.model} v${result.version}` },
    );
  }
  if (job.type === "finetune") {
    const version = route(`models/${result.model}`, { owner: result.owner, v: result.version });
    return details([
      ["Version", link(version, `${result.model} v${result.version}`)],
      ["Accuracy", number(result.metrics?.accuracy)],
      ["Activated", `${result.activated ? "yes" : "no"}: ${result.activation_reason ?? ""}`],
      [
        "Dataset",
        result.dataset
          ? `${result.dataset.name} v${result.dataset.version} (${result.dataset.images} images)`
          : null,
      ],
    ]);
  }
  if (job.type === "export") {
    return details([
      ["Format", result.format],
      ["Size", bytes(result.size_bytes)],
      ["Agreement", number(result.agreement)],
      ["Accuracy", `${number(result.accuracy)} (Keras ${number(result.keras_accuracy)})`],
      ["Within margin", result.within_margin ? "yes" : "no"],
    ]);
  }
  return null;
}

function webhookSection(job, redraw) {
  const webhook = job.webhook;
  if (!webhook) return null;
  const redeliver = h("button", { type: "button" }, "Redeliver");
  redeliver.disabled = !TERMINAL.has(job.status);
  redeliver.addEventListener("click", async () => {
    redeliver.disabled = true;
    try {
      await api.post(`jobs/${segment(job.id)}/webhook/redeliver`);
      notify("The webhook is scheduled again.");
      await redraw();
    } catch (error) {
      showError(error);
    } finally {
      redeliver.disabled = false;
    }
  });
  return h(
    "section",
    {},
    h("h2", {}, "Webhook"),
    details([
      ["URL", webhook.url],
      ["State", badge(webhook.state)],
      ["Event id", webhook.event_id],
      ["Next attempt", webhook.next_attempt_at ? when(webhook.next_attempt_at) : null],
      ["Disabled", webhook.disabled_reason],
    ]),
    table(
      ["When", "Answer", "Retry-After", "Duration"],
      (webhook.attempts ?? []).map((attempt) => [
        when(attempt.at),
        attempt.status_code !== undefined ? `HTTP ${attempt.status_code}` : (attempt.error ?? ""),
        attempt.retry_after_s !== undefined ? seconds(attempt.retry_after_s) : "",
        attempt.duration_ms !== undefined ? `${attempt.duration_ms} ms` : "",
      ]),
      { empty: "No attempt yet." },
    ),
    redeliver,
  );
}

export async function renderJob(container, { params: [jobId], signal }) {
  let job = await api.get(`jobs/${segment(jobId)}`, {}, signal);
  const redraw = async () => {
    for (let looks = 0; looks < WEBHOOK_LOOKS; looks += 1) {
      job = await api.get(`jobs/${segment(jobId)}`, {}, signal);
      draw();
      if (job.webhook?.state !== "pending") return;
      await pause(REFRESH_MS, signal);
    }
  };
  const cancel = async () => {
    try {
      job = await api.delete(`jobs/${segment(jobId)}`);
      notify(job.status === "canceled" ? "Canceled." : "Asked the job to stop; it ends soon.");
      draw();
    } catch (error) {
      showError(error);
    }
  };
  const draw = () =>
    replace(
      container,
      h("h1", {}, "Job ", h("code", { class: "job-id" }, job.id)),
      details([
        ["Type", job.type],
        ["Status", badge(job.status)],
        ["Created", when(job.created_at)],
        ["Started", job.started_at ? when(job.started_at) : null],
        ["Finished", job.finished_at ? when(job.finished_at) : null],
      ]),
      TERMINAL.has(job.status)
        ? null
        : h("button", { type: "button", class: "danger", onclick: cancel }, "Cancel"),
      job.type === "finetune" && (job.progress || !TERMINAL.has(job.status))
        ? trainingProgress(job.progress, job.status)
        : null,
      resultSection(job),
      webhookSection(job, redraw),
      h(
        "details",
        { class: "document", open: true },
        h("summary", {}, "Job document (JSON)"),
        h("pre", {}, JSON.stringify(job, null, 2)),
      ),
    );
  draw();
  while (!TERMINAL.has(job.status)) {
    job = await api.get(
      `jobs/${segment(jobId)}`,
      { wait: job.type === "finetune" ? 2 : 20 },
      signal,
    );
    draw();
  }
  // A delivery about to be attempted (just ended, or redelivered) is worth watching a moment.
  for (let looks = 0; job.webhook?.state === "pending" && looks < WEBHOOK_LOOKS; looks += 1) {
    await pause(REFRESH_MS, signal);
    job = await api.get(`jobs/${segment(jobId)}`, {}, signal);
    draw();
  }
}
