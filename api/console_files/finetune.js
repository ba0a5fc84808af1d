// Fine-tune: a dataset archive and a model name in, a new version out. The parameters, their
// defaults and their limits are read from the OpenAPI document (FinetuneForm), so the form
// shows what the server would do with each one left as it is. The upload shows its progress,
// then the training job its epochs, loss, accuracy and time left, until the new version
// appears with its plots.

import { TERMINAL, api, followJob, schemaOf, segment, uploadForm } from "./api.js";
import { notify, showError } from "./notices.js";
import { apiImage, checkbox, field, h, link, number, replace, route } from "./dom.js";
import { trainingProgress } from "./jobs.js";

const MAIN = [
  "base",
  "epochs",
  "fine_tune_epochs",
  "batch_size",
  "image_size",
  "learning_rate",
  "augment",
];
const MORE = [
  "budget_s",
  "teacher",
  "pooling",
  "label_smoothing",
  "tta",
  "mixup",
  "unfreeze",
  "fine_tune_learning_rate",
  "dropout",
  "patience",
  "seed",
  "data_mode",
  "dataset_name",
];

const NAMES = {
  base: "Base",
  epochs: "Epochs",
  fine_tune_epochs: "Fine-tune epochs",
  batch_size: "Batch size",
  image_size: "Image size",
  learning_rate: "Learning rate",
  augment: "Augment",
  budget_s: "Budget (s)",
  teacher: "Teacher",
  pooling: "Pooling",
  label_smoothing: "Label smoothing",
  tta: "Test-time flip",
  mixup: "Mixup",
  unfreeze: "Unfreeze",
  fine_tune_learning_rate: "Fine-tune learning rate",
  dropout: "Dropout",
  patience: "Patience",
  seed: "Seed",
  data_mode: "Data mode",
  dataset_name: "Dataset name",
};

const HINTS = {
  base: "A backbone, or model:version to continue from.",
  epochs: "Epochs of the new head on the frozen backbone.",
  batch_size: "Images per training step.",
  learning_rate: "Of the head's training.",
  fine_tune_epochs: "Epochs with the top of the backbone unfrozen (0: none).",
  image_size: "Pixels per side; empty: the backbone's own.",
  augment: "Random flips, crops and colour shifts while training.",
  unfreeze: "Share of the backbone's layers trained in the fine-tune phase.",
  budget_s: "Seconds to try configurations on the validation split (empty: none).",
  teacher: "model:version to distil from (same classes).",
  pooling: "avg: one global average; grid: a 2 x 2 grid of it.",
  tta: "Serve the mean over the image and its mirror (twice the cost).",
  patience: "Epochs without improvement before training stops early.",
  data_mode:
    "replace: the upload alone is the dataset's next version; append: added to its latest.",
  dataset_name: "Where the upload is kept (empty: the model's name).",
};

// A parameter that may be `auto` (oneOf: "auto" or a value), as the value's own schema with
// `auto` set: its control starts empty (or on "auto"), and an empty control is not sent.
function unwrapAuto(schema) {
  const branches = schema.oneOf ?? [];
  const value = branches.find((branch) => !(branch.enum ?? []).includes("auto"));
  if (!value || branches.length !== 2) return schema;
  return { ...value, auto: true, description: schema.description };
}

// One control per parameter, as its schema describes it, holding the default.
function control(name, schema) {
  if (schema.auto && (schema.enum || schema.type === "boolean")) {
    const values = ["auto", ...(schema.enum ?? ["true", "false"])];
    return h(
      "select",
      { name },
      values.map((value) => h("option", { value: value === "auto" ? "" : value }, value)),
    );
  }
  if (schema.enum) {
    return h(
      "select",
      { name },
      schema.enum.map((value) => h("option", { value, selected: value === schema.default }, value)),
    );
  }
  if (schema.type === "boolean")
    return h("input", { type: "checkbox", name, checked: Boolean(schema.default) });
  if (schema.type === "integer" || schema.type === "number") {
    return h("input", {
      type: "number",
      name,
      min: schema.minimum !== undefined ? String(schema.minimum) : null,
      max: schema.maximum !== undefined ? String(schema.maximum) : null,
      step: schema.type === "integer" ? "1" : "any",
      value: !schema.auto && schema.default !== undefined ? String(schema.default) : "",
      placeholder: schema.auto ? "auto" : schema.default === undefined ? "default" : null,
    });
  }
  return h("input", {
    type: "text",
    name,
    value: schema.default ?? "",
    pattern: schema.pattern ?? null,
    spellcheck: "false",
  });
}

