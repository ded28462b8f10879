// The modeltrack dashboard: one page per #hash, each drawn from the admin JSON API for a
// period kept in the hash too (#teams?month=2026-10, #keys?from=2026-10-01&to=2026-10-15;
// the current month when none), so a view can be shared by its URL.
// Money arrives as exact decimal strings and is added up as BigInt picodollars, never
// as floating point, so a total shown here equals the SQLite total to the last digit.
// Every value from the API is placed with textContent: labels are chosen by callers.
"use strict";

const PICO = 10n ** 12n;

function toPico(text) {
  const [whole, fraction = ""] = String(text).replace("-", "").split(".");
  const value = BigInt(whole || "0") * PICO + BigInt((fraction + "000000000000").slice(0, 12));
  return String(text).startsWith("-") ? -value : value;
}

function fromPico(value) {
  const sign = value < 0n ? "-" : "";
  if (value < 0n) value = -value;
  const fraction = (value % PICO).toString().padStart(12, "0").replace(/0+$/, "");
  return sign + (value / PICO).toString() + (fraction ? "." + fraction : "");
}

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child === null || child === undefined ? "–" : String(child)));
  }
  return node;
}

// 1234567 -> "1,234,567" (digits of a BigInt or a number, grouped by three).
function grouped(value) {
  const digits = String(value);
  const sign = digits.startsWith("-") ? "-" : "";
  return sign + digits.replace("-", "").replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

// Money for people: to the cent (half up), grouped; "<$0.01" for less than a cent.
function money(text) {
  const pico = toPico(text), negative = pico < 0n, size = negative ? -pico : pico;
  const cents = (size + PICO / 200n) / (PICO / 100n);
  if (size > 0n && cents === 0n) return (negative ? "-" : "") + "<$0.01";
  return (negative ? "-" : "") + "$" + grouped(cents / 100n) + "." + (cents % 100n).toString().padStart(2, "0");
}

// A cost as shown (to the cent), the exact figure on hover and in data-usd.
function usd(text, attributes) {
  const exact = fromPico(toPico(text));
  return el("span", { class: "usd", "data-usd": exact, title: "$" + exact, ...(attributes || {}) }, money(exact));
}

const COLORS = ["#2f6fde", "#e07b39", "#3aa76d", "#a45ee5", "#d64550", "#1fa3b3", "#c9a227", "#5b6b8c", "#b0b7c3"];
const SVG = "http://www.w3.org/2000/svg";

function svgNode(tag, attributes) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function periodDays(first, following) {
  const days = [];
  for (let day = new Date(first + "T00:00:00Z"); day < new Date(following + "T00:00:00Z"); day.setUTCDate(day.getUTCDate() + 1)) {
    days.push(day.toISOString().slice(0, 10));
  }
  return days;
}

// Spend by day, stacked by a dimension: its 8 costliest values, the rest as "other".
function stackedChart(rows, key, first, following, title) {
  const days = periodDays(first, following);
  const totals = new Map();
  for (const row of rows) totals.set(row[key] ?? "–", (totals.get(row[key] ?? "–") || 0n) + toPico(row.cost_usd));
  const ranked = [...totals.entries()].sort((a, b) => (b[1] > a[1] ? 1 : b[1] < a[1] ? -1 : 0)).map(([name]) => name);
  const shown = ranked.slice(0, 8), other = ranked.length > 8;
  const series = other ? [...shown, "other"] : shown;
  const spend = new Map();  // day -> series -> pico
  for (const row of rows) {
    const name = shown.includes(row[key] ?? "–") ? row[key] ?? "–" : "other";
    const day = spend.get(row.day) || new Map();
    day.set(name, (day.get(name) || 0n) + toPico(row.cost_usd));
    spend.set(row.day, day);
  }
  const dayTotal = (day) => [...(spend.get(day) || new Map()).values()].reduce((a, b) => a + b, 0n);
  const most = days.reduce((m, day) => (dayTotal(day) > m ? dayTotal(day) : m), 1n);
  const width = 24, height = 160;
  const svg = svgNode("svg", { viewBox: `0 0 ${days.length * width} ${height + 16}`, role: "img", "aria-label": title });
  days.forEach((day, i) => {
    let top = height;
    series.forEach((name, s) => {
      const value = (spend.get(day) || new Map()).get(name) || 0n;
      if (!value) return;
      const h = Number((value * 1000000n) / most) / 1000000 * height;
      top -= h;
      const bar = svgNode("rect", {
        x: i * width + 3, y: top, width: width - 6, height: h, fill: COLORS[s], "data-day": day, "data-series": name,
        "data-usd": fromPico(value),
      });
      const tip = svgNode("title", {});
      tip.textContent = `${day} ${name}: ${money(fromPico(value))}`;
      bar.append(tip);
      svg.append(bar);
    });
    const label = svgNode("text", { x: i * width + width / 2, y: height + 12, "text-anchor": "middle" });
    label.textContent = day.slice(8);
    svg.append(label);
  });
  const legend = el("ul", { class: "legend" }, ...series.map((name, s) => {
    const swatch = el("span", { class: "swatch" });
    swatch.style.background = COLORS[s];  // CSSOM, allowed by the CSP
    return el("li", { "data-series": name }, swatch, name);
  }));
  return el("div", { class: "chart", id: "chart" }, el("h2", {}, title), svg, legend);
}

// The period as long as this one, just before it.
function previousPeriod(first, following) {
  const start = new Date(first + "T00:00:00Z"), end = new Date(following + "T00:00:00Z");
  const before = new Date(start.getTime() - (end - start));
  return [before.toISOString().slice(0, 10), first];
}

function change(now, before) {
  if (before === 0n) return now === 0n ? "–" : "new";
  const tenths = ((now - before) * 1000n) / before;
  const sign = tenths > 0n ? "+" : tenths < 0n ? "-" : "";
  const size = tenths < 0n ? -tenths : tenths;
  return `${sign}${grouped(size / 10n)}.${size % 10n}%`;
}

// A dimension's page: its chart over the period, its change against the period before,
// and its table.
async function dimensionPage(dimension, by, first, following, label, heading, extra) {
  const [previousFirst, previousFollowing] = previousPeriod(first, following);
  const [rows, daily, before] = await Promise.all([
    api(`/api/spend?by=${by.join(",")}&since=${first}&until=${following}`),
    api(`/api/spend?by=day,${dimension}&since=${first}&until=${following}`),
    api(`/api/spend?by=${dimension}&since=${previousFirst}&until=${previousFollowing}`),
  ]);
  const earlier = new Map(before.map((row) => [row[dimension] ?? "–", toPico(row.cost_usd)]));
  const now = rows.reduce((total, row) => total + toPico(row.cost_usd), 0n);
  const then = before.reduce((total, row) => total + toPico(row.cost_usd), 0n);
  const versus = ["vs previous", (row) => change(toPico(row.cost_usd), earlier.get(row[dimension] ?? "–") || 0n), true, null];
  return [
    el("h2", {}, `${heading}: ${label}`),
    el("div", { class: "cards" },
      card(`Spend`, usd(fromPico(now))),
      card(`Against the ${periodDays(previousFirst, previousFollowing).length} days before`,
        el("span", { id: "change" }, change(now, then)))),
    stackedChart(daily, dimension, first, following, `Spend by day and ${dimension}`),
    spendTable(rows, by, [...(extra || []), ...(by.length === 1 ? [versus] : [])], heading.toLowerCase()),
  ];
}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) {
    window.location.reload();  // the sign-in page
    throw new Error("signed out");
  }
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

