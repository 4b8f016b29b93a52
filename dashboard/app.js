// The weir dashboard: one page over the host's own API, no framework and no build step.
//
// Live figures come from `GET /v1/live` (server-sent events, read with fetch so the admin token
// can go in a header when the host needs it for reads); everything else is the same API the CLI
// uses. Rows are kept per plugin, partition and table and updated in place, so a button never
// moves under the pointer while the figures refresh.
'use strict';

const HISTORY = 90; // samples kept per sparkline (one a second)
const TOKEN_KEY = 'weir-token';

const ui = {
  token: localStorage.getItem(TOKEN_KEY) || '',
  selected: null, // the plugin whose detail is open
  previous: null, // the last view, for rates
  previousBefore: null, // the one before it
  history: new Map(), // plugin name -> [{rate, lag}]
  partitionRates: new Map(), // "plugin topic/partition" -> events/s
  deadLetterCount: new Map(), // plugin name -> count last listed
};

const $ = (selector) => document.querySelector(selector);

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === 'class') node.className = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function thousands(n) {
  return Number(n).toLocaleString('en-US');
}

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function seconds(s) {
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

// Quantile `q` of a histogram as the host reports it (counts per bucket of fixed bounds).
const BOUNDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 30];
function quantile(histogram, q) {
  const counts = histogram?.counts || [];
  const total = counts.reduce((a, b) => a + b, 0);
  if (total === 0) return null;
  const rank = Math.max(1, Math.ceil(total * q));
  let seen = 0;
  for (let i = 0; i < counts.length; i++) {
    seen += counts[i];
    if (seen >= rank) return i < BOUNDS.length ? BOUNDS[i] : Infinity;
  }
  return Infinity;
}

function notify(message, isError) {
  const notice = $('#notice');
  notice.textContent = message;
  notice.classList.toggle('error', Boolean(isError));
  notice.hidden = false;
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => { notice.hidden = true; }, isError ? 15000 : 6000);
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra);
  if (ui.token) headers.Authorization = `Bearer ${ui.token}`;
  return headers;
}

// One API call; a refusal becomes an Error carrying the host's own message.
async function api(method, path, body, contentType) {
  const headers = authHeaders(contentType ? { 'Content-Type': contentType } : {});
  const response = await fetch(path, { method, headers, body });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!response.ok) {
    const message = data?.error?.message || `${method} ${path}: HTTP ${response.status}`;
    const hint = response.status === 401 ? ' Paste the admin token above (the host printed where it keeps it).' : '';
    throw new Error(message + hint);
  }
  return data;
}

// ---- live updates -------------------------------------------------------------------------

function setConnection(state, text) {
  const pill = $('#connection');
  pill.dataset.state = state;
  pill.textContent = text;
}

// Reads `GET /v1/live` as server-sent events; reconnects after a pause when it ends or fails.
async function follow() {
  for (;;) {
    try {
      const response = await fetch('/v1/live', { headers: authHeaders({ Accept: 'text/event-stream' }) });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      setConnection('live', 'live');
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffered = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true }).replace(/\r\n/g, '\n');
        let end;
        while ((end = buffered.indexOf('\n\n')) >= 0) {
          const block = buffered.slice(0, end);
          buffered = buffered.slice(end + 2);
          const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).replace(/^ /, '')).join('\n');
          if (data) render(JSON.parse(data));
        }
      }
    } catch (_) {
      // Shown in the pill; the loop tries again.
    }
    setConnection('reconnecting', 'reconnecting…');
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

// ---- rendering ------------------------------------------------------------------------------

function sparkline(values, kind) {
  const width = 120;
  const height = 26;
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  svg.setAttribute('class', `spark ${kind}`);
  svg.setAttribute('aria-hidden', 'true');
  const max = Math.max(1, ...values);
  const step = width / Math.max(1, HISTORY - 1);
  const offset = width - step * (values.length - 1);
  const points = values.map((v, i) => `${(offset + i * step).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`);
  const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
  line.setAttribute('points', points.join(' '));
  svg.append(line);
  return svg;
}

