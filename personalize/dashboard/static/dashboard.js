// The dashboard page: polls /api/overview (and /api/history less often) and renders with plain DOM.
// Everything from Redis goes in through textContent, never innerHTML.
// Three views share the page: the overview, one segment (/segments/<id>) and one user (/users/<key>);
// links change the URL with history.pushState and the back button returns through popstate.
// Every view takes an event-time range in its URL (?from=&to=, UTC dates or ISO datetimes): links and API
// calls carry it, so a URL with a range is a shareable view.
"use strict";

const REFRESH_MS = Number(document.body.dataset.refreshMs) || 2000;
const ROOT = document.body.dataset.root || "/";
const HISTORY_EVERY = 5; // history is heavier (the whole change stream): every 5th refresh
const COLORS = ["#5b8def", "#e8684a", "#5ad8a6", "#f6bd16", "#9270ca", "#ff9d4d", "#269a99", "#ff99c3",
  "#6dc8ec", "#5d7092", "#945fb9", "#1e9493"];
const NA = "not available yet";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const $ = (id) => document.getElementById(id);
const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));
const when = (ms) => (ms === null || ms === undefined || ms === "" ? "–"
  : new Date(Number(ms)).toISOString().replace("T", " ").slice(0, 19));
const na = (what) => el("p", { class: "na" }, `${what}: ${NA}`);

// A value for people: [[name, score], ...] (e.g. top_categories) as "name 1.23, ..."; other objects as JSON.
function shown(v) {
  if (Array.isArray(v) && v.every((p) => Array.isArray(p) && p.length === 2 && typeof p[1] === "number")) {
    return v.map(([name, score]) => `${name} ${score.toFixed(2)}`).join(", ");
  }
  return typeof v === "object" && v !== null ? JSON.stringify(v) : String(v);
}

function kv(entries) {
  return el("dl", { class: "kv" }, entries.map(([k, v]) => [el("dt", {}, k), el("dd", {}, shown(v))]));
}

function colorOf(segment, all) {
  return COLORS[all.indexOf(segment) % COLORS.length];
}

let seenChanges = new Set();
let segmentNames = {};
let historyDue = true;
let dataExtent = null; // {first, last} event time of the whole change stream, for the presets
let renderedHistory = "";

function rangeParams() {
  const params = new URLSearchParams(location.search);
  return new URLSearchParams(["from", "to"].filter((k) => params.get(k)).map((k) => [k, params.get(k)]));
}
const rangeQuery = () => rangeParams().toString();

// A path (with its own parameters) plus the current range.
function withRange(path) {
  const url = new URL(path, location.origin);
  for (const [k, v] of rangeParams()) url.searchParams.set(k, v);
  return url.pathname + url.search;
}

// A 400 from the API is a bad range in the URL: said next to the range control.
async function api(path) {
  const response = await fetch(withRange(ROOT + path));
  const data = await response.json();
  $("range-form").classList.toggle("bad", response.status === 400);
  if (response.status === 400) $("range-shown").textContent = data.error;
  return data;
}
const segmentName = (id) => segmentNames[id] || id;
let segmentOrder = [];
let tick = 0;

function setBanner(text, bad) {
  const banner = $("banner");
  banner.hidden = !text;
  banner.textContent = text || "";
  banner.className = bad ? "banner bad" : "banner";
}

