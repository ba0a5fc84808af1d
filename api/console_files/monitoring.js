// A version's monitoring (GET /models/<name>/versions/<v>/monitoring, the owner or an admin):
// its drift flags, what it predicts against what it predicted on its test split (class shares
// and the confidence histogram, as bars), and its online accuracy from feedback over the
// window, against its test accuracy.

import { api, segment } from "./api.js";
import { barChart, lineChart } from "./charts.js";
import { badge, h, number, percent, replace, table } from "./dom.js";

const MOST_CLASSES = 12;

function verdict(drifted) {
  if (drifted === null || drifted === undefined) return badge("n/a", "none");
  return drifted ? badge("drift", "failed") : badge("no drift", "succeeded");
}

function pValue(value) {
  return value === null || value === undefined
    ? "—"
    : value < 0.001
      ? value.toExponential(1)
      : value.toFixed(3);
}

function classChart(classes) {
  const observed = classes.observed ?? {};
  const reference = classes.reference ?? null;
  const total = Object.values(observed).reduce((sum, count) => sum + count, 0);
  const labels = [...new Set([...Object.keys(observed), ...Object.keys(reference ?? {})])]
    .sort(
      (a, b) =>
        (observed[b] ?? 0) - (observed[a] ?? 0) ||
        (reference?.[b] ?? 0) - (reference?.[a] ?? 0) ||
        a.localeCompare(b),
    )
    .slice(0, MOST_CLASSES);
  if (!labels.length) return h("p", { class: "empty" }, "No predictions in the window yet.");
  const series = [
    {
      name: "observed",
      values: labels.map((label) => (total ? (observed[label] ?? 0) / total : null)),
    },
  ];
  if (reference)
    series.push({
      name: "test split (reference)",
      values: labels.map((label) => reference[label] ?? 0),
    });
  return barChart({
    categories: labels,
    series,
    description: `Share of predictions per class: ${labels
      .map((label, index) => `${label} ${percent(series[0].values[index])}`)
      .join(", ")}`,
    format: (value) => `${Math.round(value * 100)} %`,
  });
}

function confidenceChart(confidence) {
  const histogram = confidence.histogram;
  if (!histogram) return h("p", { class: "empty" }, "The server sends no confidence histogram.");
  const observedTotal = histogram.observed.reduce((sum, count) => sum + count, 0);
  const categories = histogram.edges.slice(1).map((edge) => `≤${edge.toFixed(1)}`);
  const series = [
    {
      name: "observed",
      values: histogram.observed.map((count) => (observedTotal ? count / observedTotal : null)),
    },
  ];
  if (histogram.reference)
    series.push({ name: "test split (reference)", values: histogram.reference });
  return barChart({
    categories,
    series,
    description: `Top-1 confidence histogram of the window (${observedTotal} predictions)`,
    format: (value) => `${Math.round(value * 100)} %`,
  });
}

function accuracyChart(report) {
  const series = report.feedback.accuracy_series ?? [];
  if (!series.some((value) => value !== null))
    return h("p", { class: "empty" }, "No feedback yet: send some from Classify.");
  return lineChart({
    values: series,
    name: "online accuracy",
    reference: report.test_accuracy,
    referenceName: "test accuracy",
    description: `Online accuracy per twentieth of the window, oldest first; overall ${percent(report.feedback.accuracy)}`,
  });
}

export async function renderMonitoring(section, model, version, signal) {
  const query = model.needsOwner ? { owner: model.owner } : {};
  const path = `models/${segment(model.name)}/versions/${version.version}/monitoring`;
  const report = await api.get(path, query, signal);
  const { classes, confidence, feedback } = report;
  replace(
    section,
    h("h3", {}, "Monitoring"),
    h(
      "p",
      { class: "meta" },
      `${report.predictions} of the newest ${report.window} predictions · drift `,
      verdict(report.drifted),
      ` · online accuracy ${number(feedback.accuracy)} from ${feedback.count} labels · test accuracy ${number(report.test_accuracy)}`,
    ),
    table(
      ["Test", "Statistic", "p-value", "Verdict"],
      [
        [
          "classes (chi-square)",
          number(classes.statistic),
          pValue(classes.p_value),
          verdict(classes.drifted),
        ],
        [
          "confidence (Kolmogorov-Smirnov)",
          number(confidence.statistic),
          pValue(confidence.p_value),
          verdict(confidence.drifted),
        ],
      ],
    ),
    h(
      "div",
      { class: "charts" },
      h(
        "figure",
        { class: "chart-box" },
        h("figcaption", {}, "Predicted classes: observed against the test split"),
        classChart(classes),
      ),
      h(
        "figure",
        { class: "chart-box" },
        h(
          "figcaption",
          {},
          `Top-1 confidence: mean ${number(confidence.observed_mean)} (test split ${number(confidence.reference_mean)})`,
        ),
        confidenceChart(confidence),
      ),
      h(
        "figure",
        { class: "chart-box" },
        h("figcaption", {}, "Online accuracy from feedback, over the window"),
        accuracyChart(report),
      ),
    ),
    Object.keys(feedback.per_class ?? {}).length
      ? table(
          ["True class", "Labels", "Correct", "Accuracy"],
          Object.entries(feedback.per_class).map(([label, found]) => [
            label,
            String(found.count),
            String(found.correct),
            number(found.accuracy),
          ]),
        )
      : null,
    report.canary
      ? h(
          "p",
          { class: "meta" },
          `Canary v${report.canary.version} against v${report.canary.active_version}: ${report.canary.verdict}`,
        )
      : null,
  );
}
