// The CPNS web console: one ES module, no build step, no libraries, no external URLs.
// It talks only to the management API of the server that served it (/api/v1, docs/api.md).
// Everything that comes from the server (IDs come from devices) reaches the page through
// textContent or attribute setters, never through innerHTML.

const API = '/api/v1';
const TOKEN_KEY = 'cpns.console.token';
const REQUEST_TIMEOUT_MS = 15000; // one API request; then it is reported as a timeout
const LIVE_MAX_EVENTS = 200; // events kept in the Live list (older ones are dropped)
const CHART_EVENTS_MAX = 10000; // establishment outcomes kept for the charts
const SSE_RETRY_MS = 5000; // wait before opening the event stream again after it closed
const AUDIT_CHART_LIMIT = 1000; // audit records read for the charts
const RATE_WINDOW_MIN = 60; // the per-minute chart covers the last hour
const CHART_TICK_MS = 30000; // the per-minute chart moves on while it is shown

const ERROR_WORDS = {
  UNAUTHORIZED: 'The server did not accept the token. Sign in again with a valid token.',
  FORBIDDEN: 'This needs an admin token; this token has the read role.',
  MALFORMED_REQUEST: 'The server refused the request as malformed.',
  UNKNOWN_FIELD: 'The server refused the request: it has a field the server does not know.',
  BODY_TOO_LARGE: 'The server refused the request: its body is too large.',
  NOT_FOUND: 'Not found.',
  CONFLICT: 'Refused: this conflicts with the current state.',
  RATE_LIMITED: 'Too many requests with this token. Wait a moment and try again.',
  STORE_UNAVAILABLE: 'The server cannot reach its store right now. Try again shortly.',
  INTERNAL_ERROR: 'The server had an internal error.',
};

class ApiError extends Error {
  constructor(code, message, status) {
    super(message);
    this.code = code;
    this.status = status;
  }
  // The sentence shown to the user: our words for the code, the server's text, the code.
  describe() {
    const words = ERROR_WORDS[this.code] || 'The request failed.';
    const detail = this.message && this.message !== words ? ` ${this.message}` : '';
    return `${words}${detail} (${this.code}${this.status ? `, HTTP ${this.status}` : ''})`;
  }
}

const state = {
  token: '',
  role: '',
  name: '',
  view: '',
  openedAt: Date.now(),
  events: null, // the EventSource
  sseTimer: 0,
  outcomes: [], // {time_ms, ok, reason} of establishments received on the stream
  live: { ok: 0, failed: 0, lifecycle: 0 },
  chartTimer: 0,
};

// --- small DOM helpers ---------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

// el('td', {className: 'x'}, 'text', childNode, ...): text children become text nodes.
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'dataset') Object.assign(node.dataset, v);
    else if (k.startsWith('aria') || k === 'role' || k === 'scope' || k === 'for') {
      node.setAttribute(k.replace(/^aria([A-Z])/, (_, c) => `aria-${c.toLowerCase()}`), v);
    } else node[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function clear(node) {
  while (node.firstChild) node.firstChild.remove();
}

function fmtTime(ms) {
  if (!Number.isFinite(ms) || ms <= 0) return '';
  return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function plural(n, word, many = `${word}s`) {
  return `${n} ${n === 1 ? word : many}`;
}

// Marks a view as loading (aria-busy) while `work` runs; a view is never left marked.
async function busy(viewId, work) {
  const view = $(viewId);
  view.setAttribute('aria-busy', 'true');
  try {
    return await work();
  } finally {
    view.setAttribute('aria-busy', 'false');
  }
}

function badge(text, kind) {
  return el('span', { className: `badge badge-${kind}` }, text);
}

// --- API ---------------------------------------------------------------------------------

async function api(method, path, body) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), REQUEST_TIMEOUT_MS);
  const headers = { Authorization: `Bearer ${state.token}`, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(API + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: ctl.signal,
      cache: 'no-store',
    });
  } catch (e) {
    const why = e.name === 'AbortError' ? `no answer within ${REQUEST_TIMEOUT_MS / 1000} s`
      : 'network error';
    throw new ApiError('NETWORK', `Cannot reach the server (${why}).`, 0);
  } finally {
    clearTimeout(timer);
  }
  let data = null;
  try {
    data = await res.json();
  } catch {
    data = null;
  }
  if (!res.ok) {
    const err = data && data.error ? data.error : {};
    const e = new ApiError(err.code || `HTTP_${res.status}`, err.message || res.statusText, res.status);
    if (res.status === 401) signOut(e.describe());
    throw e;
  }
  if (data === null) throw new ApiError('BAD_ANSWER', 'The server sent no JSON.', res.status);
  return data;
}

