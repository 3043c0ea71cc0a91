// relaypool's status page: polls status.json and renders it. Plain
// JavaScript, no build step, nothing loaded from elsewhere. Text from relays
// (URLs, NIP-11 names) only ever goes through textContent.
"use strict";

(function () {
  const POLL_MS = 1500;
  const TIMEOUT_MS = 5000;
  const SVG = "http://www.w3.org/2000/svg";
  const rows = new Map();
  let updates = 0;

  function fields(name) {
    return document.querySelectorAll('[data-field="' + name + '"]');
  }

  function setField(name, text, state) {
    for (const el of fields(name)) {
      el.textContent = text;
      if (state !== undefined) el.dataset.state = state;
    }
  }

  function fmtInt(n) {
    return n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US");
  }

  function fmtRate(r) {
    if (r === null || r === undefined) return "–";
    if (r >= 100) return Math.round(r).toLocaleString("en-US");
    if (r >= 10) return r.toFixed(1);
    return r.toFixed(2);
  }

  function fmtBytes(b) {
    if (b === null || b === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (b >= 1024 && i < units.length - 1) {
      b /= 1024;
      i += 1;
    }
    return (i === 0 ? b : b.toFixed(1)) + " " + units[i];
  }

  function fmtDuration(s) {
    if (s === null || s === undefined) return "–";
    s = Math.floor(s);
    const d = Math.floor(s / 86400);
    const h = Math.floor((s % 86400) / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    if (d) return d + "d " + h + "h";
    if (h) return m ? h + "h " + String(m).padStart(2, "0") + "m" : h + "h";
    if (m) return sec ? m + "m " + String(sec).padStart(2, "0") + "s" : m + "m";
    return sec + "s";
  }

  function fmtLatency(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const ms = seconds * 1000;
    return (ms >= 10 ? Math.round(ms) : ms.toFixed(1)) + " ms";
  }

  function svgElement(name, attributes) {
    const el = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes)) el.setAttribute(key, value);
    return el;
  }

  // Draw values (oldest first, null for a gap) as a line over a filled area,
  // scaled to the largest value; the newest value is at the right edge.
  function sparkline(svg, values, capacity) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const width = 200;
    const height = 40;
    const slots = Math.max(capacity - 1, values.length, 2);
    const step = width / (slots - 1);
    const max = Math.max(1, ...values.filter((v) => v !== null));
    const x = (i) => width - (values.length - 1 - i) * step;
    const y = (v) => height - 2 - (v / max) * (height - 4);
    let line = "";
    let area = "";
    let run = [];
    const flush = () => {
      if (run.length) {
        line += "M" + run.map(([i, v]) => x(i).toFixed(1) + " " + y(v).toFixed(1)).join("L");
        area += "M" + x(run[0][0]).toFixed(1) + " " + height + "L" +
          run.map(([i, v]) => x(i).toFixed(1) + " " + y(v).toFixed(1)).join("L") +
          "L" + x(run[run.length - 1][0]).toFixed(1) + " " + height + "Z";
      }
      run = [];
    };
    values.forEach((v, i) => (v === null ? flush() : run.push([i, v])));
    flush();
    svg.appendChild(svgElement("line", { class: "base", x1: 0, y1: height - 1, x2: width, y2: height - 1 }));
    if (area) svg.appendChild(svgElement("path", { class: "area", d: area }));
    if (line) svg.appendChild(svgElement("path", { class: "line", d: line }));
    const title = svgElement("title", {});
    title.textContent = "peak " + fmtRate(Math.max(0, ...values.filter((v) => v !== null))) + "/s";
    svg.appendChild(title);
  }

  function cell(row, column, className) {
    const td = document.createElement("td");
    td.dataset.col = column;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function makeRow(url) {
    const tr = document.createElement("tr");
    tr.dataset.url = url;
    const relay = cell(tr, "relay", "relay");
    const urlText = document.createElement("div");
    urlText.className = "url";
    urlText.textContent = url;
    const name = document.createElement("div");
    name.className = "relay-name";
    const roles = document.createElement("div");
    roles.className = "relay-roles";
    roles.dataset.col = "roles";
    relay.append(urlText, name, roles);
    const state = cell(tr, "state-cell");
    const pill = document.createElement("span");
    pill.className = "state";
    pill.dataset.col = "state";
    state.appendChild(pill);
    const health = cell(tr, "health-cell");
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.className = "fill";
    bar.appendChild(fill);
    const score = document.createElement("span");
    score.className = "score";
    score.dataset.col = "health";
    health.append(bar, score);
    cell(tr, "connections", "num");
    cell(tr, "latency", "num");
    cell(tr, "eventsPerSecond", "num");
    const chart = cell(tr, "chart", "chart");
    chart.appendChild(svgElement("svg", { class: "spark", viewBox: "0 0 200 40", preserveAspectRatio: "none" }));
    cell(tr, "ok", "num");
    cell(tr, "reconnects", "num");
    return { tr, name, roles, pill, fill, score, chart: chart.firstChild };
  }

  function col(tr, name) {
    return tr.querySelector('[data-col="' + name + '"]');
  }

  function renderRelays(relays, capacity) {
    const body = document.querySelector("#relays tbody");
    const seen = new Set();
    for (const relay of relays) {
      seen.add(relay.url);
      let row = rows.get(relay.url);
      if (!row) {
        row = makeRow(relay.url);
        rows.set(relay.url, row);
      }
      body.appendChild(row.tr); // keeps the server's order
      row.tr.dataset.state = relay.state;
      row.name.textContent = relay.name || "";
      row.roles.textContent = (relay.roles || []).join(" · ");
      row.pill.textContent = relay.state;
      row.pill.dataset.state = relay.state;
      const health = relay.healthScore;
      row.fill.style.width = Math.max(0, Math.min(100, health)) + "%";
      row.fill.dataset.level = health >= 80 ? "good" : health >= 50 ? "fair" : "poor";
      row.score.textContent = Math.round(health);
      col(row.tr, "connections").textContent = fmtInt(relay.connections);
      col(row.tr, "latency").textContent = fmtLatency(relay.latency);
      col(row.tr, "eventsPerSecond").textContent = fmtRate(relay.eventsPerSecond);
      col(row.tr, "ok").textContent = fmtInt(relay.okAccepted) + " / " + fmtInt(relay.okRejected);
      col(row.tr, "reconnects").textContent = fmtInt(relay.reconnects);
      sparkline(row.chart, relay.history.eventsPerSecond, capacity);
    }
    for (const [url, row] of rows) {
      if (!seen.has(url)) {
        row.tr.remove();
        rows.delete(url);
      }
    }
    document.getElementById("no-relays").hidden = relays.length > 0;
    document.getElementById("relays").hidden = relays.length === 0;
  }

  function render(s) {
    setField("version", "v" + s.version);
    setField("health", s.health, s.health);
    setField("uptime", fmtDuration(s.uptime));
    setField("pool.open", s.pool ? s.pool.activeRelays + " / " + s.pool.relays + " open" : "none");
    for (const [key, value] of Object.entries(s.clients)) {
      setField("clients." + key, key === "bytesPending" ? fmtBytes(value) : fmtInt(value));
    }
    for (const [key, value] of Object.entries(s.rates)) setField("rates." + key, fmtRate(value));
    for (const svg of document.querySelectorAll("svg[data-chart]")) {
      sparkline(svg, s.history[svg.dataset.chart] || [], s.historySamples);
    }
    const outbox = s.outbox || {};
    setField("outbox.waiting", s.outbox ? fmtInt(outbox.waiting) : "none");
    setField("outbox.retrying", fmtInt(outbox.retrying));
    setField("outbox.oldestAge", outbox.oldestAge ? fmtDuration(outbox.oldestAge) : "–");
    const cluster = s.cluster || {};
    setField("cluster.nodes", s.cluster ? fmtInt(cluster.nodes) : "single node");
    setField("cluster.unit", s.cluster ? "nodes on Redis" : "no --redis: not in a cluster");
    setField("cluster.node", s.cluster ? cluster.node : "–");
    setField("cluster.redis", s.cluster ? (cluster.redisUp ? "connected" : "away: serving alone") : "–");
    setField("cluster.leasesHeld", s.cluster ? fmtInt(cluster.leasesHeld) + " filter sets" : "–");
    setField("cluster.following", s.cluster ? fmtInt(cluster.following) + " filter sets" : "–");
    setField("cluster.traffic", s.cluster ? fmtInt(cluster.eventsPublished) + " / " + fmtInt(cluster.eventsReceived) : "–");
    const store = s.store || {};
    setField("store.events", s.store ? fmtInt(store.events) : "none");
    setField("store.bytes", store.bytes === null || store.bytes === undefined ? "in memory" : fmtBytes(store.bytes));
    const span = fmtDuration(s.sampleInterval * (s.historySamples - 1));
    setField("window", span);
    setField("sampling", "a sample every " + s.sampleInterval + " s, charts of the last " + span);
    setField("now", new Date(s.now).toLocaleTimeString());
    renderRelays(s.relays, s.historySamples);
    updates += 1;
    document.body.dataset.updates = String(updates);
  }

  async function poll() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      const response = await fetch("status.json", { cache: "no-store", signal: abort.signal });
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
      setField("live", "live", "live");
    } catch (e) {
      setField("live", "unreachable, retrying", "offline");
    } finally {
      clearTimeout(timer);
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