function monthBounds(month) {
  const [year, number] = month.split("-").map(Number);
  const following = number === 12 ? `${year + 1}-01` : `${year}-${String(number + 1).padStart(2, "0")}`;
  return [month + "-01", following + "-01"];
}

function nextDay(day) {
  const next = new Date(day + "T00:00:00Z");
  next.setUTCDate(next.getUTCDate() + 1);
  return next.toISOString().slice(0, 10);
}

const MONTH = /^\d{4}-(0[1-9]|1[0-2])$/, DAY = /^\d{4}-\d{2}-\d{2}$/;

// The page and period a hash names: {name, query (for the API: since/until), label, params}.
function route() {
  const [name, search] = (location.hash || "#overview").slice(1).split("?");
  const params = new URLSearchParams(search || "");
  const month = params.get("month"), from = params.get("from"), to = params.get("to");
  if (month && MONTH.test(month)) {
    const [since, until] = monthBounds(month);
    return { name, since, until, label: month, params: `month=${month}` };
  }
  if (from && to && DAY.test(from) && DAY.test(to) && from <= to) {
    return { name, since: from, until: nextDay(to), label: `${from} to ${to}`, params: `from=${from}&to=${to}` };
  }
  return { name, since: null, until: null, label: null, params: "" };
}

function card(label, value) {
  return el("div", { class: "card" }, el("div", { class: "label" }, label), el("div", { class: "value" }, value));
}

