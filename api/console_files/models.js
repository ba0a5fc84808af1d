// Models: the caller's and the shared models (GET /models), and one model's page: its
// versions with their test metrics, the active one marked, "Activate" for those the API
// allows (the owner or an admin), and the chosen version's plots, per-class report, exports
// and monitoring. A version's files come from /models/<name>/versions/<v>/artifacts/<file>:
// versions outlive the jobs that trained them.

import { api, followJob, schemaOf, segment } from "./api.js";
import { mayManage, needsOwner, notify, showError } from "./notices.js";
import {
  apiImage,
  badge,
  bytes,
  download,
  h,
  link,
  number,
  replace,
  route,
  table,
  when,
} from "./dom.js";
import { renderMonitoring } from "./monitoring.js";

const PLOTS = [
  [
    "training_curves.png",
    "Training curves",
    "Loss and accuracy per epoch, training and validation",
  ],
  [
    "confusion_matrix.png",
    "Confusion matrix",
    "True class (rows) against predicted class (columns), test split",
  ],
];

const FALLBACK_FORMATS = ["saved_model", "tflite", "tflite_dynamic", "tflite_int8"];

// owner= only where the name alone would mean another model (an admin reaching a client's).
function ownerQuery(model) {
  return model.needsOwner ? { owner: model.owner } : {};
}

function modelLink(model) {
  return route(`models/${model.name}`, { owner: model.owner });
}

export async function renderModels(container, { signal }) {
  const models = await api.get("models", {}, signal);
  replace(
    container,
    h("h1", {}, "Models"),
    table(
      ["Model", "Owner", "Shared", "Active version", "Versions", "Accuracy", "Storage"],
      models.map((model) => {
        const active = model.versions.find((version) => version.active);
        return [
          link(modelLink(model), model.name),
          model.owner,
          model.shared ? "yes" : "",
          active ? `v${active.version}` : "none",
          String(model.versions.length),
          number(active?.metrics?.accuracy),
          bytes(model.storage_bytes),
        ];
      }),
      { empty: "No models yet: fine-tune one." },
    ),
  );
}

// The model the page's route names: the caller's own or a shared one by that name, or (for
// an admin following a link from the list) the named owner's.
async function loadModel(name, owner, signal) {
  const named = needsOwner(owner);
  const found = await api.get(`models/${segment(name)}`, named ? { owner } : {}, signal);
  return { ...found, needsOwner: named };
}

export async function renderModel(container, { params: [name], query, signal }) {
  let model = await loadModel(name, query.get("owner"), signal);
  const chosen = Number(query.get("v")) || model.active_version || model.versions.at(-1)?.version;
  const versionArea = h("div", { class: "version" });
  const versionsArea = h("div");
  const activate = async (wanted, button) => {
    button.disabled = true;
    try {
      model = {
        ...(await api.post(`models/${segment(model.name)}/versions/${wanted}/activate`, undefined, {
          query: ownerQuery(model),
        })),
        needsOwner: model.needsOwner,
      };
      notify(`Version ${wanted} of ${model.name} is now active.`);
      drawVersions();
    } catch (error) {
      button.disabled = false;
      showError(error);
    }
  };
  const drawVersions = () => {
    const manage = mayManage(model.owner);
    replace(
      versionsArea,
      table(
        ["Version", "Created", "Accuracy", "Macro F1", "Dataset", "Backbone", "Active"],
        model.versions
          .slice()
          .reverse()
          .map((version) =>
            h(
              "tr",
              {
                "data-version": String(version.version),
                class: version.version === chosen ? "chosen" : null,
              },
              h(
                "td",
                {},
                link(
                  route(`models/${model.name}`, { owner: model.owner, v: version.version }),
                  `v${version.version}`,
                ),
              ),
              h("td", {}, when(version.created_at, "short")),
              h("td", {}, number(version.metrics?.accuracy)),
              h("td", {}, number(version.metrics?.macro_avg?.f1)),
              h(
                "td",
                {},
                version.dataset ? `${version.dataset.name} v${version.dataset.version}` : "—",
              ),
              h("td", {}, version.backbone ?? ""),
              h(
                "td",
                {},
                version.active
                  ? badge("active")
                  : manage
                    ? h(
                        "button",
                        {
                          type: "button",
                          onclick: (event) => activate(version.version, event.currentTarget),
                        },
                        "Activate",
                      )
                    : "",
              ),
            ),
          ),
        { caption: "Versions, newest first" },
      ),
    );
  };
  const canary = model.canary;
  replace(
    container,
    h("h1", {}, model.name),
    h(
      "p",
      { class: "meta" },
      `Owner ${model.owner}`,
      model.shared ? " · shared with every client" : "",
      ` · ${bytes(model.storage_bytes)} on the store`,
      canary
        ? ` · v${canary.version} in canary with ${Math.round(canary.traffic * 100)} % of traffic`
        : "",
      " · ",
      link(route("classify", { model: model.name }), "classify with it"),
    ),
    versionsArea,
    versionArea,
  );
  drawVersions();
  const version = model.versions.find((one) => one.version === chosen);
  if (version) await renderVersion(versionArea, model, version, signal);
}