function renderStatus(status) {
  const pill = $("redis-status");
  pill.textContent = status.ok ? `Redis up · ${status.url}` : "Redis down";
  pill.className = status.ok ? "pill ok" : "pill bad";
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function segmentLink(id, text) {
  return el("a", { class: "segment", href: withRange(`${ROOT}segments/${encodeURIComponent(id)}`), "data-segment": id },
    text ?? segmentName(id));
}

function userLink(user) {
  return el("a", { class: "user", href: withRange(`${ROOT}users/${encodeURIComponent(user)}`), "data-user": user },
    user);
}

// catalog: [{group, exclusive, segments: [{id, name, description, status, count}]}] (every defined segment).
function renderSegments(catalog, counts, usersSeen) {
  const all = catalog.flatMap((g) => g.segments);
  segmentNames = Object.fromEntries(all.map((s) => [s.id, s.name]));
  segmentOrder = [...new Set([...segmentOrder, ...all.map((s) => s.id)])].sort();
  const max = Math.max(1, ...all.map((s) => s.count));
  const rows = catalog.flatMap((group) => [
    el("tr", { class: "group", "data-group": group.group ?? "" }, el("th", { colspan: 3 },
      group.group ?? "independent", " ", el("span", { class: "muted" },
        group.exclusive ? "exclusive: a user is in at most one" : "a user may be in any of these"))),
    ...group.segments.map((s) => el("tr", { "data-segment": s.id },
      el("td", {}, segmentLink(s.id, s.name), " ", el("span", { class: "muted" }, s.name === s.id ? "" : s.id),
        s.status && s.status !== "active" ? el("span", { class: "status" }, s.status) : null,
        s.description ? el("span", { class: "desc" }, s.description) : null),
      el("td", { class: "num count", "data-segment": s.id }, fmt(s.count)),
      el("td", { style: "width:30%" }, el("div", { class: "bar",
        style: `width:${(100 * s.count) / max}%; background:${colorOf(s.id, segmentOrder)}` }))))]);
  $("segments").tBodies[0].replaceChildren(...rows);
  $("segments-empty").hidden = all.length > 0;
  $("users-seen").textContent = fmt(usersSeen);
  $("memberships").textContent = fmt(Object.values(counts).reduce((a, b) => a + b, 0));
}

function renderFeed(changes) {
  $("feed-length").textContent = changes.in_range !== null && changes.in_range !== undefined
    ? `(newest ${changes.recent.length} of ${fmt(changes.in_range)} in the range; ${fmt(changes.length)} kept)`
    : changes.length ? `(newest ${changes.recent.length} of ${fmt(changes.length)} kept)` : "";
  const first = seenChanges.size === 0;
  const rows = changes.recent.map((c) => el("tr", { class: !first && !seenChanges.has(c.stream_id) ? "new" : "" },
    el("td", { class: "nowrap" }, when(c.event_time)),
    el("td", {}, c.user ? userLink(c.user) : "?"),
    el("td", { class: `${c.action} nowrap` }, c.action === "enter" ? "→ enter" : c.action === "exit" ? "← exit" : c.action || "?"),
    el("td", {}, c.segment ? [segmentLink(c.segment), " ", el("span", { class: "muted" },
      segmentName(c.segment) === c.segment ? "" : c.segment)] : JSON.stringify(c.raw)),
    el("td", {}, c.cause || "")));
  seenChanges = new Set(changes.recent.map((c) => c.stream_id));
  $("feed").tBodies[0].replaceChildren(...rows);
  $("feed-empty").hidden = changes.recent.length > 0;
  $("feed-empty").textContent = rangeQuery() ? "No segment changes in this range." : "No segment changes yet.";
}

function renderRules(rules, instances) {
  $("rules").tBodies[0].replaceChildren(...rules.map((r) => el("tr", { "data-rule": r.id, title: r.description || "" },
    el("td", {}, r.name ? `${r.id} (${r.name})` : r.id),
    el("td", { class: "num" }, r.version ?? "?"),
    el("td", {}, r.status ?? "?"),
    el("td", {}, [r.group, r.priority].filter((x) => x !== null && x !== undefined).join(" / ")))));
  $("rules-empty").hidden = rules.length > 0;
  const prints = Object.values(instances);
  $("rule-instances").textContent = prints.length === 0 ? "" : new Set(prints).size === 1
    ? `all ${prints.length} job instances run the same rule set`
    : `instances run different rule sets (a command is still spreading): ${prints.length} instances, `
      + `${new Set(prints).size} fingerprints`;
}

function renderModel(model, clusters, instances) {
  $("model").replaceChildren(model ? kv(Object.entries(model).map(([k, v]) => [k, k === "ts" ? when(v) : v]))
    : na("model versions"));
  const scoring = Object.entries(instances || {});
  const versions = new Set(scoring.map(([, v]) => v));
  $("model-instances").textContent = scoring.length === 0 ? ""
    : versions.size === 1 ? `all ${scoring.length} scoring instances use snapshot ${[...versions][0]}`
      : `scoring instances use different snapshots (a new one is still spreading): `
        + scoring.map(([i, v]) => `#${i} ${v}`).join(", ");
  if (!clusters) {
    $("clusters").replaceChildren(na("clusters"));
    return;
  }
  $("clusters").replaceChildren(el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "cluster"),
    el("th", {}, "description"), el("th", { class: "num" }, "share"))),
  el("tbody", {}, clusters.map((c) => el("tr", { "data-cluster": c.cluster }, el("td", {}, c.cluster),
    el("td", {}, c.description ?? ""),
    el("td", { class: "num" }, c.share === undefined ? "" : `${(100 * c.share).toFixed(1)}%`))))));
}

