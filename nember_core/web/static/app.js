// Nember dashboard: one page over the REST API (/api/*) with the session cookie.
// No build step, no dependencies; every value from the server is escaped before display.

const main = document.getElementById("main");
const state = { csrf: null, email: null, allowSignup: false, timers: [], nav: 0 };
// A view fetches, then draws; if the user moved on meanwhile, it must not draw over the new one.
const stale = (nav) => nav !== state.nav;

// ---- helpers -------------------------------------------------------------------------
const escapeHtml = (value) => String(value ?? "").replace(/[&<>"']/g, (c) => ({
  "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

// Tagged template: interpolated values are escaped unless wrapped in raw().
class Raw { constructor(html) { this.html = html; } }
const raw = (html) => new Raw(html);
function html(strings, ...values) {
  return strings.reduce((out, s, i) => {
    const v = values[i - 1];
    const text = v instanceof Raw ? v.html
      : Array.isArray(v) ? v.map((x) => (x instanceof Raw ? x.html : escapeHtml(x))).join("")
      : escapeHtml(v);
    return out + text + s;
  });
}

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "—");
const num = (n) => Number(n ?? 0).toLocaleString();

function toast(message) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove("show"), 2600);
}

async function api(method, path, body) {
  const options = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET") options.headers["X-CSRF-Token"] = state.csrf || "";
  if (body instanceof FormData) options.body = body;
  else if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  const data = (response.headers.get("Content-Type") || "").includes("json")
    ? await response.json() : await response.text();
  if (response.status === 401 && path.startsWith("/api/")) { showLogin(); throw new Error(data.error); }
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function every(ms, fn) { state.timers.push(setInterval(fn, ms)); }
function clearTimers() { state.timers.forEach(clearInterval); state.timers = []; }

async function copy(text, what) {
  try { await navigator.clipboard.writeText(text); toast(`${what} copied`); }
  catch { toast("Copy failed: select the text and copy it by hand"); }
}

// ---- login ---------------------------------------------------------------------------
function showLogin(mode = "login") {
  clearTimers();
  document.getElementById("nav").hidden = true;
  document.getElementById("who").hidden = true;
  const signup = mode === "signup";
  main.innerHTML = html`
    <section class="card narrow" aria-labelledby="login-title">
      <h1 id="login-title">${signup ? "Create an account" : "Log in to Nember"}</h1>
      <p class="lead">${signup ? "Choose your email and a password (8 characters or more)."
                               : "Manage API keys, train models and watch your bots' connections."}</p>
      <form id="login-form">
        <div class="field"><label for="email-input">Email</label>
          <input id="email-input" name="email" type="email" autocomplete="username" required></div>
        <div class="field mt"><label for="password-input">Password</label>
          <input id="password-input" name="password" type="password" required
                 autocomplete="${signup ? "new-password" : "current-password"}"></div>
        <p class="error" id="login-error" role="alert"></p>
        <div class="row mt">
          <button type="submit">${signup ? "Create account" : "Log in"}</button>
          ${state.allowSignup ? raw(html`<a href="#" id="switch">${signup ? "I have an account" : "Create an account"}</a>`) : ""}
        </div>
      </form>
    </section>`;
  document.getElementById("email-input").focus();
  const switcher = document.getElementById("switch");
  if (switcher) switcher.onclick = (e) => { e.preventDefault(); showLogin(signup ? "login" : "signup"); };
  document.getElementById("login-form").onsubmit = async (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    try {
      const who = await api("POST", signup ? "/auth/signup" : "/auth/login",
        { email: form.get("email"), password: form.get("password") });
      loggedIn(who);
      if (location.hash === "#/keys") route(); else location.hash = "#/keys";
    } catch (err) { document.getElementById("login-error").textContent = err.message; }
  };
}

function loggedIn(who) {
  state.csrf = who.csrf_token;
  state.email = who.email;
  document.getElementById("email").textContent = who.email;
  document.getElementById("nav").hidden = false;
  document.getElementById("who").hidden = false;
}

document.getElementById("logout").onclick = async () => {
  await api("POST", "/auth/logout").catch(() => {});
  state.csrf = null;
  showLogin();
};

// ---- API keys ------------------------------------------------------------------------
async function showKeys() {
  const nav = state.nav;
  const [keys, usage] = await Promise.all([api("GET", "/api/keys"), api("GET", "/api/usage")]);
  if (stale(nav)) return;
  const lastUsed = Object.create(null);  // no inherited keys: ids are users' strings
  for (const row of usage.items) {
    if (!lastUsed[row.key_id] || row.opened_at > lastUsed[row.key_id]) lastUsed[row.key_id] = row.opened_at;
  }
  main.innerHTML = html`
    <h1>API keys</h1>
    <p class="lead">A bot sends its key as the first websocket frame. Revoking a key closes its live connections (code 4401).</p>
    <section class="card" aria-labelledby="new-key">
      <h2 id="new-key">Create a key</h2>
      <form class="inline" id="key-form">
        <div class="field"><label for="key-name">Name</label>
          <input id="key-name" name="name" placeholder="e.g. btc-bot-1" required maxlength="200"></div>
        <div class="field"><label for="key-scope">Scope</label>
          <select id="key-scope" name="scope">
            <option value="predict" selected>predict: a bot's (/ws only)</option>
            <option value="read">read: also the API's GET routes</option>
            <option value="manage">manage: every API route</option>
          </select></div>
        <button type="submit">Create key</button>
      </form>
      <div id="new-secret"></div>
    </section>
    <section class="card" aria-labelledby="key-list">
      <h2 id="key-list">Your keys</h2>
      <div class="table-wrap"><table>
        <thead><tr><th>Name</th><th>Prefix</th><th>Scope</th><th>Created</th><th>Last used</th><th class="num">Live</th><th>Status</th><th></th></tr></thead>
        <tbody>${keys.items.map((k) => raw(html`
          <tr data-key="${k.id}">
            <td>${k.name}</td><td><code>${k.prefix}…</code></td><td>${k.scope}</td><td>${when(k.created_at)}</td>
            <td>${when(lastUsed[k.id])}</td><td class="num">${k.live_connections}</td>
            <td>${k.revoked_at ? raw('<span class="tag bad">revoked</span>') : raw('<span class="tag ok">active</span>')}</td>
            <td>${k.revoked_at ? "" : raw(html`<button class="danger small" data-revoke="${k.id}" data-name="${k.name}">Revoke</button>`)}</td>
          </tr>`))}
        </tbody></table></div>
      ${keys.items.length ? "" : raw('<p class="muted">No keys yet.</p>')}
    </section>`;
  document.getElementById("key-form").onsubmit = async (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    try {
      const created = await api("POST", "/api/keys", { name: form.get("name"), scope: form.get("scope") });
      await showKeys();
      const box = document.getElementById("new-secret");
      box.innerHTML = html`
        <div class="secret" role="alert">
          <strong>Copy this key now: it is shown only once.</strong>
          <code id="secret-value">${created.key}</code>
          <button type="button" id="copy-secret">Copy</button>
        </div>`;
      document.getElementById("copy-secret").onclick = () => copy(created.key, "Key");
      document.getElementById("copy-secret").focus();
    } catch (err) { toast(err.message); }
  };
  main.querySelectorAll("[data-revoke]").forEach((b) => {
    b.onclick = async () => {
      if (!confirm(`Revoke the key "${b.dataset.name}"? Its live connections close now.`)) return;
      try { await api("DELETE", `/api/keys/${b.dataset.revoke}`); toast("Key revoked"); showKeys(); }
      catch (err) { toast(err.message); }
    };
  });
}

// ---- models --------------------------------------------------------------------------
// What the server takes for "no value yet" in a CSV cell (training/dataset.py).
const EMPTY_CELLS = ["", "nan", "na", "n/a", "null", "none", "#n/a"];

function parseCsv(text, maxRows) {
  // Enough for a preview: quoted fields, commas and newlines inside quotes.
  const rows = []; let row = []; let field = ""; let quoted = false;
  for (let i = 0; i < text.length && rows.length <= maxRows; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; }
      else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { row.push(field); field = ""; }
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(field); field = "";
      if (row.some((v) => v.trim() !== "")) rows.push(row);
      row = [];
    } else field += c;
  }
  if (field !== "" || row.length) { row.push(field); rows.push(row); }
  return rows;
}