function showError(e) {
  const text = e instanceof ApiError ? e.describe() : `Unexpected error: ${e.message || e}`;
  $('banner-text').textContent = text;
  $('banner').hidden = false;
}

function hideError() {
  $('banner').hidden = true;
}

// --- login and session ---------------------------------------------------------------------

async function signIn(token) {
  state.token = token;
  const who = await api('GET', '/whoami');
  if (who.role !== 'admin' && who.role !== 'read') {
    throw new ApiError('BAD_ANSWER', `Unknown role "${who.role}".`, 200);
  }
  state.role = who.role;
  state.name = who.name || '';
  sessionStorage.setItem(TOKEN_KEY, token);
  document.body.dataset.role = state.role;
  $('whoami').replaceChildren(el('span', { className: 'who-name' }, state.name),
    badge(state.role, state.role === 'admin' ? 'admin' : 'read'));
  $('session').hidden = false;
  $('nav').hidden = false;
  hideError();
  loadVersion();
  openStream();
  const wanted = location.hash.replace('#', '');
  showView(VIEWS[wanted] ? wanted : 'pns');
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = '';
  state.role = '';
  delete document.body.dataset.role;
  closeStream();
  $('session').hidden = true;
  $('nav').hidden = true;
  for (const v of document.querySelectorAll('.view')) v.hidden = true;
  $('view-login').hidden = false;
  $('token').value = '';
  const err = $('login-error');
  err.textContent = message || '';
  err.hidden = !message;
  hideError();
  $('token').focus();
}

async function loadVersion() {
  try {
    const res = await fetch(`${API}/health`, { cache: 'no-store' });
    const h = await res.json();
    $('server-version').textContent = h.version ? `cpns-server ${h.version}` : '';
  } catch {
    $('server-version').textContent = '';
  }
}

// --- views ---------------------------------------------------------------------------------

const VIEWS = {
  pns: loadPns,
  entities: loadEntities,
  audit: loadAudit,
  live: () => {},
  charts: loadCharts,
};

function showView(name) {
  state.view = name;
  for (const v of document.querySelectorAll('.view')) v.hidden = v.id !== `view-${name}`;
  for (const b of document.querySelectorAll('.nav-btn')) {
    if (b.dataset.view === name) b.setAttribute('aria-current', 'page');
    else b.removeAttribute('aria-current');
  }
  if (location.hash !== `#${name}`) history.replaceState(null, '', `#${name}`);
  clearInterval(state.chartTimer);
  if (name === 'charts') state.chartTimer = setInterval(drawCharts, CHART_TICK_MS);
  hideError();
  VIEWS[name]();
}

// PN Inventory ------------------------------------------------------------------------------

function capabilityList(caps) {
  const list = el('dl', { className: 'kv' });
  const entries = caps && typeof caps === 'object' ? Object.entries(caps) : [];
  for (const [k, v] of entries) {
    list.append(el('dt', {}, k.replace(/_/g, ' ')),
      el('dd', {}, typeof v === 'object' ? JSON.stringify(v) : String(v)));
  }
  if (!entries.length) list.append(el('dd', { className: 'muted' }, 'none reported'));
  return list;
}