function parameterField(name, properties) {
  const schema = unwrapAuto(properties[name] ?? { type: "string" });
  const input = control(name, schema);
  const shown = schema.auto
    ? "Default: auto (chosen from the data)."
    : schema.default !== undefined
      ? `Default: ${schema.default}.`
      : null;
  const hint = [HINTS[name], shown].filter(Boolean).join(" ");
  const boxed = schema.type === "boolean" && !schema.auto;
  return (boxed ? checkbox : field)(NAMES[name] ?? name, input, hint);
}

export async function renderFinetune(container, { signal }) {
  const schema = await schemaOf("FinetuneForm");
  const properties = schema.properties ?? {};
  const archive = h("input", {
    type: "file",
    name: "dataset",
    accept: ".zip,.tar,.tar.gz,.tgz,application/zip,application/gzip,application/x-tar",
    required: true,
  });
  const modelName = h("input", {
    type: "text",
    name: "model",
    required: true,
    pattern: properties.model?.pattern ?? null,
    spellcheck: "false",
    placeholder: "pets",
  });
  const button = h("button", { type: "submit", class: "primary" }, "Start fine-tune");
  const progress = h("div", { class: "training", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "panel", novalidate: true },
    field(
      "Dataset archive",
      archive,
      "A .zip or .tar(.gz) of <class>/<image> folders, or train/, validation/, test/ around them.",
    ),
    field(
      "Model name",
      modelName,
      "Lower-case letters, digits, - and _; a new name, or one of yours for its next version.",
    ),
    h(
      "div",
      { class: "grid" },
      MAIN.map((name) => parameterField(name, properties)),
    ),
    h(
      "details",
      {},
      h("summary", {}, "More parameters"),
      h(
        "div",
        { class: "grid" },
        MORE.map((name) => parameterField(name, properties)),
      ),
    ),
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!archive.files.length) {
      notify("Choose a dataset archive.", "error");
      return;
    }
    if (!modelName.value.trim()) {
      notify("Give the model a name.", "error");
      return;
    }
    const body = new FormData();
    body.append("model", modelName.value.trim());
    for (const input of form.querySelectorAll(".grid [name]")) {
      if (input.type === "checkbox") body.append(input.name, input.checked ? "true" : "false");
      else if (input.value.trim() !== "") body.append(input.name, input.value.trim());
    }
    body.append("dataset", archive.files[0], archive.files[0].name);
    button.disabled = true;
    try {
      await runFinetune(progress, body, signal);
    } catch (error) {
      showError(error);
    } finally {
      button.disabled = false;
    }
  });
  replace(container, h("h1", {}, "Fine-tune"), form, progress);
}

async function runFinetune(area, body, signal) {
  const upload = h("progress", { "aria-label": "Upload", max: 1, value: 0 });
  const uploadText = h("span", { class: "progress-text" }, "uploading…");
  replace(area, h("h2", {}, "Upload"), h("div", { class: "progress" }, upload, uploadText));
  const created = await uploadForm(
    "jobs/finetune",
    body,
    (sent, total) => {
      upload.max = total;
      upload.value = sent;
      replace(
        uploadText,
        `${Math.round((100 * sent) / total)} % of ${(total / 1e6).toFixed(1)} MB`,
      );
    },
    signal,
  );
  replace(uploadText, "uploaded");
  const training = h("div");
  const jobLine = h("p", {}, "Training as job ", link(route(`jobs/${created.id}`), created.id));
  area.append(h("h2", {}, "Training"), jobLine, training);
  const job = await followJob(created.id, {
    signal,
    wait: 2, // a short hold: the answer comes back with the latest epoch
    onUpdate: (update) => replace(training, trainingProgress(update.progress, update.status)),
  });
  if (!TERMINAL.has(job.status) || job.status !== "succeeded") {
    const why = job.error ? `${job.error.message} (${job.error.code})` : job.status;
    area.append(h("p", { class: "error" }, `The fine-tune ${job.status}: ${why}`));
    return;
  }
  const result = job.result;
  const base = `models/${segment(result.model)}/versions/${result.version}`;
  area.append(
    h("h2", {}, `${result.model} v${result.version}`),
    h(
      "p",
      { class: "done" },
      `Test accuracy ${number(result.metrics?.accuracy)}; ${result.activated ? "activated" : "not activated"} (${result.activation_reason}). `,
      link(route(`models/${result.model}`, { v: result.version }), "Open the version"),
    ),
    h(
      "div",
      { class: "plots" },
      ["training_curves.png", "confusion_matrix.png"]
        .filter((file) => result.artifacts?.includes(file))
        .map((file) =>
          apiImage(
            `${base}/artifacts/${file}`,
            `${file === "training_curves.png" ? "Training curves" : "Confusion matrix"} of ${result.model} v${result.version}`,
            { signal },
          ),
        ),
    ),
  );
}
