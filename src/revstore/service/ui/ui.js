// revstore history browser: plain JavaScript over the service's own /v1 API.
// Everything shown from the store goes through textContent, never innerHTML: record
// content is whatever writers sent.
"use strict";

const TOKEN_KEY = "revstore.token";
const params = new URLSearchParams(location.search);
const PAGE = Math.max(1, Math.min(1000, parseInt(params.get("limit") || "50", 10) || 50));

const $ = (id) => document.getElementById(id);
const state = {
  namespace: params.get("namespace") || "default",
  prefix: "",
  cursors: [null], // the `after` of each records page seen; last = current page
  nextAfter: null,
  record: null, // {id, revision, version} of the head as shown
  versionsAfter: null,
  stream: null,
  itemsAfter: null,
};

// ---------------------------------------------------------------- HTTP

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

class HttpError extends Error {
  constructor(status, problem) {
    super((problem && problem.detail) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

async function api(path, query = {}, init = {}) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries({ namespace: state.namespace, ...query })) {
    if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, v);
  }
  const headers = new Headers(init.headers || {});
  const t = token();
  if (t) headers.set("Authorization", `Bearer ${t}`);
  const resp = await fetch(url, { ...init, headers });
  const text = await resp.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch (_) {
    body = null;
  }
  if (!resp.ok) {
    if (resp.status === 401) askForToken(body && body.detail);
    throw new HttpError(resp.status, body);
  }
  return body;
}

function recordPath(id) {
  return `/v1/records/${encodeURIComponent(id)}`;
}

// ---------------------------------------------------------------- messages, token

function say(text, kind = "error") {
  const box = $("message");
  box.textContent = text;
  box.className = kind;
  box.hidden = !text;
}

function failed(err) {
  if (err instanceof HttpError) {
    if (err.status === 401) return; // the token box says it
    if (err.status === 403) {
      say(`Not allowed: ${err.message}. Use a key for namespace "${state.namespace}".`);
      return;
    }
    say(`${err.status}: ${err.message}`);
  } else {
    say(String(err));
  }
}

function askForToken(detail) {
  $("token-box").hidden = false;
  say(`An API key is needed: ${detail || "the service refused the request"}.`);
  $("token").focus();
}

function showTokenState() {
  $("token-state").textContent = token() ? "API key set for this tab" : "no API key";
}

// ---------------------------------------------------------------- elements

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function when(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", " UTC") : "";
}

function json(value) {
  return JSON.stringify(value);
}

// ---------------------------------------------------------------- records

async function loadRecords() {
  const after = state.cursors[state.cursors.length - 1];
  const page = await api("/v1/records", { prefix: state.prefix, after, limit: PAGE });
  const body = $("record-table").tBodies[0];
  body.replaceChildren();
  for (const rec of page.records) {
    const row = body.insertRow();
    row.dataset.id = rec.id;
    const link = document.createElement("a");
    link.textContent = rec.id;
    link.addEventListener("click", () => openRecord(rec.id).catch(failed));
    cell(row, "").appendChild(link);
    cell(row, rec.version);
    cell(row, rec.revision);
    cell(row, when(rec.updated_at));
  }
  if (!page.records.length) {
    cell(body.insertRow(), state.prefix ? `no record starts with "${state.prefix}"` : "no records");
  }
  state.nextAfter = page.next_after;
  $("records-next").disabled = page.next_after === null;
  $("records-prev").disabled = state.cursors.length < 2;
  $("records-page").textContent = `page ${state.cursors.length}`;
  say("");
}

// ---------------------------------------------------------------- one record

async function openRecord(id) {
  const head = await api(recordPath(id));
  state.record = { id, revision: head.revision, version: head.version };
  $("record").hidden = false;
  $("diff").hidden = true;
  $("record-id").textContent = id;
  $("record-head").textContent =
    `head: revision ${head.revision}, version ${head.version}, updated ${when(head.updated_at)}`;
  $("timeline").tBodies[0].replaceChildren();
  state.versionsAfter = 0;
  await moreVersions();
  say("");
}