async function showModels() {
  const nav = state.nav;
  const [models, families] = await Promise.all([api("GET", "/api/models"), api("GET", "/api/families")]);
  if (stale(nav)) return;
  const trainable = families.items.filter((f) => f.trainable);
  const byStrat = new Map();  // a strategy may be named "toString" or "__proto__"
  for (const m of models.items) {
    if (!byStrat.has(m.strat)) byStrat.set(m.strat, []);
    byStrat.get(m.strat).push(m);
  }
  main.innerHTML = html`
    <h1>Models</h1>
    <p class="lead">Train a model from your time-ordered data, or import one trained elsewhere; bots then ask for it by strategy, family and type.</p>
    <section class="card" aria-labelledby="train-title">
      <h2 id="train-title">Train a model</h2>
      <div class="field"><label for="csv-file">CSV file (oldest row first, one header row)</label>
        <input id="csv-file" type="file" accept=".csv,text/csv"></div>
      <div id="csv-preview"></div>
      <form id="train-form" hidden>
        <div class="fields mt">
          <div class="field"><label for="strat">Strategy</label><input id="strat" name="strat" required value="example_strategy" maxlength="200"></div>
          <div class="field"><label for="target">Target column</label><select id="target" name="target"></select></div>
          <div class="field"><label for="family">Model family</label><select id="family" name="model">
            ${trainable.map((f) => raw(html`<option value="${f.name}">${f.name}</option>`))}</select></div>
          <div class="field"><label for="type">Type</label><select id="type" name="type">
            <option value="class">class (classification)</option><option value="reg">reg (regression)</option></select></div>
          <div class="field"><label for="window">Window (data points per sample)</label><input id="window" name="window" type="number" min="1" max="1000" value="1"></div>
        </div>
        <div class="field mt" id="warmup-field" hidden><label><input type="checkbox" id="skip-warmup" checked>
          Skip the warm-up rows: <span id="warmup-note"></span></label></div>
        <div class="mt"><label>Features</label><div class="checks" id="features"></div></div>
        <div class="fields mt">
          <div class="field"><label for="folds">Walk-forward folds</label><input id="folds" name="folds" type="number" min="1" max="20" value="5"></div>
          <div class="field"><label for="horizon">Horizon (rows the target looks ahead)</label><input id="horizon" name="horizon" type="number" min="0" max="10000" value="1"></div>
          <div class="field"><label for="returns">Next-bar returns column (for a backtest)</label><select id="returns" name="returns"></select></div>
        </div>
        <div class="field mt"><label for="params">Hyperparameters (JSON, optional)</label>
          <textarea id="params" name="params" placeholder='{"max_depth": 4}'></textarea></div>
        <div class="row mt"><button type="submit" id="train-button">Start training</button></div>
      </form>
      <div id="job" aria-live="polite"></div>
    </section>
    <section class="card" aria-labelledby="import-title">
      <h2 id="import-title">Import a model</h2>
      <p class="muted">A model trained elsewhere: an ONNX file (converted with the ZipMap off), an XGBoost JSON or UBJSON file, or a LightGBM text model. Its input is one row of window × features numbers, the oldest data point first, each point's features in the order given. Pickle and joblib files are refused: loading them runs code.</p>
      <form id="import-form">
        <div class="field"><label for="import-file">Model file</label>
          <input id="import-file" name="file" type="file" accept=".onnx,.json,.ubj,.txt" required></div>
        <div class="fields mt">
          <div class="field"><label for="import-strat">strat_name bots will send</label><input id="import-strat" name="strat" required value="example_strategy" maxlength="200"></div>
          <div class="field"><label for="import-family">Family of the file</label><select id="import-family" name="model">
            ${families.items.map((f) => raw(html`<option value="${f.name}" ${f.name === "ONNX" ? raw("selected") : ""}>${f.name}</option>`))}</select></div>
          <div class="field"><label for="import-type">Model type</label><select id="import-type" name="type">
            <option value="class">class (classification)</option><option value="reg">reg (regression)</option></select></div>
          <div class="field"><label for="import-window">Data points per request</label><input id="import-window" name="window" type="number" min="1" max="1000" value="1"></div>
        </div>
        <div class="fields mt">
          <div class="field"><label for="import-features">Features, in the model's input order</label><input id="import-features" name="features" required placeholder="point1,point2"></div>
          <div class="field"><label for="import-classes">Class labels by index (optional)</label><input id="import-classes" name="classes" placeholder="down,up"></div>
          <div class="field"><label for="import-target">What it predicts (optional)</label><input id="import-target" name="target" placeholder="imported" maxlength="200"></div>
        </div>
        <div class="row mt"><button type="submit" id="import-button">Import model</button></div>
      </form>
      <div id="import-result" aria-live="polite"></div>
    </section>
    <section class="card" aria-labelledby="models-title">
      <h2 id="models-title">Your models</h2>
      ${byStrat.size ? "" : raw('<p class="muted">No models yet: train or import one above.</p>')}
      ${[...byStrat].map(([strat, list]) => raw(html`
        <h3>Strategy <code>${strat}</code></h3>
        <div class="table-wrap"><table>
          <thead><tr><th>Family</th><th>Type</th><th>Version</th><th>Walk-forward</th><th>Features × window</th><th>Trained</th><th></th></tr></thead>
          <tbody>${list.map((m) => raw(html`
            <tr data-model="${m.id}">
              <td>${m.model}</td><td>${m.type}</td>
              <td>v${m.version} ${m.latest ? raw('<span class="tag ok">serving</span>') : ""}</td>
              <td>${Object.entries(m.metrics).filter(([k]) => !["holdout", "train", "note", "warmup_rows_skipped"].includes(k)).map(([k, v]) => `${k} ${v}`).join(", ") || m.metrics.note || "—"}
                ${m.warnings.length ? raw(html`<span class="tag bad" title="${m.warnings.join("\n")}">${m.warnings.length} warning${m.warnings.length > 1 ? "s" : ""}</span>`) : ""}
                ${m.evaluation ? raw(html`<button class="ghost small" data-evaluate="${m.id}">Evaluation</button>`) : ""}</td>
              <td>${m.features.join(", ")} × ${m.window}</td><td>${when(m.trained_at)}</td>
              <td><details><summary>Request</summary>
                <pre>${JSON.stringify(m.request_example, null, 1)}</pre>
                <button class="ghost small" data-copy="${m.id}">Copy JSON</button>
                <button class="danger small" data-delete="${m.id}">Delete version</button>
                <button class="danger small" data-delete-all="${m.model_id}">Delete model</button>
              </details></td>
            </tr>`))}</tbody></table></div>`))}
    </section>
    <section class="card" id="evaluation" aria-labelledby="evaluation-title" hidden></section>`;
  for (const button of document.querySelectorAll("[data-evaluate]")) {
    button.onclick = () => {
      const box = document.getElementById("evaluation");
      box.innerHTML = evaluationReport(models.items.find((m) => m.id === button.dataset.evaluate));
      box.hidden = false;
      box.scrollIntoView({ block: "start" });
    };
  }

  let file = null;
  document.getElementById("csv-file").onchange = async (e) => {
    file = e.target.files[0];
    if (!file) return;
    const slice = 256 * 1024;
    const [header, ...body] = parseCsv(await file.slice(0, slice).text(), 500);
    if (file.size > slice) body.pop();  // cut at the slice's end
    const sample = body.slice(0, 5);
    const empty = (v) => v === undefined || EMPTY_CELLS.includes(v.trim().toLowerCase());
    const isNumber = (v) => !empty(v) && !isNaN(Number(v));
    // Leading empty cells: an indicator warming up (a 20-bar average has none for 19 rows).
    const lead = header.map((_, i) => { let n = 0; while (n < body.length && empty(body[n][i])) n++; return n; });
    const numeric = header.map((_, i) => body.length > 0 && body.every((r) => isNumber(r[i])));
    const warming = header.map((_, i) => lead[i] > 0 && lead[i] < body.length && body.slice(lead[i]).every((r) => isNumber(r[i])));
    document.getElementById("csv-preview").innerHTML = html`
      <p class="muted">${file.name}: ${header.length} columns. First rows:</p>
      <div class="table-wrap"><table><thead><tr>${header.map((h) => raw(html`<th>${h}</th>`))}</tr></thead>
      <tbody>${sample.map((r) => raw(html`<tr>${r.map((v) => raw(html`<td>${v}</td>`))}</tr>`))}</tbody></table></div>`;
    const target = document.getElementById("target");
    target.innerHTML = header.map((h) => html`<option>${h}</option>`).join("");
    target.value = header[header.length - 1];
    const skip = document.getElementById("skip-warmup");
    const warmingNames = header.filter((_, i) => warming[i]);
    document.getElementById("warmup-field").hidden = warmingNames.length === 0;
    document.getElementById("warmup-note").textContent = warmingNames.length === 0 ? "" :
      `the first ${Math.max(...lead.filter((_, i) => warming[i]))} rows have empty cells in ${warmingNames.join(", ")}`;
    const drawFeatures = () => {
      const usable = (i) => numeric[i] || (warming[i] && skip.checked);
      document.getElementById("features").innerHTML = header.map((h, i) => (h === target.value ? "" : html`
        <label><input type="checkbox" name="feature" value="${h}" ${usable(i) ? "checked" : raw("disabled")}> ${h}</label>`)).join("");
    };
    target.onchange = drawFeatures;
    skip.onchange = drawFeatures;
    drawFeatures();
    document.getElementById("returns").innerHTML = html`<option value="">none</option>` +
      header.map((h, i) => (numeric[i] ? html`<option>${h}</option>` : "")).join("");
    document.getElementById("train-form").hidden = false;
  };

  document.getElementById("train-form").onsubmit = async (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    const features = [...document.querySelectorAll("#features input:checked")].map((i) => i.value);
    const body = new FormData();
    body.append("data", file, file.name);
    for (const name of ["strat", "model", "type", "target", "window", "folds", "horizon"]) body.append(name, form.get(name));
    if (form.get("returns")) body.append("returns", form.get("returns"));
    body.append("features", features.join(","));
    const warmup = document.getElementById("warmup-field");
    body.append("skip_warmup", String(!warmup.hidden && document.getElementById("skip-warmup").checked));
    if (form.get("params").trim()) body.append("params", form.get("params"));
    const button = document.getElementById("train-button");
    button.disabled = true;
    const box = document.getElementById("job");
    try {
      let job = await api("POST", "/api/models", body);
      while (job.state === "queued" || job.state === "running") {
        box.innerHTML = html`
          <div class="progress" role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="${Math.round(job.progress * 100)}">
            <div></div></div>
          <p class="muted">Training ${job.model} ${job.type}: ${job.stage} (${Math.round(job.progress * 100)}%)
            <button type="button" class="danger small" id="cancel-job">Cancel</button></p>`;
        box.querySelector(".progress > div").style.width = `${Math.round(job.progress * 100)}%`;
        const jobId = job.id;
        document.getElementById("cancel-job").onclick = async (event) => {
          event.target.disabled = true;  // the job ends, failed, at the next look
          try { await api("DELETE", `/api/jobs/${jobId}`); } catch (err) { toast(err.message); }
        };
        await new Promise((r) => setTimeout(r, 300));
        job = await api("GET", `/api/jobs/${job.id}`);
      }
      if (job.state === "failed") { box.innerHTML = html`<p class="error" role="alert">Training failed: ${job.error}</p>`; }
      else { toast(`Trained ${job.model} ${job.type} v${job.version}`); await showModels(); }
    } catch (err) { box.innerHTML = html`<p class="error" role="alert">${err.message}</p>`; }
    finally { button.disabled = false; }
  };

  document.getElementById("import-form").onsubmit = async (e) => {
    e.preventDefault();
    const form = new FormData(e.target);
    const body = new FormData();
    body.append("file", form.get("file"), form.get("file").name);
    for (const name of ["strat", "model", "type", "window", "features"]) body.append(name, form.get(name));
    for (const name of ["classes", "target"]) if (form.get(name).trim()) body.append(name, form.get(name));
    const button = document.getElementById("import-button");
    button.disabled = true;
    const box = document.getElementById("import-result");
    box.innerHTML = "";
    try {
      const imported = await api("POST", "/api/models/import", body);
      toast(`Imported ${imported.model} ${imported.type} v${imported.version}`);
      await showModels();
    } catch (err) { box.innerHTML = html`<p class="error" role="alert">${err.message}</p>`; }
    finally { button.disabled = false; }
  };

  main.querySelectorAll("[data-copy]").forEach((b) => {
    const m = models.items.find((x) => x.id === b.dataset.copy);
    b.onclick = () => copy(JSON.stringify(m.request_example), "Request JSON");
  });
  const remove = async (id, what) => {
    if (!confirm(`Delete ${what}?`)) return;
    try { await api("DELETE", `/api/models/${id}`); toast("Deleted"); showModels(); }
    catch (err) { toast(err.message); }
  };
  main.querySelectorAll("[data-delete]").forEach((b) => { b.onclick = () => remove(b.dataset.delete, "this version"); });
  main.querySelectorAll("[data-delete-all]").forEach((b) => { b.onclick = () => remove(b.dataset.deleteAll, "this model and every version"); });
}