function pct(value, signed) {
  if (value === null || value === undefined) return "-";
  return `${signed && value >= 0 ? "+" : ""}${(100 * value).toFixed(1)}%`;
}

function interval(pair, signed) {
  return pair ? `[${pct(pair[0], signed)}, ${pct(pair[1], signed)}]` : "-";
}

function renderExperiments(experiments) {
  if (experiments.length === 0) {
    $("experiments").replaceChildren(el("p", { class: "empty", id: "no-experiments" },
      "No experiment metrics yet (experiments.definitions is empty, or nobody was exposed)."));
    return;
  }
  $("experiments").replaceChildren(...experiments.map((x) => el("div", { "data-experiment": x.experiment_id },
    el("p", { class: "muted" }, `${x.experiment_id} v${x.experiment_version} · control ${x.control} · `
      + `${Math.round(100 * x.confidence)}% intervals · counts up to ${when(x.event_time)}`),
    el("table", {}, el("thead", {}, el("tr", {}, ...["arm", "exposed users", "clicks", "converted users",
      "conversion rate", "rate CI", "lift", "lift CI", "p", "revenue/user"].map((h, i) =>
      el("th", i ? { class: "num" } : {}, h)))),
    el("tbody", {}, x.arms.map((a) => {
      const v = a.versus_control;
      return el("tr", { "data-arm": a.arm }, el("td", {}, a.arm),
        ...[a.exposed_users, a.clicks, a.converted_users, pct(a.conversion_rate), interval(a.conversion_rate_ci),
          v ? pct(v.relative_lift, true) : "-", v ? interval(v.relative_lift_ci, true) : "-",
          v && v.p_value !== null ? v.p_value.toFixed(3) : "-",
          a.revenue_per_user === null ? "-" : a.revenue_per_user.toFixed(2)].map((c) => el("td", { class: "num" },
          String(c))));
    }))))));
}

function renderDrift(drift) {
  if (drift === null) {
    $("drift").replaceChildren(na("drift alerts"));
  } else if (drift.length === 0) {
    $("drift").replaceChildren(el("p", { class: "empty", id: "no-drift" }, "No drift detected."));
  } else {
    $("drift").replaceChildren(el("table", { id: "drift-alerts" }, el("tbody", {}, drift.map((d) => el("tr", {},
      el("td", {}, when(d.ts)), el("td", {}, `${d.model ?? "?"} · ${d.signal ?? "?"}`),
      el("td", {}, `${d.detector ?? ""} v${d.version ?? "?"}`))))));
  }
}

function renderDeadletters(counts) {
  if (counts === null) {
    $("deadletters").replaceChildren(na("dead-letter counts"));
    return;
  }
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  $("deadletters").replaceChildren(el("table", {}, el("tbody", {},
    Object.entries(counts).sort((a, b) => b[1] - a[1]).map(([reason, n]) => el("tr", { "data-reason": reason },
      el("td", {}, reason), el("td", { class: "num count", "data-reason": reason }, fmt(n)))),
    el("tr", {}, el("th", {}, "total"), el("th", { class: "num", id: "deadletters-total" }, fmt(total))))));
}

const DAY = 86_400_000;
// Count ticks: 1, 2 or 5 times a power of ten, never a fraction of a member.
const COUNT_STEPS = Array.from({ length: 10 }, (_, power) => [1, 2, 5].map((m) => m * 10 ** power)).flat();
const AXIS = { stroke: "#6b7385", font: "11px system-ui, sans-serif", grid: { stroke: "#eee", width: 1 },
  ticks: { stroke: "#bbb", width: 1, size: 4 } };

