// Classify: images in (file input or drag and drop), a predict job out, its labels shown as
// soon as it ends (long poll), each image beside its top labels; optionally its Grad-CAM
// heatmap (explain=gradcam), and feedback on each image (POST /jobs/<id>/feedback).

import { api, followJob, schemaOf, segment } from "./api.js";
import { needsOwner, notify, showError } from "./notices.js";
import { apiImage, checkbox, field, h, link, objectUrl, percent, replace, route } from "./dom.js";

// The models the caller may predict with, for the model picker: its own and the shared ones
// (an admin sees all, and names another client's with owner=).
async function modelChoices(signal) {
  const models = await api.get("models", {}, signal);
  return models.map((model) => ({
    name: model.name,
    owner: model.owner,
    needsOwner: needsOwner(model.owner),
  }));
}

function dropZone(input, onFiles) {
  const zone = h(
    "div",
    { class: "drop-zone", "data-testid": "drop-zone" },
    h("p", {}, "Drop images here, or choose them above."),
  );
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const images = [...event.dataTransfer.files].filter((file) => file.type.startsWith("image/"));
    if (!images.length) {
      notify("Only image files can be classified.", "error");
      return;
    }
    const transfer = new DataTransfer();
    for (const file of images) transfer.items.add(file);
    input.files = transfer.files;
    onFiles();
  });
  return zone;
}

export async function renderClassify(container, { query, signal }) {
  const [choices, predictSchema] = await Promise.all([
    modelChoices(signal),
    schemaOf("PredictMultipart"),
  ]);
  const topKDefault = predictSchema.properties?.top_k?.default ?? 5;
  const images = h("input", {
    type: "file",
    name: "image",
    accept: "image/*",
    multiple: true,
    required: true,
  });
  const chosen = h("p", { class: "hint" }, "No images chosen.");
  const showChosen = () =>
    replace(
      chosen,
      images.files.length
        ? [...images.files].map((file) => file.name).join(", ")
        : "No images chosen.",
    );
  images.addEventListener("change", showChosen);
  const model = h(
    "select",
    { name: "model" },
    h("option", { value: "" }, "default (the server's)"),
    choices.map((choice, index) =>
      h(
        "option",
        { value: String(index), selected: query.get("model") === choice.name },
        choice.needsOwner ? `${choice.name} (${choice.owner})` : choice.name,
      ),
    ),
  );
  const version = h("input", { type: "number", name: "version", min: "1", placeholder: "active" });
  const topK = h("input", {
    type: "number",
    name: "top_k",
    min: "1",
    max: "100",
    placeholder: String(topKDefault),
  });
  const explain = h("input", { type: "checkbox", name: "explain" });
  const button = h("button", { type: "submit", class: "primary" }, "Classify");
  const status = h("p", { class: "status", "aria-live": "polite" });
  const results = h("div", { class: "results" });
  const form = h(
    "form",
    { class: "panel" },
    field("Images", images, "JPEG, PNG, WebP, GIF, BMP or TIFF; several at once."),
    dropZone(images, showChosen),
    chosen,
    h(
      "div",
      { class: "row" },
      field("Model", model),
      field("Version", version),
      field("Top-k", topK),
      checkbox("Explain", explain, "Adds a Grad-CAM heatmap of the top class."),
    ),
    button,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!images.files.length) {
      notify("Choose at least one image.", "error");
      return;
    }
    const files = [...images.files];
    const body = new FormData();
    for (const file of files) body.append("image", file, file.name);
    const picked = model.value === "" ? null : choices[Number(model.value)];
    if (picked) body.append("model", picked.name);
    if (picked?.needsOwner) body.append("owner", picked.owner);
    if (version.value) body.append("version", version.value);
    if (topK.value) body.append("top_k", topK.value);
    if (explain.checked) body.append("explain", "gradcam");
    button.disabled = true;
    replace(results);
    try {
      const created = await api.postForm("jobs/predict", body, { signal });
      replace(status, "Queued as job ", link(route(`jobs/${created.id}`), created.id), "…");
      const job = await followJob(created.id, {
        signal,
        onUpdate: (update) =>
          replace(
            status,
            `Job `,
            link(route(`jobs/${update.id}`), update.id),
            `: ${update.status}`,
          ),
      });
      if (job.status !== "succeeded") {
        const text = job.error ? `${job.error.message} (${job.error.code})` : job.status;
        replace(results, h("p", { class: "error" }, `The job ${job.status}: ${text}`));
        return;
      }
      renderResults(results, job, files, picked, signal);
    } catch (error) {
      showError(error);
    } finally {
      button.disabled = false;
    }
  });
  replace(container, h("h1", {}, "Classify"), form, status, results);
}