function contentList(contents) {
  const items = Array.isArray(contents) ? contents : [];
  if (!items.length) return el('span', { className: 'muted' }, 'none');
  const ul = el('ul', { className: 'contents' });
  for (const c of items) {
    if (c === null || typeof c !== 'object') {
      ul.append(el('li', {}, String(c)));
      continue;
    }
    const id = c.content_id || c.id || '';
    const title = c.title || '';
    const size = Number(c.size_bytes);
    const extra = [c.media_type, c.size_bytes !== undefined && Number.isFinite(size) ? `${size} B` : '']
      .filter(Boolean).join(', ');
    ul.append(el('li', {}, el('span', { className: 'mono' }, id),
      title ? ` ${title}` : '', extra ? el('span', { className: 'muted' }, ` (${extra})`) : ''));
  }
  return ul;
}

function pnCard(pn) {
  const members = Array.isArray(pn.members) ? pn.members : [];
  const head = el('div', { className: 'pn-head' },
    el('h2', { className: 'pn-title' }, el('span', { className: 'muted' }, 'PN '),
      el('span', { className: 'mono pn-id' }, pn.pn_id)),
    el('span', { className: 'pn-gw' }, 'PN GW ', el('span', { className: 'mono' }, pn.gw_id)),
    Number.isFinite(pn.revision) ? el('span', { className: 'muted' }, `revision ${pn.revision}`) : '',
    el('span', { className: 'muted' }, plural(members.length, 'member')),
    pn.orphaned ? badge('orphaned', 'bad') : '',
    pn.gw_status && pn.gw_status !== 'active' ? badge(`PN GW ${pn.gw_status}`, 'warn') : '');
  const when = pn.registered_at || (pn.registered_at_ms ? fmtTime(Number(pn.registered_at_ms)) : '');
  if (when) head.append(el('span', { className: 'muted' }, `registered ${when}`));
  if (state.role === 'admin' && pn.orphaned) {
    head.append(el('button', {
      type: 'button', className: 'btn btn-danger btn-small admin-action',
      ariaLabel: `Delete PN ${pn.pn_id}`,
      onclick: () => deletePn(pn),
    }, 'Delete'));
  }
  const table = el('table', { className: 'table members' },
    el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'PNE'),
      el('th', { scope: 'col' }, 'Capabilities'), el('th', { scope: 'col' }, 'Contents'))));
  const body = el('tbody');
  for (const m of members) {
    body.append(el('tr', { dataset: { pne: m.pne_id } },
      el('td', { className: 'mono' }, m.pne_id),
      el('td', {}, capabilityList(m.capabilities)),
      el('td', {}, contentList(m.contents))));
  }
  table.append(body);
  return el('article', {
    className: `card pn-card${pn.orphaned ? ' pn-orphaned' : ''}`,
    dataset: { pn: pn.pn_id, gw: pn.gw_id },
  }, head, table);
}

function loadPns() {
  return busy('view-pns', loadPnsNow);
}

async function loadPnsNow() {
  const gw = $('pns-gw').value;
  const params = new URLSearchParams();
  if (gw) params.set('gw', gw);
  if ($('pns-orphaned').checked) params.set('orphaned', 'true');
  const query = params.toString() ? `?${params}` : '';
  $('pns-summary').textContent = 'Loading…';
  try {
    const data = await api('GET', `/pns${query}`);
    const pns = Array.isArray(data.pns) ? data.pns : [];
    // Newest first, then by PN GW and PN ID: the same order on every load.
    pns.sort((a, b) => (Number(b.registered_at_ms) || 0) - (Number(a.registered_at_ms) || 0) ||
      String(a.gw_id).localeCompare(String(b.gw_id)) || String(a.pn_id).localeCompare(String(b.pn_id)));
    const list = $('pns-list');
    clear(list);
    for (const pn of pns) list.append(pnCard(pn));
    const orphaned = pns.filter((p) => p.orphaned).length;
    const members = pns.reduce((n, p) => n + (p.members || []).length, 0);
    $('pns-summary').textContent = `${plural(pns.length, 'PN')}, ${plural(members, 'member')}` +
      (orphaned ? `, ${orphaned} orphaned` : '') + (gw ? ` at PN GW ${gw}` : '');
    if (!pns.length) list.append(el('p', { className: 'empty' }, 'No registered PNs.'));
    fillGatewayFilter(gw);
  } catch (e) {
    $('pns-summary').textContent = '';
    showError(e);
  }
}

