// Datasets: the caller's stored datasets (GET /datasets), and one dataset's versions with the
// image counts of each class and split (GET /datasets/<name>): what a fine-tune trained on.

import { api, segment } from "./api.js";
import { barChart } from "./charts.js";
import { badge, bytes, h, link, replace, route, table, when } from "./dom.js";
import { needsOwner } from "./notices.js";

const SPLITS = ["train", "validation", "test"];

export async function renderDatasets(container, { signal }) {
  const datasets = await api.get("datasets", {}, signal);
  replace(
    container,
    h("h1", {}, "Datasets"),
    table(
      ["Dataset", "Owner", "Latest version", "Images", "Classes", "Storage"],
      datasets.map((dataset) => [
        link(route(`datasets/${dataset.name}`, { owner: dataset.owner }), dataset.name),
        dataset.owner,
        `v${dataset.version}`,
        String(dataset.images),
        String(dataset.classes),
        bytes(dataset.storage_bytes),
      ]),
      { empty: "No datasets yet: every fine-tune's upload is kept as one." },
    ),
  );
}

export async function renderDataset(container, { params: [name], query, signal }) {
  const owner = query.get("owner");
  const ownerQuery = needsOwner(owner) ? { owner } : {};
  const dataset = await api.get(`datasets/${segment(name)}`, ownerQuery, signal);
  const versions = dataset.versions.slice().sort((a, b) => b.version - a.version);
  const chosen = versions.find((one) => one.version === Number(query.get("v"))) ?? versions[0];
  replace(
    container,
    h("h1", {}, `Dataset ${dataset.name}`),
    h(
      "p",
      { class: "meta" },
      `Owner ${dataset.owner} · ${bytes(dataset.storage_bytes)} of images on the store`,
    ),
    table(
      ["Version", "Created", "Source", "Parent", "Images", "Classes", "By", "Fingerprint"],
      versions.map((version) =>
        h(
          "tr",
          { class: version === chosen ? "chosen" : null },
          h(
            "td",
            {},
            link(
              route(`datasets/${dataset.name}`, { owner: query.get("owner"), v: version.version }),
              `v${version.version}`,
            ),
          ),
          h("td", {}, when(version.created_at, "short")),
          h("td", {}, badge(version.source, "none")),
          h("td", {}, version.parent ? `v${version.parent}` : "—"),
          h("td", {}, String(version.images)),
          h("td", {}, String(Object.keys(version.classes).length)),
          h("td", {}, version.by ?? ""),
          h("td", {}, h("code", {}, version.fingerprint.slice(0, 12))),
        ),
      ),
      { caption: "Versions, newest first" },
    ),
    chosen ? classCounts(chosen) : null,
  );
}

function classCounts(version) {
  const labels = Object.keys(version.classes).sort();
  const rows = labels.map((label) => {
    const counts = version.classes[label];
    const total = SPLITS.reduce((sum, split) => sum + (counts[split] ?? 0), 0);
    return [label, ...SPLITS.map((split) => String(counts[split] ?? 0)), String(total)];
  });
  return h(
    "section",
    {},
    h("h2", {}, `Classes of v${version.version}`),
    table(["Class", ...SPLITS, "total"], rows),
    labels.length <= 40
      ? h(
          "div",
          { class: "wide-chart" },
          barChart({
            categories: labels,
            series: SPLITS.map((split) => ({
              name: split,
              values: labels.map((label) => version.classes[label][split] ?? 0),
            })),
            description: `Images per class and split in v${version.version}`,
            format: (value) => String(Math.round(value)),
            whole: true,
          }),
        )
      : null,
  );
}
