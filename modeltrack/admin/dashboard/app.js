// The modeltrack dashboard: one page per #hash, each drawn from the admin JSON API.
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
  const [first, following] = monthBounds(summary.month);
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
  async overview(summary) {
    const month = summary.month_totals;
    return [
      el("h2", {}, `Overview: ${summary.month}`),
      el("div", { class: "cards" },
        card("Spend today", usd(summary.today_totals.cost_usd, { id: "spend-today" })),
        card("Month to date", usd(month.cost_usd, { id: "spend-month" })),
        card("Month-end projection", usd(summary.projected_month_usd, { id: "projection" })),
        card("Requests this month", el("span", { id: "requests-month" }, String(month.requests))),
        card("Saved by cache and routing", usd(month.saved_usd, { id: "saved-month" }))),
      dayChart(summary),
    ];
  },
  async teams(summary, first, following) {
    const rows = await api(`/api/spend?by=team&since=${first}&until=${following}`);
    return [el("h2", {}, `Teams: ${summary.month}`), spendTable(rows, ["team"])];
  },
  async apps(summary, first, following) {
    const rows = await api(`/api/spend?by=app,feature&since=${first}&until=${following}`);
    return [el("h2", {}, `Apps and features: ${summary.month}`), spendTable(rows, ["app", "feature"])];
  },
  async models(summary, first, following) {
    const rows = await api(`/api/spend?by=provider,model&since=${first}&until=${following}`);
    const perThousand = ["cost per 1k requests", (row) => usd(fromPico((toPico(row.cost_usd) * 1000n) / BigInt(row.requests))), true];
    return [el("h2", {}, `Models: ${summary.month}`), spendTable(rows, ["provider", "model"], [perThousand])];
  },
  async sessions(summary, first, following) {
    const rows = await api(`/api/sessions?top=50&since=${first}&until=${following}`);
    const extra = [
      ["teams", (row) => row.teams.join(" "), false],
      ["models", (row) => row.models.join(" "), false],
      ["first call", (row) => row.first_call, false],
      ["duration (s)", (row) => row.duration_seconds, true],
    ];
    return [el("h2", {}, `Most expensive sessions: ${summary.month}`), spendTable(rows, ["session_id"], extra)];
  },
  async budgets() {
    const report = await api("/api/budgets");
    if (!report.budgets.length) return [el("h2", {}, "Budgets"), el("p", {}, "No budgets.json: no budgets are set.")];
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
};

async function show() {
  const name = (location.hash || "#overview").slice(1);
  const draw = pages[name] || pages.overview;
  const page = document.getElementById("page");
  page.dataset.state = "loading";
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("current", link.getAttribute("href") === "#" + name);
  try {
    const summary = await api("/api/summary");
    const [first, following] = monthBounds(summary.month);
    const unpriced = summary.month_totals.unpriced;
    const banner = document.getElementById("unpriced");
    banner.hidden = !unpriced;
    banner.textContent = unpriced
      ? `${unpriced} call${unpriced === 1 ? "" : "s"} this month had no known price: their cost is not in these totals. Add the model to pricing.json.`
      : "";
    page.replaceChildren(...(await draw(summary, first, following)));
    document.getElementById("as-of").textContent = `Today (UTC): ${summary.today}.`;
    page.dataset.page = name;
    page.dataset.state = "ready";
  } catch (error) {
    page.replaceChildren(el("p", { class: "error" }, "Could not load: " + error.message));
    page.dataset.state = "error";
  }
}

window.addEventListener("hashchange", show);
show();