// ---- connections ---------------------------------------------------------------------
async function showConnections() {
  const nav = state.nav;
  main.innerHTML = html`
    <h1>Connections</h1>
    <p class="lead">Your bots' live websockets, updated every two seconds. Closing one sends close code 4000.</p>
    <section class="card" aria-labelledby="live-title"><h2 id="live-title">Live</h2><div id="live"></div></section>
    <section class="card" aria-labelledby="history-title"><h2 id="history-title">Closed</h2><div id="history"></div></section>`;
  const draw = async () => {
    const [live, usage] = await Promise.all([api("GET", "/api/connections"), api("GET", "/api/usage")]);
    const liveBox = document.getElementById("live");
    if (stale(nav) || !liveBox) return;
    liveBox.innerHTML = live.items.length ? html`
      <div class="table-wrap"><table>
        <thead><tr><th>Remote</th><th>Key</th><th>Connected since</th><th class="num">Predictions</th><th class="num">Errors</th><th>Last request</th><th>Node</th><th></th></tr></thead>
        <tbody>${live.items.map((c) => raw(html`
          <tr data-connection="${c.id}"><td>${c.remote}</td><td>${c.key_name}</td><td>${when(c.opened_at)}</td>
            <td class="num">${num(c.predictions)}</td><td class="num">${num(c.errors)}</td><td>${when(c.last_request_at)}</td>
            <td>${c.node}</td><td><button class="danger small" data-close="${c.id}">Close</button></td></tr>`))}
        </tbody></table></div>` : html`<p class="muted">No live connections.</p>`;
    const closed = usage.items.filter((u) => !u.live && u.closed_at).reverse().slice(0, 50);
    document.getElementById("history").innerHTML = closed.length ? html`
      <div class="table-wrap"><table>
        <thead><tr><th>Remote</th><th>Opened</th><th>Closed</th><th>Reason</th><th class="num">Code</th><th class="num">Predictions</th><th class="num">Errors</th></tr></thead>
        <tbody>${closed.map((u) => raw(html`
          <tr data-closed="${u.connection_id}"><td>${u.remote}</td><td>${when(u.opened_at)}</td><td>${when(u.closed_at)}</td>
          <td>${u.close_reason}</td><td class="num">${u.close_code ?? "—"}</td><td class="num">${num(u.predictions)}</td><td class="num">${num(u.errors)}</td></tr>`))}
        </tbody></table></div>` : html`<p class="muted">No closed connections yet.</p>`;
    liveBox.querySelectorAll("[data-close]").forEach((b) => {
      b.onclick = async () => {
        b.disabled = true;
        try { await api("DELETE", `/api/connections/${b.dataset.close}`); toast("Connection closed"); draw(); }
        catch (err) { toast(err.message); b.disabled = false; }
      };
    });
  };
  await draw();
  every(2000, () => draw().catch(() => {}));
}