async function moreVersions() {
  const { id } = state.record;
  const page = await api(`${recordPath(id)}/versions`, { after: state.versionsAfter, limit: PAGE });
  const body = $("timeline").tBodies[0];
  for (const v of page.versions) {
    const row = body.insertRow();
    row.dataset.version = v.version;
    for (const side of ["from", "to"]) {
      const radio = document.createElement("input");
      radio.type = "radio";
      radio.name = side;
      radio.value = v.version;
      radio.setAttribute("aria-label", `${side} version ${v.version}`);
      cell(row, "").appendChild(radio);
    }
    cell(row, v.version);
    cell(row, v.revision);
    cell(row, v.author);
    cell(row, v.summary);
    cell(row, when(v.created_at));
    const restore = document.createElement("button");
    restore.type = "button";
    restore.textContent = "Restore";
    restore.addEventListener("click", () => restoreVersion(v.version).catch(failed));
    cell(row, "").appendChild(restore);
  }
  // Preselect the last two versions, the usual question being "what changed last".
  const radios = body.querySelectorAll("tr");
  if (radios.length && !body.querySelector("input:checked")) {
    const last = radios[radios.length - 1];
    const before = radios.length > 1 ? radios[radios.length - 2] : last;
    before.querySelector('input[name="from"]').checked = true;
    last.querySelector('input[name="to"]').checked = true;
  }
  state.versionsAfter = page.next_after;
  $("versions-more").hidden = page.next_after === null;
}

async function restoreVersion(n) {
  const { id, revision } = state.record;
  try {
    const rec = await api(
      `${recordPath(id)}/restore`,
      {},
      {
        method: "POST",
        // The head as this page shows it: a record changed since is not overwritten.
        headers: { "Content-Type": "application/json", "If-Match": `"${revision}"` },
        body: JSON.stringify({ version: n }),
      },
    );
    await openRecord(id);
    say(`Restored version ${n} as version ${rec.version} (revision ${rec.revision}).`, "info");
  } catch (err) {
    if (err instanceof HttpError && err.status === 412) {
      const now = err.problem.current_revision;
      say(
        `Not restored (412 Precondition Failed): record "${id}" changed after this page ` +
          `loaded it. You saw revision ` +
          `${revision}; it is now at revision ${now}. Someone else wrote in between, and ` +
          "restoring would have overwritten their change. Press Reload to see the newer " +
          "versions, then restore again if you still want to.",
      );
      return;
    }
    throw err;
  }
}

// ---------------------------------------------------------------- diff

function pointer(path) {
  if (path === "") return [];
  return path
    .split("/")
    .slice(1)
    .map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"));
}

function lookup(doc, path) {
  let node = doc;
  for (const key of pointer(path)) {
    if (node === null || typeof node !== "object") return undefined;
    node = Array.isArray(node) ? node[key === "-" ? node.length : Number(key)] : node[key];
  }
  return node;
}

// Apply one RFC 6902 operation (the diff's own, so always valid) to a copy of doc.
function applyOp(doc, op) {
  const clone = (v) => (v === undefined ? v : JSON.parse(JSON.stringify(v)));
  if (op.op === "test") return doc;
  let value = op.value;
  if (op.op === "move" || op.op === "copy") value = clone(lookup(doc, op.from));
  if (op.op === "move") doc = applyOp(doc, { op: "remove", path: op.from });
  const keys = pointer(op.path);
  if (!keys.length) return op.op === "remove" ? null : clone(value);
  const root = clone(doc);
  let parent = root;
  for (const key of keys.slice(0, -1)) parent = parent[Array.isArray(parent) ? Number(key) : key];
  const last = keys[keys.length - 1];
  if (Array.isArray(parent)) {
    const i = last === "-" ? parent.length : Number(last);
    if (op.op === "remove") parent.splice(i, 1);
    else if (op.op === "replace") parent[i] = clone(value);
    else parent.splice(i, 0, clone(value));
  } else if (op.op === "remove") {
    delete parent[last];
  } else {
    parent[last] = clone(value);
  }
  return root;
}

function diffLine(list, cls, text) {
  const li = document.createElement("li");
  li.className = cls;
  li.textContent = text;
  list.appendChild(li);
}