// The PN GW filter lists the gateways the store knows (kept as it is when that fails).
async function fillGatewayFilter(selected) {
  try {
    const data = await api('GET', '/entities?kind=gw');
    const sel = $('pns-gw');
    const ids = (data.entities || []).map((e) => e.id).sort();
    sel.replaceChildren(el('option', { value: '' }, 'all'),
      ...ids.map((id) => el('option', { value: id }, id)));
    sel.value = ids.includes(selected) ? selected : '';
  } catch {
    /* the list itself has loaded; the filter keeps its old options */
  }
}

async function deletePn(pn) {
  const ok = await confirmAction('Delete PN',
    `Delete PN ${pn.pn_id} of PN GW ${pn.gw_id} from the PN Inventory? This cannot be undone.`,
    'Delete');
  if (!ok) return;
  try {
    await api('DELETE', `/pns/${encodeURIComponent(pn.gw_id)}/${encodeURIComponent(pn.pn_id)}`);
    loadPns();
  } catch (e) {
    showError(e);
  }
}

// Entities ----------------------------------------------------------------------------------

const ACTIONS = [
  { verb: 'disable', label: 'Disable', when: (s) => s === 'active', danger: false,
    text: (id) => `Disable ${id}? It fails authentication until it is enabled again.` },
  { verb: 'enable', label: 'Enable', when: (s) => s === 'disabled', danger: false,
    text: (id) => `Enable ${id} again?` },
  { verb: 'revoke', label: 'Revoke', when: (s) => s !== 'revoked', danger: true,
    text: (id) => `Revoke ${id} for good? Revocation is final: it leaves its PNs at once and ` +
      'can never be enabled again.' },
];

function statusBadge(status) {
  const kind = { active: 'ok', disabled: 'warn', revoked: 'bad' }[status] || 'neutral';
  return badge(status, kind);
}

function entityRow(ent) {
  const actions = el('td', { className: 'col-actions' });
  if (state.role === 'admin') {
    for (const a of ACTIONS) {
      if (!a.when(ent.status)) continue;
      actions.append(el('button', {
        type: 'button',
        className: `btn btn-small admin-action${a.danger ? ' btn-danger' : ''}`,
        dataset: { action: a.verb, entity: ent.id },
        ariaLabel: `${a.label} ${ent.id}`,
        onclick: () => entityAction(ent, a),
      }, a.label));
    }
  }
  return el('tr', { dataset: { entity: ent.id, status: ent.status } },
    el('td', { className: 'mono' }, ent.id),
    el('td', {}, ent.kind === 'gw' ? 'PN GW' : ent.kind === 'pne' ? 'PNE' : String(ent.kind)),
    el('td', { className: 'status' }, statusBadge(ent.status)),
    el('td', {}, ent.device_type || el('span', { className: 'muted' }, '—')),
    el('td', { className: 'muted nowrap' }, fmtTime(Number(ent.created_at_ms))),
    el('td', { className: 'muted' }, ent.key_version === undefined ? '' : String(ent.key_version)),
    actions);
}

function loadEntities() {
  return busy('view-entities', loadEntitiesNow);
}

async function loadEntitiesNow() {
  const kind = $('entities-kind').value;
  $('entities-summary').textContent = 'Loading…';
  $('entities-readonly').hidden = state.role === 'admin';
  try {
    const data = await api('GET', `/entities${kind ? `?kind=${encodeURIComponent(kind)}` : ''}`);
    const ents = Array.isArray(data.entities) ? data.entities : [];
    const body = $('entities-table').tBodies[0];
    body.replaceChildren(...ents.map(entityRow));
    const count = (s) => ents.filter((e) => e.status === s).length;
    $('entities-summary').textContent = `${plural(ents.length, 'entity', 'entities')}:` +
      ` ${count('active')} active, ${count('disabled')} disabled, ${count('revoked')} revoked`;
  } catch (e) {
    $('entities-summary').textContent = '';
    showError(e);
  }
}