// From 0 to a round top at or above max, in at most 4 steps, so the top line is a tick.
function countRange(u, min, max) {
  const step = COUNT_STEPS.find((s) => Math.max(1, max) / s <= 4);
  return [0, Math.max(step, Math.ceil(max / step) * step)];
}

// Wide enough for the longest count label (11px digits are about 7px wide), plus the tick and a gap.
const countAxisWidth = (u, labels) => 16 + 7 * Math.max(1, ...(labels ?? []).map((label) => label.length));

// UTC tick labels: hours and minutes, with the date under the first tick of each day; dates alone for
// ticks a day or more apart.
function timeLabels(u, ticks, axis, space, step) {
  const day = (t) => new Date(t).toISOString().slice(5, 10);
  return ticks.map((t, i) => (step >= DAY ? day(t) : new Date(t).toISOString().slice(11, 16)
    + (i === 0 || day(ticks[i - 1]) !== day(t) ? `\n${day(t)}` : "")));
}

// uPlot charts by the box they are drawn in; a box's charts are released (observers, listeners, cursor sync)
// before it redraws.
const drawn = new Map();
function releaseCharts(box) {
  for (const release of drawn.get(box) ?? []) release();
  drawn.set(box, []);
}

// Small multiples: one panel per segment with its own y axis, so a segment of 5 is as readable as one of
// 5,000; all panels of a box share the time axis and the cursor (hovering one shows every segment's value
// at that time). Drawn by uPlot (static/vendor/uplot), real ticks on both axes, the time and value under
// the mouse on the line under the caption.
function historyPanel(box, segment, times, values) {
  const readout = el("span", { class: "readout muted", "data-segment": segment });
  const plot = el("div", { class: "plot", role: "img", "aria-label": `${segmentName(segment)} over event time` });
  const chart = new uPlot({
    width: 300, // until the observer below measures the panel (its size is the stylesheet's)
    height: 150,
    ms: 1,
    tzDate: (ms) => uPlot.tzDate(new Date(ms), "Etc/UTC"),
    legend: { show: false },
    cursor: { sync: { key: box }, y: false, drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: countRange } },
    axes: [{ ...AXIS, size: 36, space: 70, values: timeLabels },
      { ...AXIS, size: countAxisWidth, space: 24, incrs: COUNT_STEPS, values: (u, ticks) => ticks.map(fmt) }],
    series: [{}, { label: segmentName(segment), stroke: colorOf(segment, segmentOrder), width: 2 }],
    hooks: { setCursor: [(u) => {
      const i = u.cursor.idx;
      if (i === null || i === undefined) {
        readout.textContent = "";
        delete readout.dataset.index;
        return;
      }
      readout.dataset.index = String(i);
      readout.textContent = `${when(times[i])} · ${fmt(values[i])}`;
    }] },
  }, [times, values], plot);
  const resize = new ResizeObserver(() => {
    const [width, height] = [plot.clientWidth, plot.clientHeight];
    if (width > 0 && height > 0 && (width !== chart.width || height !== chart.height)) {
      chart.setSize({ width, height });
    }
  });
  resize.observe(plot);
  drawn.get(box).push(() => {
    resize.disconnect();
    chart.destroy();
  });
  return el("figure", { class: "multiple", "data-segment": segment },
    el("figcaption", {}, segmentLink(segment), " ", el("span", { class: "muted" },
      `${rangeQuery() ? "at the range's end" : "now"} ${fmt(values[values.length - 1])}`)), readout, plot);
}

function renderHistory(history) {
  const json = JSON.stringify(history);
  if (json === renderedHistory) return; // unchanged: keep the panels (and a reader's hover)
  renderedHistory = json;
  dataExtent = history.last === null ? null : { first: history.first, last: history.last };
  const box = $("history");
  const segments = Object.keys(history.series || {});
  releaseCharts("history");
  if (!history.times || history.times.length === 0) {
    box.replaceChildren(el("p", { class: "empty" }, rangeQuery() && dataExtent
      ? "No segment changes in this range." : "No segment changes yet: nothing to draw."));
    $("history-note").textContent = "";
    return;
  }
  segmentOrder = [...new Set([...segmentOrder, ...segments])].sort();
  const ordered = [...Object.keys(segmentNames).filter((s) => segments.includes(s)),
    ...segments.filter((s) => !(s in segmentNames))];
  const times = history.times;
  const t0 = times[0], t1 = times[times.length - 1];
  const panels = ordered.map((segment) => historyPanel("history", segment, times, history.series[segment]));
  box.replaceChildren(el("div", { id: "history-chart", class: "multiples" }, panels));
  $("history-note").textContent = `Event time, UTC, ${when(t0)} to ${when(t1)}; each panel has its own scale; `
    + "hover a panel for every segment's value at that time. "
    + `Rebuilt from today's counts and the ${fmt(history.changes)} changes ${rangeQuery() ? "in the range " : ""}`
    + "of the capped change stream: exact for the window shown.";
}