async function showDiff() {
  const from = document.querySelector('#timeline input[name="from"]:checked');
  const to = document.querySelector('#timeline input[name="to"]:checked');
  if (!from || !to) {
    say("Pick a from and a to version first.");
    return;
  }
  const { id } = state.record;
  const [diff, old] = await Promise.all([
    api(`${recordPath(id)}/diff`, { from: from.value, to: to.value }),
    api(`${recordPath(id)}/versions/${from.value}`),
  ]);
  $("diff").hidden = false;
  $("diff-title").textContent =
    `Version ${diff.from_version} → ${diff.to_version}: ${diff.patch.length} change(s)`;
  const list = $("diff-lines");
  list.replaceChildren();
  if (!diff.patch.length) diffLine(list, "", "same content");
  let doc = old.content;
  for (const op of diff.patch) {
    const where = op.path === "" ? "(whole document)" : op.path;
    const before = lookup(doc, op.path);
    if (op.op === "remove" || op.op === "replace") diffLine(list, "del", `- ${where}: ${json(before)}`);
    if (op.op === "add" || op.op === "replace") diffLine(list, "ins", `+ ${where}: ${json(op.value)}`);
    if (op.op === "move" || op.op === "copy") {
      diffLine(list, "ins", `${op.op} ${op.from} → ${where}: ${json(lookup(doc, op.from))}`);
    }
    doc = applyOp(doc, op);
  }
  say("");
}

// ---------------------------------------------------------------- streams

async function loadStreams(reset) {
  if (reset) {
    state.streamsAfter = null;
    $("stream-table").tBodies[0].replaceChildren();
  }
  const page = await api("/v1/streams", { after: state.streamsAfter, limit: PAGE });
  const body = $("stream-table").tBodies[0];
  for (const info of page.streams) {
    const row = body.insertRow();
    row.dataset.id = info.id;
    const link = document.createElement("a");
    link.textContent = info.id;
    link.addEventListener("click", () => openStream(info.id).catch(failed));
    cell(row, "").appendChild(link);
    cell(row, info.item_count);
    cell(row, info.last_sequence);
    cell(row, when(info.updated_at));
  }
  if (reset && !page.streams.length) cell(body.insertRow(), "no streams");
  state.streamsAfter = page.next_after;
  $("streams-more").hidden = page.next_after === null;
}

async function openStream(id) {
  const info = await api(`/v1/streams/${encodeURIComponent(id)}`);
  state.stream = id;
  state.itemsAfter = 0;
  $("stream-info").textContent =
    `stream ${info.id}: ${info.item_count} item(s), last sequence ${info.last_sequence}, ` +
    `updated ${when(info.updated_at)}`;
  $("items").hidden = false;
  $("items").tBodies[0].replaceChildren();
  await moreItems();
  say("");
}

async function moreItems() {
  const path = `/v1/streams/${encodeURIComponent(state.stream)}/items`;
  const page = await api(path, { after: state.itemsAfter, limit: PAGE });
  const body = $("items").tBodies[0];
  for (const item of page.items) {
    const row = body.insertRow();
    cell(row, item.sequence);
    cell(row, item.item_id);
    cell(row, when(item.created_at));
    cell(row, json(item.body), "json");
  }
  state.itemsAfter = page.next_after;
  $("items-more").hidden = page.next_after === null;
}

// ---------------------------------------------------------------- wiring

function on(id, event, fn) {
  const el = $(id);
  let busy = false;
  el.addEventListener(event, (e) => {
    if (event === "submit") e.preventDefault();
    // One load at a time per control: a double click must not append a page twice.
    if (busy) return;
    busy = true;
    Promise.resolve()
      .then(() => fn(e))
      .catch(failed)
      .finally(() => {
        busy = false;
      });
  });
}

on("ns-form", "submit", () => {
  state.namespace = $("namespace").value;
  state.cursors = [null];
  $("record").hidden = true;
  $("items").hidden = true;
  $("stream-info").textContent = "";
  return loadRecords().then(() => loadStreams(true));
});
on("search-form", "submit", () => {
  state.prefix = $("prefix").value;
  state.cursors = [null];
  return loadRecords();
});
on("records-next", "click", () => {
  state.cursors.push(state.nextAfter);
  return loadRecords();
});
on("records-prev", "click", () => {
  state.cursors.pop();
  return loadRecords();
});
on("versions-more", "click", moreVersions);
on("diff-button", "click", showDiff);
on("record-reload", "click", () => openRecord(state.record.id));
on("stream-form", "submit", () => openStream($("stream-id").value));
on("items-more", "click", moreItems);
on("streams-more", "click", () => loadStreams(false));
on("token-form", "submit", () => {
  const value = $("token").value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  $("token").value = "";
  $("token-box").hidden = true;
  showTokenState();
  say("");
  return loadRecords().then(() => loadStreams(true));
});
on("token-forget", "click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showTokenState();
});
$("token-state").addEventListener("click", () => {
  $("token-box").hidden = false;
});

$("namespace").value = state.namespace;
showTokenState();
loadRecords()
  .then(() => loadStreams(true))
  .catch(failed);