async function entityAction(ent, action) {
  const ok = await confirmAction(`${action.label} ${ent.kind === 'gw' ? 'PN GW' : 'PNE'}`,
    action.text(ent.id), action.label, action.danger);
  if (!ok) return;
  try {
    const updated = await api('POST', `/entities/${encodeURIComponent(ent.id)}/${action.verb}`);
    $('entities-summary').textContent = `${updated.id || ent.id} is now ${updated.status}.`;
    await loadEntities();
    $('entities-summary').textContent = `${updated.id || ent.id} is now ${updated.status}. ` +
      $('entities-summary').textContent;
  } catch (e) {
    showError(e);
  }
}

// The confirmation dialog: resolves true on the action button, false on Cancel or Escape.
function confirmAction(title, text, label, danger = true) {
  const dlg = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  const ok = $('confirm-ok');
  ok.textContent = label;
  ok.className = `btn ${danger ? 'btn-danger' : 'btn-primary'}`;
  dlg.returnValue = '';
  return new Promise((resolve) => {
    dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok'), { once: true });
    dlg.showModal();
    $('confirm-cancel').focus();
  });
}

// Audit log ---------------------------------------------------------------------------------

// Whether an audit record reports a failure, and its reason ("" when it reports none).
// The API's records carry `success`, and as `action` the reason ("authentication failed").
function auditFailure(rec) {
  if (rec.success === false) return { failed: true, reason: rec.action || '' };
  const m = /\bFAILED\b:?\s*(.*)$/i.exec(String(rec.detail || ''));
  if (m) return { failed: true, reason: m[1].trim() };
  if (/\bfail/i.test(String(rec.action || ''))) return { failed: true, reason: rec.reason || '' };
  return { failed: false, reason: '' };
}

// What a record is about and its result, in words. The server's own records (establishments
// and lifecycle changes, with a PN ID) carry the failure reason as their action ("none" when it
// succeeded); operators' records carry what was done ("revoked", "provisioned", ...).
const LIFECYCLE_DETAIL = /^(leave|remove|dissolve|add|withdraw|pn delete)\b/i;
function describeAudit(r) {
  const f = auditFailure(r);
  const result = f.failed ? `failed: ${f.reason || 'no reason given'}` : 'ok';
  if (r.pn_id) {
    const m = LIFECYCLE_DETAIL.exec(String(r.detail || ''));
    return { what: m ? m[1].toLowerCase() : 'establishment', failed: f.failed, result };
  }
  return { what: r.action || '', failed: f.failed, result };
}

function loadAudit() {
  return busy('view-audit', loadAuditNow);
}

async function loadAuditNow() {
  const limit = $('audit-limit').value;
  $('audit-summary').textContent = 'Loading…';
  try {
    const data = await api('GET', `/audit?limit=${encodeURIComponent(limit)}`);
    const recs = Array.isArray(data.records) ? data.records : [];
    const body = $('audit-table').tBodies[0];
    body.replaceChildren(...recs.map((r) => {
      const d = describeAudit(r);
      return el('tr', { className: d.failed ? 'row-bad' : '' },
        el('td', { className: 'mono nowrap' }, String(r.time || '').replace('T', ' ')),
        el('td', {}, r.actor || ''),
        el('td', {}, d.what),
        el('td', { className: 'mono' }, r.subject || ''),
        el('td', {}, badge(d.result, d.failed ? 'bad' : 'ok')),
        el('td', { className: 'muted' }, r.detail || ''));
    }));
    const failed = recs.filter((r) => auditFailure(r).failed).length;
    $('audit-summary').textContent = `${plural(recs.length, 'record')}, newest first` +
      (failed ? `; ${failed} report a failure` : '');
  } catch (e) {
    $('audit-summary').textContent = '';
    showError(e);
  }
}

// Live --------------------------------------------------------------------------------------

function setLiveState(text, kind) {
  $('live-state').textContent = text;
  $('live-state').className = `state state-${kind}`;
  $('live-dot').className = `dot dot-${kind}`;
}