// A table of spend rows (the report's shape) with a footer of exact totals, columns that
// sort when their heading is clicked, and the rows as CSV (exact figures) to download.
function spendTable(rows, keys, extra, name) {
  const text = (row, key) => row[key] ?? "–";
  const columns = keys.map((key) => [key, (row) => text(row, key), false, (row) => String(text(row, key))]).concat(
    (extra || []).map(([title, cell, numeric, sort]) => [title, cell, numeric, sort === undefined ? (row) => String(cell(row)) : sort]), [
      ["requests", (row) => grouped(row.requests), true, (row) => BigInt(row.requests)],
      ["input tokens", (row) => grouped(row.input_tokens), true, (row) => BigInt(row.input_tokens)],
      ["output tokens", (row) => grouped(row.output_tokens), true, (row) => BigInt(row.output_tokens)],
      ["cost", (row) => usd(row.cost_usd), true, (row) => toPico(row.cost_usd)],
      ["saved", (row) => usd(row.saved_usd), true, (row) => toPico(row.saved_usd)],
      ["unpriced", (row) => grouped(row.unpriced), true, (row) => BigInt(row.unpriced)],
    ]);
  const body = el("tbody", {});
  const fill = (ordered) => body.replaceChildren(...ordered.map((row) =>
    el("tr", {}, ...columns.map(([, cell, numeric]) => el("td", numeric ? { class: "n" } : {}, cell(row))))));
  let sorted = { column: -1, descending: true };
  const head = el("tr", {}, ...columns.map(([title, , numeric, sort], i) => {
    const th = el("th", { class: (numeric ? "n " : "") + "sortable", "data-column": title }, title);
    if (sort) {
      th.addEventListener("click", () => {
        sorted = { column: i, descending: sorted.column === i ? !sorted.descending : numeric };
        const ordered = [...rows].sort((a, b) => {
          const x = sort(a), y = sort(b);
          const order = x < y ? -1 : x > y ? 1 : 0;
          return sorted.descending ? -order : order;
        });
        fill(ordered);
      });
    }
    return th;
  }));
  fill(rows);
  const sum = (field) => rows.reduce((total, row) => total + BigInt(row[field]), 0n);
  const cost = rows.reduce((total, row) => total + toPico(row.cost_usd), 0n);
  const saved = rows.reduce((total, row) => total + toPico(row.saved_usd), 0n);
  const foot = el("tr", {},
    el("td", { colspan: String(columns.length - 6) }, "Total"),
    el("td", { class: "n", id: "total-requests", "data-value": sum("requests").toString() }, grouped(sum("requests"))),
    el("td", { class: "n" }, grouped(sum("input_tokens"))),
    el("td", { class: "n" }, grouped(sum("output_tokens"))),
    el("td", { class: "n" }, usd(fromPico(cost), { id: "total-cost" })),
    el("td", { class: "n" }, usd(fromPico(saved), { id: "total-saved" })),
    el("td", { class: "n" }, grouped(sum("unpriced"))));
  const table = el("table", { id: "spend" }, el("thead", {}, head), body, el("tfoot", {}, foot));
  return el("div", {}, table, csvLink(rows, keys, name || "spend"));
}