// ---- a model's walk-forward evaluation --------------------------------------------------
const pct = (v) => (v == null ? "—" : `${v >= 0 ? "+" : ""}${(v * 100).toFixed(1)}%`);
const fixed = (v) => (v == null ? "—" : Number(v).toFixed(3));

function evaluationReport(m) {
  const e = m.evaluation;
  const names = m.type === "class" ? ["accuracy", "balanced_accuracy", "log_loss"] : ["mae", "rmse", "r2", "hit_rate"];
  const backtest = e.folds.some((f) => f.backtest);
  return html`
    <h2 id="evaluation-title">Evaluation of ${m.strat} · ${m.model} ${m.type} v${m.version}</h2>
    ${e.warnings.map((w) => raw(html`<p class="warning" role="alert">⚠ ${w}</p>`))}
    <p class="muted">Walk-forward over ${e.folds.length} folds in time order (horizon ${e.horizon}, purge ${e.purge} samples):
      every score is on samples the fold's model never trained on.${e.notes.map((n) => ` ${n}.`).join("")}</p>
    <div class="table-wrap"><table id="folds">
      <thead><tr><th>Fold</th><th>Trained on</th><th>Tested on</th>${names.map((n) => raw(html`<th>${n.replace("_", " ")}</th>`))}
        ${backtest ? raw("<th>Return</th><th>Buy &amp; hold</th><th>Trades</th>") : ""}</tr></thead>
      <tbody>${e.folds.map((f) => raw(html`<tr><td>${f.fold}</td><td>${f.train[0]}–${f.train[1] - 1}</td><td>${f.test[0]}–${f.test[1] - 1}</td>
        ${names.map((n) => raw(html`<td class="num">${fixed(f.metrics[n])}</td>`))}
        ${f.backtest ? raw(html`<td class="num">${pct(f.backtest.return)}</td><td class="num">${pct(f.backtest.buy_and_hold_return)}</td><td class="num">${f.backtest.trades}</td>`) : ""}</tr>`))}
        <tr><th>All</th><td></td><td>${e.tested ?? 0} samples</td>${names.map((n) => raw(html`<th class="num">${fixed((e.metrics || {})[n])}</th>`))}
        ${backtest && e.backtest ? raw(html`<th class="num">${pct(e.backtest.strategy.return)}</th><th class="num">${pct(e.backtest.buy_and_hold.return)}</th><th class="num">${e.backtest.strategy.trades}</th>`) : ""}</tr>
      </tbody></table></div>
    ${e.coverage ? raw(html`<p id="coverage">Most confident predictions only: ${e.coverage.map((c) => `top ${c.coverage * 100}% hit rate ${fixed(c.hit_rate)}`).join(" · ")}</p>`) : ""}
    <div class="plots">
      ${e.backtest ? raw(html`<figure class="chart" id="equity-plot"><figcaption>Equity, following the signal (${pct(e.backtest.strategy.return)}, Sharpe ${fixed(e.backtest.strategy.sharpe)}, max drawdown ${(e.backtest.strategy.max_drawdown * 100).toFixed(1)}%) vs buy-and-hold (${pct(e.backtest.buy_and_hold.return)}); no costs</figcaption>
        ${raw(lineChart([{ name: "signal", cls: "line1", values: e.backtest.equity.strategy }, { name: "buy and hold", cls: "line2", values: e.backtest.equity.buy_and_hold }]))}</figure>`) : ""}
      ${e.calibration ? raw(html`<figure class="chart" id="calibration-plot"><figcaption>Calibration: how often predictions were right, by their confidence (the diagonal is a calibrated model)</figcaption>
        ${raw(calibrationChart(e.calibration))}</figure>`) : ""}
    </div>`;
}