function openStream() {
  closeStream();
  setLiveState('connecting…', 'wait');
  const src = new EventSource(`${API}/events?access_token=${encodeURIComponent(state.token)}`);
  state.events = src;
  src.onopen = () => setLiveState('live', 'on');
  src.onerror = () => {
    if (src.readyState === EventSource.CLOSED) {
      setLiveState(`disconnected; retrying in ${SSE_RETRY_MS / 1000} s`, 'off');
      src.close();
      state.sseTimer = setTimeout(async () => {
        if (!state.token) return;
        try {
          await api('GET', '/whoami'); // a token no longer accepted signs out instead
          openStream();
        } catch (e) {
          if (state.token) {
            setLiveState('disconnected', 'off');
            state.sseTimer = setTimeout(openStream, SSE_RETRY_MS);
          }
        }
      }, SSE_RETRY_MS);
    } else {
      setLiveState('reconnecting…', 'wait');
    }
  };
  src.addEventListener('establishment', (ev) => onEvent('establishment', ev.data));
  src.addEventListener('lifecycle', (ev) => onEvent('lifecycle', ev.data));
}

function closeStream() {
  clearTimeout(state.sseTimer);
  if (state.events) state.events.close();
  state.events = null;
  setLiveState('not connected', 'off');
}

function onEvent(type, raw) {
  let d;
  try {
    d = JSON.parse(raw);
  } catch {
    return; // not one JSON object: nothing to show
  }
  if (!d || typeof d !== 'object') return;
  const t = Number(d.time_ms) || Date.now();
  if (type === 'establishment') {
    const ok = d.outcome === 'registered';
    if (ok) state.live.ok += 1;
    else state.live.failed += 1;
    state.outcomes.push({ time_ms: t, ok, reason: ok ? '' : String(d.reason || 'unknown'), pn_id: d.pn_id });
    if (state.outcomes.length > CHART_EVENTS_MAX) state.outcomes.shift();
  } else {
    state.live.lifecycle += 1;
  }
  $('live-ok').textContent = state.live.ok;
  $('live-failed').textContent = state.live.failed;
  $('live-lifecycle').textContent = state.live.lifecycle;
  const list = $('live-list');
  list.prepend(eventItem(type, d, t));
  while (list.children.length > LIVE_MAX_EVENTS) list.lastElementChild.remove();
  if (state.view === 'charts') drawCharts();
}

function eventItem(type, d, t) {
  const time = el('time', { className: 'mono ev-time', dateTime: new Date(t).toISOString() },
    new Date(t).toISOString().slice(11, 19));
  const where = d.gw_id || d.pn_id ? el('span', { className: 'ev-where' },
    d.gw_id ? el('span', {}, 'PN GW ', el('span', { className: 'mono' }, d.gw_id)) : '',
    d.gw_id && d.pn_id ? ' · ' : '',
    d.pn_id ? el('span', {}, 'PN ', el('span', { className: 'mono' }, d.pn_id)) : '') : '';
  if (type === 'establishment') {
    const ok = d.outcome === 'registered';
    const flow = { pne_initiated: 'PNE initiated', gw_initiated: 'PN GW initiated' }[d.flow] ||
      String(d.flow || '');
    return el('li', { className: `ev ${ok ? 'ev-ok' : 'ev-failed'}`, dataset: { type, outcome: d.outcome || '' } },
      time, ok ? badge('registered', 'ok') : badge('failed', 'bad'),
      el('span', { className: 'ev-what' }, `Establishment, ${flow}`), where,
      Number.isFinite(d.members) ? el('span', { className: 'muted' }, plural(d.members, 'member')) : '',
      ok ? '' : el('span', { className: 'ev-reason' }, 'reason: ', el('strong', {}, String(d.reason || 'unknown'))));
  }
  return el('li', { className: 'ev ev-lifecycle', dataset: { type } },
    time, badge(String(d.action || 'change'), 'neutral'),
    el('span', { className: 'ev-what' }, 'Lifecycle'), where,
    d.subject ? el('span', {}, 'subject ', el('span', { className: 'mono' }, d.subject)) : '');
}

// Charts ------------------------------------------------------------------------------------

let auditOutcomes = []; // {time_ms, ok, reason} from the audit log, before the page was opened

function loadCharts() {
  return busy('view-charts', loadChartsNow);
}