// The rows as CSV, exact as the API gives them.
function csvLink(rows, keys, name) {
  const fields = [...keys, "requests", "input_tokens", "output_tokens", "cost_usd", "saved_usd", "unpriced"];
  const quote = (value) => {
    const cell = value === null || value === undefined ? "" : String(value);
    return /[",\n]/.test(cell) ? `"${cell.replace(/"/g, '""')}"` : cell;
  };
  const csv = [fields.join(","), ...rows.map((row) => fields.map((field) => quote(row[field])).join(","))].join("\n") + "\n";
  const link = el("a", { id: "csv", class: "csv", download: `modeltrack-${name}.csv` }, "Download CSV");
  link.setAttribute("href", URL.createObjectURL(new Blob([csv], { type: "text/csv" })));
  return link;
}

function dayChart(summary) {
  const days = periodDays(summary.since, summary.until);
  const spend = Object.fromEntries(summary.by_day.map((row) => [row.day, Number(row.cost_usd)]));
  const most = Math.max(...days.map((day) => spend[day] || 0), 1e-12);
  const width = 24, height = 140;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${days.length * width} ${height + 16}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "Spend by day");
  days.forEach((day, i) => {
    const bar = document.createElementNS(svg.namespaceURI, "rect");
    const h = ((spend[day] || 0) / most) * height;
    bar.setAttribute("x", i * width + 3);
    bar.setAttribute("y", height - h);
    bar.setAttribute("width", width - 6);
    bar.setAttribute("height", h);
    bar.setAttribute("data-day", day);
    const tip = document.createElementNS(svg.namespaceURI, "title");
    tip.textContent = `${day}: ${money(String(spend[day] || 0))}`;
    bar.append(tip);
    const label = document.createElementNS(svg.namespaceURI, "text");
    label.setAttribute("x", i * width + width / 2);
    label.setAttribute("y", height + 12);
    label.setAttribute("text-anchor", "middle");
    label.textContent = day.slice(8);
    svg.append(bar, label);
  });
  return el("div", { class: "chart" }, el("h2", {}, "Spend by day"), svg);
}

const pages = {
  async overview(summary, first, following, label) {
    const period = summary.month_totals;
    const current = summary.today >= first && summary.today < following;
    const [previousFirst, previousFollowing] = previousPeriod(first, following);
    const before = await api(`/api/summary?since=${previousFirst}&until=${previousFollowing}`);
    return [
      el("h2", {}, `Overview: ${label}`),
      el("div", { class: "cards" },
        card("Spend today", usd(summary.today_totals.cost_usd, { id: "spend-today" })),
        card(current ? "Period to date" : "Period total", usd(period.cost_usd, { id: "spend-month" })),
        card("Projection to the period's end", usd(summary.projected_month_usd, { id: "projection" })),
        card("Requests in the period", el("span", { id: "requests-month", "data-value": String(period.requests) }, grouped(period.requests))),
        card("Saved by cache and routing", usd(period.saved_usd, { id: "saved-month" })),
        card(`Against the ${periodDays(previousFirst, previousFollowing).length} days before`,
          el("span", { id: "change" }, change(toPico(period.cost_usd), toPico(before.month_totals.cost_usd))))),
      dayChart(summary),
    ];
  },
  async teams(summary, first, following, label) {
    return dimensionPage("team", ["team"], first, following, label, "Teams");
  },
  async apps(summary, first, following, label) {
    return dimensionPage("app", ["app", "feature"], first, following, label, "Apps and features");
  },
  async models(summary, first, following, label) {
    const perThousand = ["cost per 1k requests", (row) => usd(fromPico((toPico(row.cost_usd) * 1000n) / BigInt(row.requests))), true,
      (row) => (toPico(row.cost_usd) * 1000n) / BigInt(row.requests)];
    return dimensionPage("model", ["provider", "model"], first, following, label, "Models", [perThousand]);
  },
  async keys(summary, first, following, label) {
    const [rows, daily] = await Promise.all([
      api(`/api/keys?since=${first}&until=${following}`),
      api(`/api/spend?by=day,key&since=${first}&until=${following}`),
    ]);
    const budget = (row) => {
      if (!row.budgets || !row.budgets.length) return "–";
      return row.budgets.map((b) => `${b.percent}% of $${b.limit_usd} (${b.period}, ${b.action})`).join("; ");
    };
    const extra = [
      ["team", (row) => row.team ?? "–", false],
      ["app", (row) => row.app ?? "–", false],
      ["key ids", (row) => (row.listed_key_ids || row.key_ids).join(" "), false],
      ["last call", (row) => row.last_call ?? "never", false],
      ["budget (today)", budget, false],
    ];
    return [el("h2", {}, `Keys: ${label}`), stackedChart(daily, "key", first, following, "Spend by day and key"),
      spendTable(rows, ["key"], extra, "keys")];
  },
  async clients(summary, first, following, label) {
    return dimensionPage("client", ["client"], first, following, label, "Client programs");
  },
  async sessions(summary, first, following, label) {
    const rows = await api(`/api/sessions?top=50&since=${first}&until=${following}`);
    const extra = [
      ["teams", (row) => row.teams.join(" "), false],
      ["models", (row) => row.models.join(" "), false],
      ["first call", (row) => row.first_call, false],
      ["duration (s)", (row) => row.duration_seconds, true],
    ];
    return [el("h2", {}, `Most expensive sessions: ${label}`), spendTable(rows, ["session_id"], extra, "sessions")];
  },
  async budgets() {
    const report = await api("/api/budgets");
    if (!report.budgets.length) return [el("h2", {}, "Budgets"), el("p", {}, "No budgets.json: no budgets are set.")];
    // Budgets stand in their own current periods, whatever period the other pages show.
    const rows = report.budgets.map((budget) => {
      const state = budget.percent >= 100 ? (budget.action === "block" ? "blocked" : "over") : budget.percent >= budget.warn_at_percent ? "warning" : "ok";
      const fill = el("span");
      fill.style.width = `${Math.min(budget.percent, 100)}%`;  // CSSOM, allowed by the CSP
      const bar = el("div", { class: `bar ${state}-state`, title: `${budget.percent}%` }, fill);
      return el("tr", { "data-scope": budget.scope },
        el("td", {}, budget.scope), el("td", {}, `${budget.period} (${budget.period_key})`), el("td", {}, budget.action),
        el("td", { class: "n" }, usd(budget.spend_usd)), el("td", { class: "n" }, usd(budget.limit_usd)),
        el("td", {}, bar), el("td", { class: "n" }, `${budget.percent}%`), el("td", { class: `state ${state}` }, state));
    });
    const head = el("tr", {}, ...["scope", "period", "action", "spent", "limit", "", "used", "state"].map((name) => el("th", {}, name)));
    return [el("h2", {}, "Budgets"), el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)),
      el("p", {}, "Open reservations: ", usd(report.open_reservations_usd))];
  },
  async fleet(summary) {
    const report = await api("/api/fleet");
    const age = (instant) => {
      if (!instant) return "–";
      const seconds = Math.max(0, Math.round((Date.parse(summary.now || new Date().toISOString()) - Date.parse(instant)) / 1000));
      return seconds < 120 ? `${seconds} s ago` : seconds < 7200 ? `${Math.round(seconds / 60)} min ago` : `${Math.round(seconds / 3600)} h ago`;
    };
    const head = el("tr", {}, ...["instance", "events shipped", "last event", "last shipped", "lag (events)", "lag (bytes)"]
      .map((name, i) => el("th", i && i !== 2 && i !== 3 ? { class: "n" } : {}, name)));
    const rows = report.instances.map((row) => el("tr", { "data-instance": row.instance },
      el("td", {}, row.instance), el("td", { class: "n", "data-value": String(row.events) }, grouped(row.events)),
      el("td", { title: row.last_event_at || "" }, age(row.last_event_at)), el("td", { title: row.shipped_at || "" }, age(row.shipped_at)),
      el("td", { class: "n" }, grouped(row.lag_events)), el("td", { class: "n" }, grouped(row.lag_bytes))));
    const total = report.instances.reduce((sum, row) => sum + BigInt(row.events), 0n);
    return [
      el("h2", {}, report.store ? "Fleet: every instance shipping to the store" : "Fleet: this instance (no --store)"),
      el("div", { class: "cards" }, card("Instances", String(report.instances.length)),
        card("Events in the store", el("span", { id: "fleet-events", "data-value": total.toString() }, grouped(total)))),
      el("table", { id: "fleet" }, el("thead", {}, head), el("tbody", {}, ...rows)),
    ];
  },
  async reconciliation() {
    const result = await api("/api/reconciliation");
    if (!result.ran_at) {
      return [el("h2", {}, "Reconciliation"), el("p", {}, "Not run yet: modeltrack reconcile --fetch anthropic --fetch openai (or the modeltrack-reconcile timer).")];
    }
    const kinds = ["input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "cost_usd"];
    const compared = (c) => (c ? `${c.logged} / ${c.provider}` + (c.diff_pct === null ? "" : ` (${c.diff_pct > 0 ? "+" : ""}${c.diff_pct}%)`) : "–");
    const head = el("tr", {}, ...["day", "provider", "model", "key", ...kinds.map((k) => k + " (logged / provider)"), ""].map((name) => el("th", {}, name)));
    const rows = result.rows.map((row) => el("tr", { class: row.bypass ? "bypass" : "" },
      el("td", {}, row.day), el("td", {}, row.provider), el("td", {}, row.model ?? "–"), el("td", {}, row.key ?? "–"),
      ...kinds.map((kind) => el("td", { class: "n" }, compared(row[kind]))),
      el("td", {}, row.bypass ? "bypassed the proxy" : "")));
    const shares = Object.entries(result.summary).map(([provider, s]) =>
      el("li", {}, `${provider}: the log saw ${(s.seen_share * 100).toFixed(2)}% of what it reports (by ${s.basis}); ${s.bypass_rows} row(s) bypassed the proxy`));
    return [el("h2", {}, `Reconciliation (run ${result.ran_at}, tolerance ${result.tolerance_pct}%)`), el("ul", {}, ...shares),
      el("table", { id: "reconciliation" }, el("thead", {}, head), el("tbody", {}, ...rows))];
  },
};

async function show() {
  const where = route();
  const name = pages[where.name] ? where.name : "overview";
  const draw = pages[name];
  const page = document.getElementById("page");
  page.dataset.state = "loading";
  for (const link of document.querySelectorAll("nav a")) {
    const target = link.dataset.page;
    link.setAttribute("href", "#" + target + (where.params ? "?" + where.params : ""));
    link.classList.toggle("current", target === name);
  }
  try {
    const period = where.since ? `?since=${where.since}&until=${where.until}` : "";
    const summary = await api("/api/summary" + period);
    const [first, following] = [summary.since, summary.until];
    const label = where.label || summary.month;
    showPeriod(where, summary);
    const unpriced = summary.month_totals.unpriced;
    const banner = document.getElementById("unpriced");
    banner.hidden = !unpriced;
    banner.textContent = unpriced
      ? `${unpriced} call${unpriced === 1 ? "" : "s"} in ${label} had no known price: their cost is not in these totals. Add the model to pricing.json.`
      : "";
    page.replaceChildren(...(await draw(summary, first, following, label)));
    document.getElementById("as-of").textContent = `Period: ${label}. Today (UTC): ${summary.today}.`;
    page.dataset.page = name;
    page.dataset.state = "ready";
  } catch (error) {
    page.replaceChildren(el("p", { class: "error" }, "Could not load: " + error.message));
    page.dataset.state = "error";
  }
}

// The period form shows the period in force, and moves the hash to the one chosen.
function showPeriod(where, summary) {
  document.getElementById("period-month").value = where.label && MONTH.test(where.label) ? where.label : (where.since ? "" : summary.month);
  document.getElementById("period-from").value = where.since && !MONTH.test(where.label) ? where.since : "";
  document.getElementById("period-to").value = where.since && !MONTH.test(where.label) ? new URLSearchParams(where.params).get("to") : "";
}

function choosePeriod(params) {
  location.hash = "#" + route().name + (params ? "?" + params : "");
}

document.getElementById("period-month").addEventListener("change", (event) => {
  if (MONTH.test(event.target.value)) choosePeriod(`month=${event.target.value}`);
});
document.getElementById("period").addEventListener("submit", (event) => {
  event.preventDefault();
  const from = document.getElementById("period-from").value, to = document.getElementById("period-to").value;
  if (DAY.test(from) && DAY.test(to) && from <= to) choosePeriod(`from=${from}&to=${to}`);
});
document.getElementById("period-current").addEventListener("click", () => choosePeriod(""));

window.addEventListener("hashchange", show);
show();