// Show `view`; `again` re-shows the last one (a filter or selection changed): no new sample.
function render(view, again) {
  const status = view.status;
  const previous = again ? ui.previousBefore : ui.previous;
  const elapsed = previous ? (view.time_ms - previous.time_ms) / 1000 : 0;
  const rate = (now, before) => (elapsed > 0 && before !== undefined ? Math.max(0, now - before) / elapsed : null);

  $('#source').textContent = status.source_error ? `${status.source} — ${status.source_error}` : status.source;
  $('#events-read').textContent = thousands(status.events_read);
  const readRate = rate(status.events_read, previous?.status.events_read);
  $('#events-rate').textContent = readRate === null ? '' : `${thousands(Math.round(readRate))} /s`;

  const lagOf = (label) => status.lag.filter((l) => l.plugin === label).reduce((sum, l) => sum + l.lag, 0);
  const states = {};
  for (const p of status.plugins) states[p.state] = (states[p.state] || 0) + 1;
  $('#plugin-count').textContent = status.plugins.length;
  $('#plugin-states').textContent = Object.entries(states).map(([s, n]) => `${n} ${s}`).join(', ');
  $('#total-lag').textContent = thousands(status.lag.reduce((sum, l) => sum + l.lag, 0));
  const behind = Math.max(0, ...status.lag.map((l) => l.lag_seconds || 0));
  $('#max-behind').textContent = behind > 0 ? `up to ${seconds(behind)} behind` : 'caught up';
  $('#total-dead').textContent = thousands(status.plugins.reduce((sum, p) => sum + p.dead_letters, 0));
  $('#total-failed').textContent = `${thousands(status.plugins.reduce((sum, p) => sum + p.events_failed, 0))} failed events`;
  if (status.checkpoint) {
    const c = status.checkpoint;
    $('#checkpoint').textContent = c.written_ms ? `${seconds(Math.max(0, view.time_ms - c.written_ms) / 1000)} ago` : `#${c.seq}`;
    $('#checkpoint-detail').textContent = `#${c.seq}: ${thousands(c.rows)} rows, ${bytes(c.bytes)}, ${c.write_ms} ms`;
  }

  // Plugins, keyed by name.
  const tbody = $('#plugins tbody');
  const seen = new Set();
  for (const p of status.plugins) {
    const name = p.name;
    seen.add(name);
    const before = previous?.status.plugins.find((q) => q.name === name);
    const history = ui.history.get(name) || [];
    const perSecond = rate(p.events_ok, before?.events_ok);
    if (!again) history.push({ rate: perSecond ?? 0, lag: lagOf(`${p.name}@${p.version}`) });
    if (history.length === 0) history.push({ rate: 0, lag: lagOf(`${p.name}@${p.version}`) });
    while (history.length > HISTORY) history.shift();
    ui.history.set(name, history);
    let row = tbody.querySelector(`tr[data-plugin="${CSS.escape(name)}"]`);
    if (!row) {
      row = pluginRow(name);
      tbody.append(row);
    }
    updatePluginRow(row, p, history, perSecond);
  }
  for (const row of tbody.querySelectorAll('tr')) {
    if (!seen.has(row.dataset.plugin)) row.remove();
  }
  if (status.plugins.length === 0) {
    tbody.replaceChildren(el('tr', { class: 'empty' }, el('td', { colspan: '13' }, 'no plugins yet')));
  }

  renderLag(status, previous, rate);
  renderTables(view.tables);
  if (ui.selected) renderDetail(status.plugins.find((p) => p.name === ui.selected));
  if (!again) {
    ui.previousBefore = previous;
    ui.previous = view;
  }
}