function lineChart(series, width = 480, height = 200, pad = 28) {
  const all = series.flatMap((s) => s.values);
  const low = Math.min(...all), high = Math.max(...all), span = high - low || 1;
  const count = Math.max(...series.map((s) => s.values.length));
  const x = (i) => pad + ((width - pad) * i) / Math.max(1, count - 1);
  const y = (v) => height - pad - ((height - 2 * pad) * (v - low)) / span;
  const lines = series.map((s) => `<polyline class="${s.cls}" fill="none" points="${s.values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ")}"><title>${escapeHtml(s.name)}</title></polyline>`).join("");
  return `<svg viewBox="0 0 ${width} ${height}" role="img" aria-label="${series.map((s) => escapeHtml(s.name)).join(" and ")} over the tested bars">
    <line x1="${pad}" y1="${y(1).toFixed(1)}" x2="${width}" y2="${y(1).toFixed(1)}" stroke="#cdd4e0"/>
    <text x="0" y="12">${high.toFixed(3)}</text><text x="0" y="${height - pad}">${low.toFixed(3)}</text>${lines}
    ${series.map((s, i) => `<text class="${s.cls}" x="${pad + 8 + i * 110}" y="${height - 6}">— ${escapeHtml(s.name)}</text>`).join("")}</svg>`;
}

