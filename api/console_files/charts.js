// Three small charts drawn as SVG by hand: grouped bars (class shares, the confidence
// histogram) and a line with gaps (online accuracy over the window).
//
// Why not a charting library: the console needs exactly these three shapes; a library would
// be a vendored bundle many times the size of the whole console, to keep up to date, and most
// build their charts with inline styles the page's Content-Security-Policy forbids. SVG
// elements take their colours from the stylesheet (classes), scale with the page (viewBox),
// and every chart carries a text alternative (role="img" and a title) for screen readers.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 480;
const HEIGHT = 230;
const MARGIN = { top: 12, right: 10, bottom: 58, left: 42 };
const ROTATE_OVER = 8; // more categories than this: their labels are slanted to fit
const MAX_BAR = 56; // a lone class's bar stays a bar, not a wall

function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined) element.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    element.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return element;
}

function frame(description, height = HEIGHT) {
  return svg(
    "svg",
    {
      viewBox: `0 0 ${WIDTH} ${height}`,
      class: "chart",
      role: "img",
      "aria-label": description,
      preserveAspectRatio: "xMidYMid meet",
    },
    svg("title", {}, description),
  );
}

// A scale for values up to `highest`: a top and a step of 1, 2, 2.5 or 5 times a power of ten
// (whole steps only for counts), so the axis reads 0, 5, 10 rather than 0, 3, 8.
export function niceScale(highest, whole = false) {
  if (!(highest > 0)) return { top: 1, step: whole ? 1 : 0.25 };
  const rough = highest / 4;
  const power = 10 ** Math.floor(Math.log10(rough));
  const factors = whole && power < 10 ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10];
  const step = Math.max(whole ? 1 : 0, factors.find((factor) => factor * power >= rough) * power);
  return { top: Math.ceil(highest / step) * step, step };
}

// Horizontal grid lines and their labels, one per step of the scale.
function yAxis(chart, { top, step }, plotHeight, format) {
  const steps = Math.round(top / step);
  for (let index = 0; index <= steps; index += 1) {
    const value = index * step;
    const y = MARGIN.top + plotHeight - (plotHeight * value) / top;
    chart.append(
      svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y, y2: y, class: "gridline" }),
      svg(
        "text",
        { x: MARGIN.left - 6, y: y + 4, class: "tick", "text-anchor": "end" },
        format(value),
      ),
    );
  }
}

function legend(chart, series, y) {
  let x = MARGIN.left;
  for (const [index, one] of series.entries()) {
    chart.append(
      svg("rect", { x, y: y - 9, width: 10, height: 10, class: `series-${index}` }),
      svg("text", { x: x + 14, y, class: "legend" }, one.name),
    );
    x += 26 + one.name.length * 6.5;
  }
}

// Grouped bars: one group per category, one bar per series (values may be null: no bar).
// series: [{name, values}]; format turns a value into the axis and tooltip text.
// `whole`: the values are counts (whole steps on the axis).
export function barChart({
  categories,
  series,
  description,
  format = (v) => v.toFixed(2),
  whole = false,
}) {
  const chart = frame(description);
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const highest = Math.max(0, ...series.flatMap((one) => one.values.filter((v) => v !== null)));
  const scale = niceScale(highest, whole);
  const scaleTop = scale.top;
  yAxis(chart, scale, plotHeight, format);
  const group = plotWidth / Math.max(categories.length, 1);
  const bar = Math.min((group * 0.8) / Math.max(series.length, 1), MAX_BAR);
  const groupWidth = bar * series.length;
  for (const [column, category] of categories.entries()) {
    const left = MARGIN.left + column * group + (group - groupWidth) / 2;
    for (const [index, one] of series.entries()) {
      const value = one.values[column];
      if (value === null || value === undefined) continue;
      const height = (Math.min(value, scaleTop) / scaleTop) * plotHeight;
      chart.append(
        svg(
          "rect",
          {
            x: left + index * bar,
            y: MARGIN.top + plotHeight - height,
            width: Math.max(bar - 1, 1),
            height: Math.max(height, 0),
            class: `series-${index}`,
          },
          svg("title", {}, `${category} — ${one.name}: ${format(value)}`),
        ),
      );
    }
    const label = category.length > 14 ? `${category.slice(0, 13)}…` : category;
    const x = left + groupWidth / 2;
    const y = MARGIN.top + plotHeight + 14;
    const slanted = categories.length > ROTATE_OVER;
    chart.append(
      svg(
        "text",
        {
          x,
          y,
          class: "tick",
          "text-anchor": slanted ? "end" : "middle",
          transform: slanted ? `rotate(-35 ${x} ${y})` : null,
        },
        label,
      ),
    );
  }
  legend(chart, series, HEIGHT - 6);
  return chart;
}

// A line over equally spaced points between 0 and 1 (null: a gap), with an optional dashed
// reference level (the version's test accuracy).
export function lineChart({ values, description, reference, referenceName, name }) {
  const chart = frame(description);
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  yAxis(chart, { top: 1, step: 0.25 }, plotHeight, (v) => `${Math.round(v * 100)} %`);
  const step = values.length > 1 ? plotWidth / (values.length - 1) : 0;
  const point = (index, value) => [
    MARGIN.left + (values.length > 1 ? index * step : plotWidth / 2),
    MARGIN.top + plotHeight - value * plotHeight,
  ];
  let path = "";
  let drawing = false;
  for (const [index, value] of values.entries()) {
    if (value === null || value === undefined) {
      drawing = false;
      continue;
    }
    const [x, y] = point(index, value);
    path += `${drawing ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)} `;
    drawing = true;
    chart.append(
      svg(
        "circle",
        { cx: x, cy: y, r: 3.5, class: "series-0" },
        svg("title", {}, `slice ${index + 1} of ${values.length}: ${Math.round(value * 100)} %`),
      ),
    );
  }
  if (path) chart.prepend(svg("path", { d: path.trim(), class: "line series-0-stroke" }));
  const series = [{ name }];
  if (reference !== null && reference !== undefined) {
    const y = MARGIN.top + plotHeight - reference * plotHeight;
    chart.append(
      svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y, y2: y, class: "reference" }),
    );
    series.push({ name: referenceName });
  }
  chart.append(
    svg("text", { x: MARGIN.left, y: MARGIN.top + plotHeight + 16, class: "tick" }, "oldest"),
    svg(
      "text",
      {
        x: WIDTH - MARGIN.right,
        y: MARGIN.top + plotHeight + 16,
        class: "tick",
        "text-anchor": "end",
      },
      "newest",
    ),
  );
  legend(chart, series, HEIGHT - 6);
  return chart;
}