function pluginRow(name) {
  const action = (verb) => el('button', { type: 'button', 'data-action': verb, onclick: () => act(name, verb) }, verb);
  return el('tr', { 'data-plugin': name },
    el('td', { class: 'name', title: 'show failures and dead letters', onclick: () => select(name) }),
    el('td', { class: 'kind' }),
    el('td', { class: 'deploy-number num' }),
    el('td', { class: 'state' }),
    el('td', { class: 'throughput' }),
    el('td', { class: 'ok num' }),
    el('td', { class: 'lag-spark' }),
    el('td', { class: 'lag num' }),
    el('td', { class: 'failed num' }),
    el('td', { class: 'dead num' }),
    el('td', { class: 'p99 num' }),
    el('td', { class: 'memory num' }),
    el('td', {}, el('div', { class: 'actions' }, action('pause'), action('resume'), action('rebuild'), action('rollback'))));
}

function updatePluginRow(row, p, history, perSecond) {
  const cell = (selector) => row.querySelector(selector);
  cell('.name').textContent = `${p.name}@${p.version}`;
  cell('.kind').textContent = p.kind.world;
  cell('.deploy-number').textContent = `#${p.deploy}`;
  const state = cell('.state');
  state.dataset.state = p.state;
  state.replaceChildren(p.state);
  if (p.rebuild) {
    const r = p.rebuild;
    const total = r.events_done + r.events_left;
    state.append(el('progress', { max: String(Math.max(1, total)), value: String(r.events_done), title: `${r.label}: ${thousands(r.events_done)} of ${thousands(total)}` }));
  }
  cell('.throughput').replaceChildren(sparkline(history.map((h) => h.rate), 'rate'),
    el('span', { class: 'muted' }, perSecond === null ? '' : `${thousands(Math.round(perSecond))}/s`));
  cell('.ok').textContent = thousands(p.events_ok);
  cell('.lag-spark').replaceChildren(sparkline(history.map((h) => h.lag), 'lag'));
  cell('.lag').textContent = thousands(history[history.length - 1].lag);
  cell('.failed').textContent = thousands(p.events_failed);
  cell('.dead').textContent = thousands(p.dead_letters);
  const p99 = quantile(p.batches, 0.99);
  cell('.p99').textContent = p99 === null ? '–' : p99 === Infinity ? '> 30 s' : seconds(p99);
  cell('.memory').textContent = bytes(p.memory_bytes || 0);
  const paused = p.state === 'paused' || p.state === 'failed';
  row.querySelector('[data-action=pause]').disabled = paused;
  row.querySelector('[data-action=resume]').disabled = !paused;
  row.querySelector('[data-action=rebuild]').disabled = p.kind.world !== 'projection';
  row.classList.toggle('selected', ui.selected === p.name);
}

function renderLag(status, previous, rate) {
  const tbody = $('#lag tbody');
  const seen = new Set();
  const maxLag = Math.max(1, ...status.lag.map((l) => l.lag));
  for (const l of status.lag) {
    const key = `${l.plugin} ${l.topic}/${l.partition}`;
    seen.add(key);
    let row = tbody.querySelector(`tr[data-key="${CSS.escape(key)}"]`);
    if (!row) {
      row = el('tr', { 'data-key': key, 'data-plugin': l.plugin.split('@')[0] },
        el('td', {}, l.plugin), el('td', {}, `${l.topic}/${l.partition}`), el('td', { class: 'position num' }),
        el('td', { class: 'end num' }), el('td', { class: 'lag num' }), el('td', { class: 'lag-bar' }),
        el('td', { class: 'behind num' }), el('td', { class: 'rate num' }));
      tbody.append(row);
    }
    const before = previous?.status.lag.find((m) => m.plugin === l.plugin && m.topic === l.topic && m.partition === l.partition);
    const perSecond = rate(l.events || 0, before?.events);
    row.querySelector('.position').textContent = thousands(l.position);
    row.querySelector('.end').textContent = thousands(l.end);
    row.querySelector('.lag').textContent = thousands(l.lag);
    row.querySelector('.lag-bar').replaceChildren(el('div', { class: 'bar' }, el('span', { style: `width: ${(100 * l.lag) / maxLag}%` })));
    const filter = $('#lag-filter').value;
    row.hidden = (filter !== '' && filter !== row.dataset.plugin) || ($('#lag-behind').checked && l.lag === 0);
    row.querySelector('.behind').textContent = l.lag > 0 ? seconds(l.lag_seconds || 0) : '–';
    row.querySelector('.rate').textContent = perSecond === null ? '' : `${thousands(Math.round(perSecond))}/s`;
  }
  for (const row of tbody.querySelectorAll('tr')) {
    if (!seen.has(row.dataset.key)) row.remove();
  }
  // The filter lists the plugins there are.
  const filter = $('#lag-filter');
  const names = status.plugins.map((p) => p.name);
  const listed = [...filter.options].slice(1).map((o) => o.value);
  if (names.join() !== listed.join()) {
    const chosen = filter.value;
    filter.replaceChildren(el('option', { value: '' }, 'all plugins'), ...names.map((n) => el('option', { value: n }, n)));
    filter.value = names.includes(chosen) ? chosen : '';
  }
}