function calibrationChart(rows, size = 320, pad = 28) {
  const low = Math.min(...rows.map((r) => r.from));
  const scale = (v) => pad + ((size - 2 * pad) * (v - low)) / (1 - low || 1);
  const most = Math.max(...rows.map((r) => r.predictions));
  const dots = rows.map((r) => `<circle class="dot" cx="${scale(r.confidence).toFixed(1)}" cy="${(size - scale(r.hit_rate)).toFixed(1)}" r="${(3 + 5 * Math.sqrt(r.predictions / most)).toFixed(1)}"><title>confidence ${r.confidence.toFixed(2)}: right ${(r.hit_rate * 100).toFixed(0)}% of ${r.predictions}</title></circle>`).join("");
  return `<svg viewBox="0 0 ${size} ${size}" role="img" aria-label="calibration: hit rate by confidence">
    <line x1="${scale(low)}" y1="${size - scale(low)}" x2="${scale(1)}" y2="${size - scale(1)}" stroke="#cdd4e0"/>
    <text x="${pad}" y="${size - 6}">confidence ${low.toFixed(2)}–1</text><text x="0" y="12">hit rate</text>${dots}</svg>`;
}

// ---- usage ---------------------------------------------------------------------------
function barChart(days, key, cls) {
  const width = 640, height = 160, pad = 24;
  const max = Math.max(1, ...days.map((d) => d[key]));
  const slot = Math.min(64, (width - pad) / Math.max(days.length, 1));
  const barWidth = Math.max(2, Math.min(40, slot - 6));
  const bars = days.map((d, i) => {
    const h = ((height - pad) * d[key]) / max;
    return `<rect class="${cls}" x="${pad + i * slot + (slot - barWidth) / 2}" y="${height - pad - h}" width="${barWidth}" height="${h}"><title>${escapeHtml(d.day)}: ${d[key]}</title></rect>
      <text x="${pad + i * slot + slot / 2}" y="${height - 8}" text-anchor="middle">${escapeHtml(d.day.slice(5))}</text>`;
  }).join("");
  return `<svg viewBox="0 0 ${width} ${height}" role="img" aria-label="${escapeHtml(key)} per day">
    <line x1="${pad}" y1="${height - pad}" x2="${width}" y2="${height - pad}" stroke="#cdd4e0"/>
    <text x="0" y="12">${num(max)}</text>${bars}</svg>`;
}