async function loadChartsNow() {
  try {
    const data = await api('GET', `/audit?limit=${AUDIT_CHART_LIMIT}`);
    auditOutcomes = [];
    const streamed = new Set(state.outcomes.map((o) => o.pn_id));
    for (const r of data.records || []) {
      const t = Number.isFinite(r.time_ms) ? r.time_ms : Date.parse(r.time);
      // Establishments after the page was opened are counted from the event stream instead.
      if (!Number.isFinite(t) || t >= state.openedAt || streamed.has(r.pn_id)) continue;
      if (!isEstablishmentRecord(r)) continue;
      const f = auditFailure(r);
      auditOutcomes.push({ time_ms: t, ok: !f.failed, reason: f.failed ? reasonName(f.reason) : '' });
    }
    $('charts-source').textContent = `From ${plural(state.outcomes.length, 'event')} received since ` +
      `this page was opened and ${plural(auditOutcomes.length, 'audit record')} from before.`;
  } catch (e) {
    showError(e);
  }
  drawCharts();
}

// An establishment's outcome as the server audits it: one record for the PN (a PN ID and no
// PNE ID) besides one per PNE. Lifecycle changes of a PN are audited alike; their detail starts
// with the operation (LIFECYCLE_DETAIL).
function isEstablishmentRecord(r) {
  return typeof r.success === 'boolean' && !!r.pn_id && !r.pne_id &&
    !LIFECYCLE_DETAIL.test(String(r.detail || ''));
}

const SVG_NS = 'http://www.w3.org/2000/svg';

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// The axis maximum: four equal whole-number steps of 1, 2 or 5 times a power of ten.
function niceMax(n) {
  const need = Math.max(Math.ceil(n / 4), 1);
  const p = 10 ** Math.floor(Math.log10(need));
  for (const m of [1, 2, 5, 10]) if (need <= m * p) return 4 * m * p;
  return 40 * p;
}

// Audit details name reasons in words ("key expired"); events by their enum name (KEY_EXPIRED).
function reasonName(text) {
  return String(text || 'unknown').trim().toUpperCase().replace(/[\s-]+/g, '_');
}

function drawCharts() {
  const all = auditOutcomes.concat(state.outcomes);
  drawRate(all);
  drawReasons(all);
}

function drawRate(outcomes) {
  const W = 640, H = 240, L = 40, R = 10, T = 12, B = 30;
  const now = Date.now();
  const start = Math.floor(now / 60000) * 60000 - (RATE_WINDOW_MIN - 1) * 60000;
  const ok = new Array(RATE_WINDOW_MIN).fill(0);
  const bad = new Array(RATE_WINDOW_MIN).fill(0);
  for (const o of outcomes) {
    const i = Math.floor((o.time_ms - start) / 60000);
    if (i < 0 || i >= RATE_WINDOW_MIN) continue;
    if (o.ok) ok[i] += 1;
    else bad[i] += 1;
  }
  const max = niceMax(Math.max(...ok.map((v, i) => v + bad[i])));
  const total = ok.reduce((a, b) => a + b, 0) + bad.reduce((a, b) => a + b, 0);
  const root = svg('svg', {
    viewBox: `0 0 ${W} ${H}`, role: 'img', class: 'chart-svg',
    'aria-label': `Establishments per minute over the last hour: ${total} in all, ` +
      `${bad.reduce((a, b) => a + b, 0)} failed`,
  });
  const ph = H - T - B;
  const bw = (W - L - R) / RATE_WINDOW_MIN;
  for (let k = 0; k <= 4; k += 1) {
    const y = T + ph - (ph * k) / 4;
    root.append(svg('line', { x1: L, x2: W - R, y1: y, y2: y, class: 'grid' }));
    root.append(svg('text', { x: L - 6, y: y + 4, class: 'axis', 'text-anchor': 'end' }, String((max * k) / 4)));
  }
  for (let i = 0; i < RATE_WINDOW_MIN; i += 1) {
    const x = L + i * bw + 1;
    const hOk = (ph * ok[i]) / max;
    const hBad = (ph * bad[i]) / max;
    const label = `${new Date(start + i * 60000).toISOString().slice(11, 16)}: ${ok[i]} registered, ${bad[i]} failed`;
    if (ok[i]) {
      const r = svg('rect', { x, y: T + ph - hOk, width: Math.max(bw - 2, 1), height: hOk, class: 'bar-ok' });
      r.append(svg('title', {}, label));
      root.append(r);
    }
    if (bad[i]) {
      const r = svg('rect', { x, y: T + ph - hOk - hBad, width: Math.max(bw - 2, 1), height: hBad, class: 'bar-bad' });
      r.append(svg('title', {}, label));
      root.append(r);
    }
  }
  for (let i = 0; i < RATE_WINDOW_MIN; i += 15) {
    root.append(svg('text', { x: L + i * bw, y: H - 10, class: 'axis' },
      new Date(start + i * 60000).toISOString().slice(11, 16)));
  }
  root.append(svg('text', { x: W - R, y: H - 10, class: 'axis', 'text-anchor': 'end' }, 'now (UTC)'));
  $('chart-rate').replaceChildren(root);
}

