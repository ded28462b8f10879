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

function usd(text, attributes) {
  return el("span", { class: "usd", "data-usd": fromPico(toPico(text)), ...(attributes || {}) }, "$" + fromPico(toPico(text)));
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

// A table of spend rows (the report's shape) with a footer of exact totals.
function spendTable(rows, keys, extra) {
  const columns = keys.map((key) => [key, (row) => row[key] ?? "–", false]).concat(extra || [], [
    ["requests", (row) => row.requests, true],
    ["input tokens", (row) => row.input_tokens, true],
    ["output tokens", (row) => row.output_tokens, true],
    ["cost", (row) => usd(row.cost_usd), true],
    ["saved", (row) => usd(row.saved_usd), true],
    ["unpriced", (row) => row.unpriced, true],
  ]);
  const head = el("tr", {}, ...columns.map(([name, , numeric]) => el("th", numeric ? { class: "n" } : {}, name)));
  const body = rows.map((row) => el("tr", {}, ...columns.map(([, cell, numeric]) => el("td", numeric ? { class: "n" } : {}, cell(row)))));
  const sum = (field) => rows.reduce((total, row) => total + BigInt(row[field]), 0n);
  const cost = rows.reduce((total, row) => total + toPico(row.cost_usd), 0n);
  const saved = rows.reduce((total, row) => total + toPico(row.saved_usd), 0n);
  const foot = el("tr", {},
    el("td", { colspan: String(columns.length - 6) }, "Total"),
    el("td", { class: "n", id: "total-requests" }, sum("requests").toString()),
    el("td", { class: "n" }, sum("input_tokens").toString()),
    el("td", { class: "n" }, sum("output_tokens").toString()),
    el("td", { class: "n" }, usd(fromPico(cost), { id: "total-cost" })),
    el("td", { class: "n" }, usd(fromPico(saved), { id: "total-saved" })),
    el("td", { class: "n" }, sum("unpriced").toString()));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...body), el("tfoot", {}, foot));
}

function dayChart(summary) {
  const [first, following] = [summary.since, summary.until];
  const days = [];
  for (let day = new Date(first + "T00:00:00Z"); day < new Date(following + "T00:00:00Z"); day.setUTCDate(day.getUTCDate() + 1)) {
    days.push(day.toISOString().slice(0, 10));
  }
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
    tip.textContent = `${day}: $${spend[day] || 0}`;
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
    return [
      el("h2", {}, `Overview: ${label}`),
      el("div", { class: "cards" },
        card("Spend today", usd(summary.today_totals.cost_usd, { id: "spend-today" })),
        card(current ? "Period to date" : "Period total", usd(period.cost_usd, { id: "spend-month" })),
        card("Projection to the period's end", usd(summary.projected_month_usd, { id: "projection" })),
        card("Requests in the period", el("span", { id: "requests-month" }, String(period.requests))),
        card("Saved by cache and routing", usd(period.saved_usd, { id: "saved-month" }))),
      dayChart(summary),
    ];
  },
  async teams(summary, first, following, label) {
    const rows = await api(`/api/spend?by=team&since=${first}&until=${following}`);
    return [el("h2", {}, `Teams: ${label}`), spendTable(rows, ["team"])];
  },
  async apps(summary, first, following, label) {
    const rows = await api(`/api/spend?by=app,feature&since=${first}&until=${following}`);
    return [el("h2", {}, `Apps and features: ${label}`), spendTable(rows, ["app", "feature"])];
  },
  async models(summary, first, following, label) {
    const rows = await api(`/api/spend?by=provider,model&since=${first}&until=${following}`);
    const perThousand = ["cost per 1k requests", (row) => usd(fromPico((toPico(row.cost_usd) * 1000n) / BigInt(row.requests))), true];
    return [el("h2", {}, `Models: ${label}`), spendTable(rows, ["provider", "model"], [perThousand])];
  },
  async keys(summary, first, following, label) {
    const rows = await api(`/api/keys?since=${first}&until=${following}`);
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
    return [el("h2", {}, `Keys: ${label}`), spendTable(rows, ["key"], extra)];
  },
  async clients(summary, first, following, label) {
    const rows = await api(`/api/spend?by=client&since=${first}&until=${following}`);
    return [el("h2", {}, `Client programs: ${label}`), spendTable(rows, ["client"])];
  },
  async sessions(summary, first, following, label) {
    const rows = await api(`/api/sessions?top=50&since=${first}&until=${following}`);
    const extra = [
      ["teams", (row) => row.teams.join(" "), false],
      ["models", (row) => row.models.join(" "), false],
      ["first call", (row) => row.first_call, false],
      ["duration (s)", (row) => row.duration_seconds, true],
    ];
    return [el("h2", {}, `Most expensive sessions: ${label}`), spendTable(rows, ["session_id"], extra)];
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
      el("p", {}, `Open reservations: $${report.open_reservations_usd}`)];
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