async function showUsage() {
  const nav = state.nav;
  const usage = await api("GET", "/api/usage");
  if (stale(nav)) return;
  const t = usage.totals;
  main.innerHTML = html`
    <div class="row"><div><h1>Usage</h1><p class="lead">Each accepted connection is charged once, when it is accepted.</p></div>
      <a class="button ghost" href="/api/usage?format=csv" download>Export CSV</a></div>
    <div class="stats">
      <div class="stat"><div class="value" id="total-amount">${t.amount} ${usage.currency}</div><div class="label">Charged</div></div>
      <div class="stat"><div class="value" id="total-connections">${num(t.connections)}</div><div class="label">Connections</div></div>
      <div class="stat"><div class="value">${num(t.predictions)}</div><div class="label">Predictions</div></div>
      <div class="stat"><div class="value">${num(t.errors)}</div><div class="label">Errors</div></div>
    </div>
    <section class="card chart" aria-labelledby="plot-title"><h2 id="plot-title">Over time</h2>
      <div class="legend"><span>Connections per day</span></div>${raw(barChart(usage.days, "connections", "bar1"))}
      <div class="legend mt"><span class="second">Predictions per day</span></div>${raw(barChart(usage.days, "predictions", "bar2"))}
    </section>
    <section class="card" aria-labelledby="days-title"><h2 id="days-title">Per day</h2>
      <div class="table-wrap"><table><thead><tr><th>Day</th><th class="num">Connections</th><th class="num">Predictions</th><th class="num">Errors</th><th class="num">Charged</th></tr></thead>
      <tbody>${usage.days.map((d) => raw(html`<tr><td>${d.day}</td><td class="num">${num(d.connections)}</td><td class="num">${num(d.predictions)}</td><td class="num">${num(d.errors)}</td><td class="num">${d.amount} ${usage.currency}</td></tr>`))}</tbody></table></div>
    </section>
    <section class="card" aria-labelledby="conn-title"><h2 id="conn-title">Per connection</h2>
      <div class="table-wrap"><table><thead><tr><th>Opened</th><th>Closed</th><th>Remote</th><th class="num">Predictions</th><th class="num">Errors</th><th class="num">Charge</th></tr></thead>
      <tbody>${usage.items.slice().reverse().map((u) => raw(html`<tr data-usage="${u.connection_id}"><td>${when(u.opened_at)}</td><td>${u.live ? raw('<span class="tag ok">live</span>') : when(u.closed_at)}</td><td>${u.remote}</td><td class="num">${num(u.predictions)}</td><td class="num">${num(u.errors)}</td><td class="num">${u.amount} ${u.currency}</td></tr>`))}</tbody></table></div>
    </section>`;
}

// ---- routing -------------------------------------------------------------------------
const VIEWS = { "#/keys": showKeys, "#/models": showModels, "#/connections": showConnections, "#/usage": showUsage };

async function route() {
  clearTimers();
  state.nav += 1;
  if (!state.csrf) return;
  const view = VIEWS[location.hash] ? location.hash : "#/keys";
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.getAttribute("href") === view));
  try { await VIEWS[view](); main.focus({ preventScroll: true }); }
  catch (err) { if (state.csrf) main.innerHTML = html`<p class="error" role="alert">${err.message}</p>`; }
}

window.addEventListener("hashchange", route);

(async function start() {
  const response = await fetch("/auth/session", { credentials: "same-origin" });
  const who = await response.json();
  if (response.ok) { loggedIn(who); route(); }
  else { state.allowSignup = !!who.allow_signup; showLogin(); }
})();