function renderTables(tables) {
  const tbody = $('#tables tbody');
  const seen = new Set();
  for (const t of tables) {
    seen.add(t.qualified_name);
    let row = tbody.querySelector(`tr[data-table="${CSS.escape(t.qualified_name)}"]`);
    if (!row) {
      const query = () => {
        $('#sql-input').value = `SELECT * FROM ${t.plugin}.${t.name} LIMIT 100`;
        runSql();
      };
      row = el('tr', { 'data-table': t.qualified_name },
        el('td', { class: 'table-name' }, t.name), el('td', {}, t.plugin), el('td', { class: 'rows num' }),
        el('td', { class: 'bytes num' }),
        el('td', {}, el('div', { class: 'schema' }, ...t.columns.map((c) => el('span', { title: c.nullable ? 'nullable' : 'not null' }, `${c.name} ${c.type}`)))),
        el('td', {}, el('button', { type: 'button', onclick: query }, 'query')));
      tbody.append(row);
    }
    row.querySelector('.rows').textContent = thousands(t.rows);
    row.querySelector('.bytes').textContent = bytes(t.bytes || 0);
  }
  for (const row of tbody.querySelectorAll('tr')) {
    if (!seen.has(row.dataset.table)) row.remove();
  }
  if (tables.length === 0) {
    tbody.replaceChildren(el('tr', { class: 'empty' }, el('td', { colspan: '6' }, 'no tables yet')));
  }
}

// ---- plugin detail: failures, dead letters, rebuild ----------------------------------------

function select(name) {
  ui.selected = ui.selected === name ? null : name;
  ui.deadLetterCount.delete(name);
  $('#detail').hidden = !ui.selected;
  $('#dead-letter-event').hidden = true;
  if (ui.previous) render(ui.previous, true);
}

function renderDetail(p) {
  if (!p) {
    $('#detail').hidden = true;
    return;
  }
  $('#detail-title').textContent = `${p.name}@${p.version} (deploy #${p.deploy}, ${p.state}${p.stopped ? `: ${p.stopped}` : ''})`;
  const rebuild = $('#detail-rebuild');
  rebuild.hidden = !p.rebuild;
  if (p.rebuild) {
    const r = p.rebuild;
    const total = r.events_done + r.events_left;
    $('#detail-rebuild-text').textContent = `rebuilding ${r.label} (${r.reason}): ${thousands(r.events_done)} of ${thousands(total)} events, ${thousands(Math.round(r.rate))}/s, ${seconds(r.elapsed_ms / 1000)}`;
    $('#detail-rebuild-bar').max = Math.max(1, total);
    $('#detail-rebuild-bar').value = r.events_done;
  }
  const failures = $('#detail-failures');
  const lines = [...p.recent_failures].reverse();
  if (p.rebuild_error) lines.unshift(`rebuild abandoned: ${p.rebuild_error}`);
  failures.replaceChildren(...(lines.length ? lines.map((f) => el('li', {}, f)) : [el('li', { class: 'muted' }, 'none')]));
  if (ui.deadLetterCount.get(p.name) !== p.dead_letters) {
    ui.deadLetterCount.set(p.name, p.dead_letters);
    listDeadLetters(p.name);
  }
}