function section(title, body) {
  return el("div", {}, el("h3", {}, title), body);
}

// An API answer that is an error or says Redis is down, shown in the view's box instead of its content.
function shownFailure(box, data) {
  const failure = data.error || (data.redis && !data.redis.ok ? `Redis is unreachable: ${data.redis.error}` : "");
  if (failure) box.replaceChildren(el("p", { class: "na" }, failure));
  return Boolean(failure);
}

function renderUser(data) {
  const box = $("user-result");
  if (shownFailure(box, data)) return;
  if (!data.found) {
    box.replaceChildren(el("p", { class: "empty", id: "user-missing" }, `No data for user "${data.user}".`));
    return;
  }
  const segments = data.segments === null ? na("segments")
    : Object.keys(data.segments).length === 0 ? el("p", { class: "empty" }, "in no segment")
      : el("ul", { id: "user-segments" }, Object.entries(data.segments).sort().map(([s, ts]) =>
        el("li", { "data-segment": s }, segmentLink(s), " ", el("span", { class: "muted" }, `since ${when(ts)}`))));
  const model = data.model === null ? na("intent score and cluster") : kv([
    ["intent score", data.model.intent === "" || data.model.intent === undefined ? "not scored yet"
      : Number(data.model.intent).toFixed(3)],
    ["cluster", data.model.cluster === "" || data.model.cluster === undefined ? "not scored yet"
      : data.model.cluster_description ? `${data.model.cluster} (${data.model.cluster_description})`
        : data.model.cluster],
    ["model version", data.model.model_version === "0" ? "none yet" : (data.model.model_version ?? "–")],
    ["scored at", when(data.model.ts)]]);
  const recs = data.recommendations === null ? na("recommendations")
    : data.recommendations.suppressed
      ? el("p", { class: "empty", id: "user-recs-suppressed" },
        `suppressed (${data.recommendations.suppressed === "checkout" ? "checkout in progress"
          : data.recommendations.suppressed})`)
      : data.recommendations.items.length === 0 ? el("p", { class: "empty" }, "no candidates yet")
        : el("ol", { id: "user-recs" }, data.recommendations.items.map((r) => el("li", { "data-item": r.item },
          `${r.item} `, el("span", { class: "muted" }, Number(r.score).toFixed(3)), " ",
          el("span", { class: "reasons" }, r.why ?? ""))));
  const profile = data.profile === null ? na("profile") : kv(Object.entries(data.profile)
    .map(([k, v]) => [k, k === "first_seen" || k === "last_seen" ? when(v) : v]));
  // Features come grouped (activity, RFM, affinity, intent); bookkeeping fields hide behind a toggle.
  const groups = Object.entries(data.features ?? {}).filter(([group]) => group !== "engineering");
  const engineering = data.features?.engineering;
  const features = data.features === null ? [section("Features", na("features"))]
    : groups.map(([group, values]) => el("div", { "data-features": group }, el("h3", {}, `Features: ${group}`),
      kv(Object.entries(values))));
  const details = engineering ? el("details", { class: "engineering", id: "user-engineering" },
    el("summary", {}, "engineering fields"), kv(Object.entries(engineering))) : null;
  box.replaceChildren(el("div", { class: "user-grid", "data-user": data.user },
    section(`Segments of ${data.user}`, segments), section("Model", model), section("Recommendations", recs),
    ...features, section("Profile", profile)), details ?? "");
}

async function lookup(user) {
  $("user-key").value = user;
  renderUser(await api(`api/user?key=${encodeURIComponent(user)}`));
}