function drawReasons(outcomes) {
  const counts = new Map();
  for (const o of outcomes) if (!o.ok) counts.set(o.reason, (counts.get(o.reason) || 0) + 1);
  const rows = [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  const box = $('chart-reasons');
  if (!rows.length) {
    box.replaceChildren(el('p', { className: 'empty' }, 'No failed establishments.'));
    return;
  }
  const W = 640, rowH = 30, L = 240, R = 50;
  const H = rows.length * rowH + 10;
  const max = Math.max(...rows.map((r) => r[1]));
  const root = svg('svg', {
    viewBox: `0 0 ${W} ${H}`, role: 'img', class: 'chart-svg',
    'aria-label': `Failure reasons: ${rows.map(([k, v]) => `${k} ${v}`).join(', ')}`,
  });
  rows.forEach(([reason, n], i) => {
    const y = 5 + i * rowH;
    const w = Math.max(((W - L - R) * n) / max, 2);
    root.append(svg('text', { x: L - 10, y: y + rowH / 2 + 4, class: 'axis reason', 'text-anchor': 'end' }, reason));
    const r = svg('rect', { x: L, y: y + 4, width: w, height: rowH - 10, rx: 3, class: 'bar-bad' });
    r.append(svg('title', {}, `${reason}: ${n}`));
    root.append(r);
    root.append(svg('text', { x: L + w + 6, y: y + rowH / 2 + 4, class: 'axis count' }, String(n)));
  });
  box.replaceChildren(root);
}

// --- wiring --------------------------------------------------------------------------------

function init() {
  $('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const token = $('token').value.trim();
    $('login-error').hidden = true;
    if (!token) return;
    $('login-submit').disabled = true;
    try {
      await signIn(token);
    } catch (e) {
      state.token = '';
      sessionStorage.removeItem(TOKEN_KEY);
      $('login-error').textContent = e instanceof ApiError ? e.describe() : String(e);
      $('login-error').hidden = false;
    } finally {
      $('login-submit').disabled = false;
    }
  });
  $('logout').addEventListener('click', () => signOut(''));
  $('banner-close').addEventListener('click', hideError);
  for (const b of document.querySelectorAll('.nav-btn')) {
    b.addEventListener('click', () => showView(b.dataset.view));
  }
  window.addEventListener('hashchange', () => {
    const v = location.hash.replace('#', '');
    if (state.token && VIEWS[v] && v !== state.view) showView(v);
  });
  $('pns-refresh').addEventListener('click', loadPns);
  $('pns-gw').addEventListener('change', loadPns);
  $('pns-orphaned').addEventListener('change', loadPns);
  $('entities-refresh').addEventListener('click', loadEntities);
  $('entities-kind').addEventListener('change', loadEntities);
  $('audit-refresh').addEventListener('click', loadAudit);
  $('audit-limit').addEventListener('change', loadAudit);
  $('charts-refresh').addEventListener('click', loadCharts);
  $('live-clear').addEventListener('click', () => clear($('live-list')));

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    signIn(saved).catch((e) => signOut(e instanceof ApiError ? e.describe() : String(e)));
  } else {
    signOut('');
  }
}

init();