async function listDeadLetters(name) {
  try {
    const letters = await api('GET', `/v1/plugins/${encodeURIComponent(name)}/dlq?limit=100`);
    const rows = letters.map((d) => el('tr', { 'data-dead-letter': `${d.partition}/${d.offset}`, title: 'show the event', onclick: () => showDeadLetter(name, d) },
      el('td', {}, `${d.partition}/${d.offset}`), el('td', {}, d.origin), el('td', {}, d.event_type), el('td', {}, d.key || ''),
      el('td', {}, d.kind), el('td', {}, d.error)));
    $('#dead-letters tbody').replaceChildren(...(rows.length ? rows : [el('tr', { class: 'empty' }, el('td', { colspan: '6' }, 'none waiting'))]));
  } catch (error) {
    notify(error.message, true);
  }
}

async function showDeadLetter(name, d) {
  try {
    const full = await api('GET', `/v1/plugins/${encodeURIComponent(name)}/dlq/${d.partition}/${d.offset}`);
    const box = $('#dead-letter-event');
    box.textContent = JSON.stringify(full, null, 2);
    box.hidden = false;
  } catch (error) {
    notify(error.message, true);
  }
}

// ---- actions (they carry the admin token) ---------------------------------------------------

async function act(name, verb) {
  try {
    const outcome = await api('POST', `/v1/plugins/${encodeURIComponent(name)}/${verb}`);
    notify(outcome.message || `${name}: ${outcome.action}`);
  } catch (error) {
    notify(error.message, true);
  }
}

async function deadLetterAction(verb) {
  const name = ui.selected;
  if (!name) return;
  if (verb === 'purge' && !window.confirm(`Purge every dead letter of ${name}? They are not replayed.`)) return;
  try {
    const outcome = await api('POST', `/v1/plugins/${encodeURIComponent(name)}/dlq/${verb}`);
    notify(outcome.message);
    ui.deadLetterCount.delete(name);
  } catch (error) {
    notify(error.message, true);
  }
}

async function deploy(event) {
  event.preventDefault();
  const file = $('#deploy-file').files[0];
  if (!file) return;
  const query = new URLSearchParams();
  const name = $('#deploy-name').value.trim();
  if (name) query.append('name', name);
  query.append('from', $('#deploy-from').value);
  if ($('#deploy-take-over').checked) query.append('take_over', 'true');
  for (const param of $('#deploy-params').value.split(',').map((p) => p.trim()).filter(Boolean)) {
    query.append('param', param);
  }
  try {
    const outcome = await api('POST', `/v1/plugins?${query}`, await file.arrayBuffer(), 'application/wasm');
    notify(outcome.message);
  } catch (error) {
    notify(error.message, true);
  }
}

// ---- SQL console ----------------------------------------------------------------------------

async function runSql(event) {
  if (event) event.preventDefault();
  const sql = $('#sql-input').value;
  const status = $('#sql-status');
  status.textContent = 'running…';
  const started = performance.now();
  try {
    const rows = await api('POST', '/v1/sql', JSON.stringify({ sql }), 'application/json');
    const ms = Math.round(performance.now() - started);
    status.textContent = `${thousands(rows.length)} rows in ${ms} ms`;
    showRows(rows);
  } catch (error) {
    status.textContent = '';
    $('#sql-result').replaceChildren(el('p', { class: 'error', id: 'sql-error' }, error.message));
    $('#sql-chart').replaceChildren();
  }
}

const SHOWN_ROWS = 1000;