async function renderVersion(area, model, version, signal) {
  const base = `models/${segment(model.name)}/versions/${version.version}`;
  const query = ownerQuery(model);
  const plots = PLOTS.filter(([file]) => version.artifacts?.includes(file)).map(
    ([file, title, caption]) =>
      apiImage(`${base}/artifacts/${file}`, `${title} of ${model.name} v${version.version}`, {
        query,
        signal,
        caption,
      }),
  );
  const report = h("div");
  const exports = h("section", {}, h("h3", {}, "Exports"));
  const monitoring = h("section", { class: "monitoring" });
  replace(
    area,
    h("h2", {}, `Version ${version.version}`),
    trainingFacts(version),
    plots.length
      ? h("div", { class: "plots" }, plots)
      : h(
          "p",
          { class: "empty" },
          "This version has no plots (the built-in model was not trained here).",
        ),
    report,
    version.kind === "builtin" ? null : exports,
    monitoring,
  );
  const work = [];
  if (version.artifacts?.includes("evaluation.json")) {
    work.push(
      api.blob(`${base}/artifacts/evaluation.json`, query, signal).then(async (blob) => {
        replace(report, perClassTable(JSON.parse(await blob.text())));
      }),
    );
  }
  if (version.kind !== "builtin") work.push(renderExports(exports, model, version, signal));
  if (mayManage(model.owner)) {
    work.push(renderMonitoring(monitoring, model, version, signal));
  }
  const failures = (await Promise.allSettled(work)).filter((one) => one.status === "rejected");
  for (const failure of failures) showError(failure.reason);
}

function trainingFacts(version) {
  const params = version.training?.params ?? {};
  const facts = [
    ["Kind", version.kind],
    ["Image size", version.image_size ? `${version.image_size} px` : null],
    ["Base", version.training?.base],
    [
      "Epochs",
      params.epochs !== undefined
        ? `${params.epochs} + ${params.fine_tune_epochs} fine-tuning`
        : null,
    ],
    ["Test images", version.training?.split_sizes?.test],
    [
      "Top-k accuracy",
      version.metrics?.top_k
        ? `${number(version.metrics.top_k_accuracy)} (k = ${version.metrics.top_k})`
        : null,
    ],
  ].filter(([, value]) => value !== null && value !== undefined);
  return h(
    "dl",
    { class: "details" },
    facts.map(([name, value]) => [h("dt", {}, name), h("dd", {}, String(value))]),
  );
}

function perClassTable(evaluation) {
  const rows = Object.entries(evaluation.per_class ?? {}).map(([label, scores]) => [
    label,
    number(scores.precision),
    number(scores.recall),
    number(scores.f1),
    String(scores.support),
  ]);
  for (const [name, key] of [
    ["macro average", "macro_avg"],
    ["weighted average", "weighted_avg"],
  ]) {
    const scores = evaluation[key];
    if (scores)
      rows.push([
        h("em", {}, name),
        number(scores.precision),
        number(scores.recall),
        number(scores.f1),
        "",
      ]);
  }
  return h(
    "section",
    {},
    h("h3", {}, "Per class, on the test split"),
    table(["Class", "Precision", "Recall", "F1", "Support"], rows),
  );
}

async function exportFormats() {
  try {
    return (await schemaOf("ExportRequest")).properties?.format?.enum ?? FALLBACK_FORMATS;
  } catch {
    return FALLBACK_FORMATS;
  }
}

async function renderExports(section, model, version, signal) {
  const base = `models/${segment(model.name)}/versions/${version.version}/exports`;
  const query = model.needsOwner ? { owner: model.owner } : {};
  const [formats, made] = await Promise.all([exportFormats(), api.get(base, query, signal)]);
  const format = h(
    "select",
    { "aria-label": "Export format" },
    formats.map((one) => h("option", { value: one }, one)),
  );
  const start = h("button", { type: "button" }, "Export");
  const status = h("p", { class: "status", "aria-live": "polite" });
  start.addEventListener("click", async () => {
    start.disabled = true;
    try {
      const job = await api.post(base, { format: format.value }, { query });
      replace(status, "Exporting as job ", link(route(`jobs/${job.id}`), job.id), "…");
      const ended = await followJob(job.id, { signal });
      if (ended.status !== "succeeded") {
        replace(
          status,
          h("span", { class: "error" }, `Export ${ended.status}: ${ended.error?.message ?? ""}`),
        );
      } else {
        await renderExports(section, model, version, signal);
        notify(
          `Exported ${ended.result.format}: ${bytes(ended.result.size_bytes)}, agreement ${number(ended.result.agreement)}.`,
        );
      }
    } catch (error) {
      showError(error);
    } finally {
      start.disabled = false;
    }
  });
  const rows = made.map((one) => [
    one.format,
    bytes(one.size_bytes),
    number(one.agreement),
    `${number(one.accuracy)} (Keras ${number(one.keras_accuracy)})`,
    one.within_margin ? "yes" : badge("no", "failed"),
    h(
      "a",
      {
        href: "#",
        onclick: (event) => {
          event.preventDefault();
          const file = `${model.name}-v${version.version}-${one.file_name ?? one.format}`;
          download(`${base}/${segment(one.format)}`, query, file).catch(showError);
        },
      },
      "Download",
    ),
  ]);
  replace(
    section,
    h("h3", {}, "Exports"),
    table(["Format", "Size", "Agreement", "Accuracy", "Within margin", "File"], rows, {
      empty: "No exports yet.",
    }),
    h("div", { class: "row" }, format, start),
    status,
  );
}