// The model's classes, for the true-label picker (the built-in model names its label set
// instead of listing 1000 classes: the picker then offers the predicted labels).
async function classesOf(result, picked, signal) {
  const query = picked?.needsOwner ? { owner: picked.owner } : {};
  try {
    const model = await api.get(`models/${segment(result.model)}`, query, signal);
    const served = model.versions.find((one) => one.version === result.version);
    return Array.isArray(served?.labels) ? served.labels : null;
  } catch (error) {
    if (error.name === "AbortError") throw error;
    return null;
  }
}

function renderResults(results, job, files, picked, signal) {
  const { predictions, explanations = [] } = job.result;
  const labels = predictions.map(() => null); // the feedback sent so far, per image
  const cards = predictions.map((top, index) => {
    const file = files[index];
    const heatmap = explanations.find((one) => one.image === index);
    const feedback = h("div", { class: "feedback" });
    const card = h(
      "article",
      { class: "result", "data-image": String(index) },
      h("img", { class: "thumb", src: objectUrl(file), alt: `Image ${index + 1}: ${file.name}` }),
      h(
        "div",
        { class: "result-body" },
        h("h2", {}, file.name),
        h(
          "ol",
          { class: "labels" },
          top.map((prediction) =>
            h(
              "li",
              {},
              h("span", { class: "label" }, prediction.label),
              h("meter", {
                min: "0",
                max: "1",
                value: prediction.score,
                title: percent(prediction.score),
              }),
              h("span", { class: "score" }, percent(prediction.score)),
            ),
          ),
        ),
        feedback,
      ),
      heatmap
        ? apiImage(
            `jobs/${segment(job.id)}/artifacts/${segment(heatmap.artifact)}`,
            `Grad-CAM of ${heatmap.label} on ${file.name}`,
            { signal, caption: `Where the model looked for “${heatmap.label}”` },
          )
        : null,
    );
    return { card, feedback, top };
  });
  replace(
    results,
    h(
      "p",
      {},
      `${job.result.model} v${job.result.version} · `,
      link(route(`jobs/${job.id}`), "job details"),
    ),
    cards.map((one) => one.card),
  );
  classesOf(job.result, picked, signal).then((classes) => {
    for (const [index, one] of cards.entries()) {
      renderFeedback(one.feedback, { job, index, top: one.top, classes, labels });
    }
  }, showError);
}

function renderFeedback(container, { job, index, top, classes, labels }) {
  const options = classes ?? top.map((prediction) => prediction.label);
  const listId = `classes-${job.id}-${index}`;
  const truth = h("input", {
    type: "text",
    list: listId,
    placeholder: "true label",
    "aria-label": "True label",
  });
  const said = h("span", { class: "hint", "aria-live": "polite" });
  const send = async (label) => {
    labels[index] = label;
    try {
      const answer = await api.post(`jobs/${segment(job.id)}/feedback`, { labels });
      const right = answer.correct[index];
      replace(
        said,
        right ? "Recorded: correct." : `Recorded: “${label}” (the model said “${top[0].label}”).`,
      );
    } catch (error) {
      labels[index] = null;
      showError(error);
    }
  };
  replace(
    container,
    h("span", { class: "field-name" }, "Feedback"),
    h("button", { type: "button", onclick: () => send(top[0].label) }, "Correct"),
    h(
      "datalist",
      { id: listId },
      options.map((label) => h("option", { value: label })),
    ),
    truth,
    h(
      "button",
      {
        type: "button",
        onclick: () =>
          truth.value.trim()
            ? send(truth.value.trim())
            : notify("Type or pick the true label.", "error"),
      },
      "Set true label",
    ),
    said,
  );
}