async function openSegment(id, page) {
  $("segment-title").textContent = segmentName(id);
  const data = await api(`api/segment/${encodeURIComponent(id)}?page=${page}`);
  const box = $("segment-result");
  if (shownFailure(box, data)) return;
  const def = data.definition;
  $("segment-title").textContent = def ? def.name : id;
  // Size over event time: the overview's panel for this segment, from the same history (and range).
  const history = await api("api/history");
  const sizes = history.series ? history.series[id] : undefined;
  releaseCharts("segment-size");
  const size = sizes && history.times.length > 0
    ? el("div", { id: "segment-size", class: "multiples" }, historyPanel("segment-size", id, history.times, sizes))
    : el("p", { class: "empty", id: "segment-size-empty" }, "No size history in the change stream.");
  const pages = Math.max(1, Math.ceil(data.total / data.page_size));
  const pageLink = (n, text) => (n < 0 || n >= pages ? el("span", { class: "muted" }, text)
    : el("a", { class: "nav", href: withRange(`${ROOT}segments/${encodeURIComponent(id)}?page=${n}`) }, text));
  const members = data.members.length === 0 ? el("p", { class: "empty", id: "segment-no-members" }, "No members now.")
    : el("table", { id: "segment-members" }, el("thead", {}, el("tr", {}, el("th", {}, "user"),
      el("th", {}, "member since (event time, UTC)"))),
    el("tbody", {}, data.members.map((m) => el("tr", { "data-user": m.user }, el("td", {}, userLink(m.user)),
      el("td", { class: "nowrap" }, when(m.since))))));
  const daily = data.daily.length === 0 ? el("p", { class: "empty" }, rangeQuery()
    ? "No changes of this segment in this range." : "No changes of this segment in the stream.")
    : el("table", { id: "segment-daily" }, el("thead", {}, el("tr", {}, el("th", {}, "day (UTC)"),
      el("th", { class: "num" }, "entered"), el("th", { class: "num" }, "left"))),
    el("tbody", {}, data.daily.slice().reverse().map((d) => el("tr", { "data-day": d.day }, el("td", {}, d.day),
      el("td", { class: "num enter" }, fmt(d.enter)), el("td", { class: "num exit" }, fmt(d.exit))))));
  // The most frequent causes of entry and of exit, in words, over the same changes as the daily counts.
  const causes = (action, title) => el("div", {}, el("h3", {}, title), data.causes[action].length === 0
    ? el("p", { class: "empty" }, rangeQuery() ? "None in this range." : "None in the stream.")
    : el("table", { id: `segment-causes-${action}` }, el("tbody", {}, data.causes[action].map((c) =>
      el("tr", { "data-cause": c.cause }, el("td", {}, c.cause),
        el("td", { class: `num ${action}` }, fmt(c.count)))))));
  box.replaceChildren(el("div", { id: "segment-view", "data-segment": id },
    el("p", { class: "muted" }, `${id}`, def && def.group ? ` · group ${def.group}` : "",
      def && def.status ? ` · ${def.status}` : "", def ? "" : " · not a defined segment"),
    def && def.description ? el("p", {}, def.description) : null,
    el("h3", {}, "Size over event time"), size,
    el("div", { class: "segment-grid" },
      el("div", {}, el("h3", {}, el("span", { id: "segment-total" }, fmt(data.total)), " members, newest first"),
        el("p", { class: "pager" }, pageLink(data.page - 1, "← newer"), `page ${data.page + 1} of ${pages}`,
          pageLink(data.page + 1, "older →"),
          el("a", { href: `${ROOT}segments/${encodeURIComponent(id)}/members.csv`, download: "", id: "segment-csv" },
            "download all as CSV")),
        members),
      el("div", {}, el("h3", {}, "Entered and left per day"), daily,
        causes("enter", "Top causes of entry"), causes("exit", "Top causes of exit"),
        el("p", { class: "muted" }, `From the ${fmt(data.changes_kept)} changes the capped stream still holds`
          + (rangeQuery() ? ", in the range only." : "."))))));
}