function showRows(rows) {
  // Columns in the order they first appear (null fields are left out of a row's object).
  const columns = [];
  for (const row of rows.slice(0, SHOWN_ROWS)) {
    for (const key of Object.keys(row)) if (!columns.includes(key)) columns.push(key);
  }
  const table = el('table', { class: 'grid', id: 'sql-table' },
    el('thead', {}, el('tr', {}, ...columns.map((c) => el('th', {}, c)))),
    el('tbody', {}, ...rows.slice(0, SHOWN_ROWS).map((row) => el('tr', {}, ...columns.map((c) => {
      const value = row[c];
      const text = value === undefined || value === null ? '' : typeof value === 'object' ? JSON.stringify(value) : String(value);
      return el('td', { class: typeof value === 'number' ? 'num' : '' }, text);
    })))));
  const more = rows.length > SHOWN_ROWS ? [el('p', { class: 'muted' }, `first ${SHOWN_ROWS} of ${thousands(rows.length)} rows shown`)] : [];
  $('#sql-result').replaceChildren(table, ...more);
  chart(rows, columns);
}

// A bar chart of the first numeric column (or the one picked), labelled by the first other column.
function chart(rows, columns, picked) {
  const box = $('#sql-chart');
  const numeric = columns.filter((c) => rows.length > 0 && rows.every((r) => r[c] === undefined || r[c] === null || typeof r[c] === 'number'));
  if (numeric.length === 0 || rows.length === 0) {
    box.replaceChildren();
    return;
  }
  const column = picked && numeric.includes(picked) ? picked : numeric[0];
  const label = columns.find((c) => !numeric.includes(c));
  const shown = rows.slice(0, 40);
  const values = shown.map((r) => Number(r[column] || 0));
  const max = Math.max(...values.map(Math.abs), 1e-9);
  const barHeight = 18;
  const labelWidth = 160;
  const width = 720;
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('width', String(width));
  svg.setAttribute('height', String(shown.length * barHeight + 4));
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `${column} by ${label || 'row'}`);
  shown.forEach((row, i) => {
    const y = i * barHeight + 2;
    const name = document.createElementNS(svg.namespaceURI, 'text');
    name.setAttribute('x', '0');
    name.setAttribute('y', String(y + 13));
    name.textContent = String(label ? row[label] ?? '' : i + 1).slice(0, 24);
    const bar = document.createElementNS(svg.namespaceURI, 'rect');
    const length = (Math.abs(values[i]) / max) * (width - labelWidth - 90);
    bar.setAttribute('x', String(labelWidth));
    bar.setAttribute('y', String(y + 2));
    bar.setAttribute('width', String(Math.max(1, length)));
    bar.setAttribute('height', String(barHeight - 5));
    const figure = document.createElementNS(svg.namespaceURI, 'text');
    figure.setAttribute('x', String(labelWidth + length + 6));
    figure.setAttribute('y', String(y + 13));
    figure.textContent = thousands(values[i]);
    svg.append(name, bar, figure);
  });
  const pick = el('select', { 'aria-label': 'column to chart', onchange: (e) => chart(rows, columns, e.target.value) },
    ...numeric.map((c) => {
      const option = el('option', { value: c }, c);
      option.selected = c === column;
      return option;
    }));
  box.replaceChildren(el('div', { class: 'row' }, el('span', { class: 'muted' }, 'chart of '), pick,
    el('span', { class: 'muted' }, rows.length > shown.length ? ` (first ${shown.length} rows)` : '')), svg);
}

// ---- start ----------------------------------------------------------------------------------

function start() {
  $('#token').value = ui.token;
  $('#token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    ui.token = $('#token').value.trim();
    if (ui.token) localStorage.setItem(TOKEN_KEY, ui.token);
    else localStorage.removeItem(TOKEN_KEY);
    notify(ui.token ? 'token saved in this browser' : 'token removed');
  });
  $('#sql-form').addEventListener('submit', runSql);
  $('#sql-input').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) runSql(event);
  });
  $('#deploy-form').addEventListener('submit', deploy);
  $('#dlq-replay').addEventListener('click', () => deadLetterAction('replay'));
  $('#dlq-purge').addEventListener('click', () => deadLetterAction('purge'));
  const refilter = () => { if (ui.previous) render(ui.previous, true); };
  $('#lag-filter').addEventListener('change', refilter);
  $('#lag-behind').addEventListener('change', refilter);
  follow();
}

start();