// The view follows the URL: /segments/<id>[?page=n], /users/<key>, anything else the overview.
function route() {
  if (rangeChanged()) refresh();
  const path = location.pathname.startsWith(ROOT) ? location.pathname.slice(ROOT.length) : "";
  const user = path.match(/^users\/(.+)$/);
  const segment = path.match(/^segments\/([^/]+)$/);
  if (user) {
    document.body.dataset.view = "user";
    lookup(decodeURIComponent(user[1]));
  } else if (segment) {
    document.body.dataset.view = "segment";
    const page = Number(new URLSearchParams(location.search).get("page")) || 0;
    openSegment(decodeURIComponent(segment[1]), Math.max(0, page));
  } else {
    document.body.dataset.view = "overview";
  }
  window.scrollTo(0, 0);
}

function navigate(url) {
  if (url !== location.pathname + location.search) history.pushState(null, "", url);
  route();
}

// The range control shows the URL's range; a new range redraws the feed and the chart.
let appliedRange = null;
function rangeChanged() {
  const range = rangeParams();
  $("range-from").value = (range.get("from") || "").slice(0, 10);
  $("range-to").value = (range.get("to") || "").slice(0, 10);
  $("range-form").classList.remove("bad");
  $("range-shown").textContent = range.toString()
    ? `event time ${range.get("from") || "…"} to ${range.get("to") || "…"}` : "all event time";
  if (appliedRange === range.toString()) return false;
  appliedRange = range.toString();
  seenChanges = new Set();
  historyDue = true;
  return true;
}

function setRange(from, to) {
  const url = new URL(location.href);
  for (const [k, v] of [["from", from], ["to", to]]) {
    if (v) url.searchParams.set(k, v);
    else url.searchParams.delete(k);
  }
  navigate(url.pathname + url.search);
}

const utcDay = (ms) => new Date(ms).toISOString().slice(0, 10);
$("range-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setRange($("range-from").value, $("range-to").value);
});
$("range-all").addEventListener("click", () => setRange("", ""));
$("range-week").addEventListener("click", () => {
  if (dataExtent) setRange(utcDay(dataExtent.last - 6 * DAY), utcDay(dataExtent.last));
});

// In-page links keep the page (and its polling) and push the URL; a modified click (new tab) is the browser's.
document.addEventListener("click", (event) => {
  const link = event.target.closest("a.nav, a.user, a.segment");
  if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  navigate(withRange(link.getAttribute("href")));
});
window.addEventListener("popstate", route);

async function refresh() {
  const range = rangeQuery();
  let data;
  try {
    data = await api("api/overview");
  } catch (error) {
    setBanner(`The dashboard server does not answer (${error}); retrying every ${REFRESH_MS / 1000} s.`, true);
    $("redis-status").textContent = "no server";
    $("redis-status").className = "pill bad";
    return;
  }
  if (data.error || range !== rangeQuery()) return; // a bad range (said by api), or the range changed meanwhile
  renderStatus(data.redis);
  if (!data.redis.ok) {
    setBanner(`Redis is unreachable at ${data.redis.url}: ${data.redis.error}. Nothing below is current; `
      + `retrying every ${REFRESH_MS / 1000} s.`, true);
    return;
  }
  setBanner(data.empty ? `Redis is up but holds no data under the prefix "${data.redis.prefix}" yet: `
    + "start the job (personalize demo, or personalize run)." : "", false);
  renderSegments(data.catalog, data.segments, data.users_seen);
  renderFeed(data.changes);
  renderRules(data.rules, data.rule_instances);
  renderModel(data.model, data.clusters, data.model_instances);
  renderExperiments(data.experiments);
  renderDrift(data.drift);
  renderDeadletters(data.deadletters);
  if (historyDue || tick % HISTORY_EVERY === 0) {
    historyDue = false;
    try {
      const history = await api("api/history");
      if (history.redis && history.redis.ok && range === rangeQuery()) renderHistory(history);
    } catch (error) { /* the next overview refresh reports the problem */ }
  }
  tick += 1;
  document.body.dataset.loaded = String(tick);
}

$("user-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const user = $("user-key").value.trim();
  if (user) navigate(withRange(`${ROOT}users/${encodeURIComponent(user)}`));
});

async function loop() {
  await refresh();
  setTimeout(loop, REFRESH_MS);
}
// The first overview brings the segments' display names; then the URL's view opens.
rangeChanged();
refresh().then(route).finally(() => setTimeout(loop, REFRESH_MS));
