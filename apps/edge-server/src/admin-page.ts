/**
 * The edge operator's dashboard: one page (inline CSS and JS, no build step), served at GET /admin
 * by admin.ts, with one library from this same edge: uPlot (GET /admin/uplot.js and
 * /admin/uplot.css) for the loss chart. It holds no data itself: it asks for the operator token (a
 * form, or the URL fragment `#token=...`, which browsers do not send to servers), keeps it in
 * sessionStorage, and polls GET /api/admin/status with it every second. Everything from the server
 * is written with textContent, never as HTML.
 *
 * Words, the same everywhere on the page (the legend under "This edge now" says them): "round R"
 * is a training round; "shared model update V" is the version of the shared model (update R is
 * what round R produced; update 0 is the model before any training). A connected user is in one
 * phase: training, waiting, done this round, or sitting out; the counts are made from the same
 * phases as the rows, so they add up. A user who went on its own is "left", not an error.
 *
 * It is usable at a phone's width (390 px): under 640 px the users table becomes one card per
 * user, with its Drop button in reach. Drop asks first, in a dialog that says what it does.
 *
 * The element ids are stable (tests and screenshots use them): #edge-id, #provider, #cloud-state,
 * #version, #round, #training-now, #step-ms, #tokens-per-second, #bytes-in, #bytes-out, #memory,
 * #restarts, #model-name, #model-size, #model-description, #model-demo, #users (a table with one
 * tr[data-user-id][data-phase] per user and a button[data-drop] in it), #users-count (with
 * span[data-count] per phase), #left (li[data-user-id][data-kind] per departure), #loss-chart
 * (the chart's box: data-points, data-round, data-series), #errors, #conn-problem, #drop-dialog
 * (#drop-confirm, #drop-cancel, #drop-error), #status-line, and the token form's #token and
 * #token-submit (#auth-message, #auth-code).
 */

export const ADMIN_STYLE = `
:root {
  color-scheme: light dark; --fg: #1b1f24; --muted: #5b6470; --bg: #f6f7f9; --card: #fff; --line: #d5d9df;
  --accent: #1f6feb; --bad: #c62828; --good: #2e7d32; --warn-bg: #fdecea;
}
@media (prefers-color-scheme: dark) {
  :root {
    --fg: #e6e8eb; --muted: #9aa4af; --bg: #0f1216; --card: #171b21; --line: #2c333b; --accent: #58a6ff;
    --bad: #ff6b6b; --good: #5cc46a; --warn-bg: #3a1d1d;
  }
}
* { box-sizing: border-box; }
body {
  margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  background: var(--bg); overflow-wrap: anywhere;
}
header {
  display: flex; flex-wrap: wrap; align-items: center; justify-content: space-between; gap: .5rem 1rem;
  padding: .6rem 1rem; background: var(--card); border-bottom: 1px solid var(--line);
}
header h1 { font-size: 1.1rem; margin: 0; }
main { padding: .75rem; display: grid; gap: .75rem; max-width: 1200px; margin: 0 auto; }
#dashboard { display: grid; gap: .75rem; min-width: 0; }
#dashboard[hidden] { display: none; }
section {
  background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: .75rem; min-width: 0;
}
section h2 { font-size: 1rem; margin: 0 0 .5rem; }
p { margin: .3rem 0; }
dl { margin: 0; }
dt { color: var(--muted); font-size: .85rem; }
dd { margin: 0; font-weight: 600; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(9.5rem, 1fr)); gap: .5rem; }
.cards > div { border: 1px solid var(--line); border-radius: 6px; padding: .4rem .6rem; min-width: 0; }
.cards .wide { grid-column: 1 / -1; }
.cards dd { font-variant-numeric: tabular-nums; }
.sub, .muted { color: var(--muted); font-weight: 400; }
.sub { font-size: .85em; }
.id { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.legend { color: var(--muted); font-size: .85rem; margin-top: .6rem; }
.legend b { color: var(--fg); font-weight: 600; }
#model-card h2 { margin-bottom: .2rem; }
#model-demo { border-left: 3px solid var(--accent); padding-left: .5rem; }
.ok { color: var(--good); }
.bad { color: var(--bad); }
.vh {
  position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); clip-path: inset(50%);
  white-space: nowrap;
}
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
caption { text-align: left; color: var(--muted); padding-bottom: .35rem; font-size: .85rem; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid var(--line); vertical-align: top; }
thead th { font-weight: 600; color: var(--muted); font-size: .85rem; }
td.num, th.num { text-align: right; }
tr[data-phase="training"] .phase { color: var(--accent); font-weight: 600; }
tr[data-phase="done"] .phase { color: var(--good); }
tr[data-phase="sitting-out"] .phase { color: var(--muted); }
#users-count span + span::before { content: " · "; }
button {
  font: inherit; min-height: 2.25rem; padding: .25rem .8rem; border-radius: 6px; border: 1px solid var(--line);
  background: var(--card); color: var(--fg); cursor: pointer;
}
button:hover { border-color: var(--accent); }
button.danger { color: var(--bad); border-color: var(--bad); }
button.danger-fill { background: var(--bad); border-color: var(--bad); color: #fff; }
button:disabled { opacity: .5; cursor: default; }
button:focus-visible, input:focus-visible { outline: 2px solid var(--accent); outline-offset: 2px; }
@media (max-width: 640px) {
  #users thead { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); }
  #users, #users caption, #users tbody, #users tr, #users th, #users td { display: block; width: 100%; }
  #users tr {
    border: 1px solid var(--line); border-radius: 6px; margin-bottom: .5rem; padding: .3rem .5rem;
  }
  #users th, #users td { border: 0; padding: .15rem 0; text-align: left; }
  #users td[data-label] { display: flex; justify-content: space-between; gap: 1rem; }
  #users td[data-label]::before { content: attr(data-label); color: var(--muted); font-weight: 400; }
  #users td.action { padding-top: .35rem; }
  #users td.action button { width: 100%; }
}
#login { max-width: 30rem; }
#login label { display: block; margin-bottom: .3rem; font-weight: 600; }
#login input {
  font: inherit; width: 100%; padding: .4rem .5rem; margin-bottom: .5rem; border: 1px solid var(--line);
  border-radius: 6px; background: var(--bg); color: var(--fg);
}
#login p { color: var(--muted); }
.problem { border-left: 3px solid var(--bad); background: var(--warn-bg); padding: .4rem .6rem; border-radius: 4px; }
.problem[hidden] { display: none; }
.problem .say { margin: 0; color: var(--fg); }
.code { display: block; margin: .15rem 0 0; font-size: .8rem; color: var(--muted); }
.code:empty { display: none; }
.events { margin: 0; padding: 0; list-style: none; max-height: 18rem; overflow: auto; }
.events li { padding: .35rem 0; border-bottom: 1px solid var(--line); }
.events li:last-child { border-bottom: 0; }
.events .when { color: var(--muted); font-size: .85rem; margin-right: .4rem; }
#errors li.problem { border-bottom: 0; margin-bottom: .35rem; }
#loss-chart { width: 100%; min-height: 12rem; }
#loss-chart .uplot { width: 100%; }
#loss-chart .u-legend { font-size: .85rem; }
.chart-note { color: var(--muted); font-size: .85rem; }
.chart-note .boundary {
  display: inline-block; width: 1.2rem; border-top: 2px dashed var(--muted); vertical-align: middle;
}
figure { margin: 0; }
#status-line { color: var(--muted); font-size: .85rem; margin: 0; }
dialog {
  border: 1px solid var(--line); border-radius: 8px; background: var(--card); color: var(--fg); padding: 1rem;
  width: min(30rem, calc(100vw - 2rem));
}
dialog::backdrop { background: rgba(0, 0, 0, .45); }
dialog h2 { font-size: 1.05rem; margin: 0 0 .5rem; }
.actions { display: flex; flex-wrap: wrap; gap: .5rem; justify-content: flex-end; margin-top: .75rem; }
`;

export const ADMIN_SCRIPT = `
(function () {
  'use strict';
  var KEY = 'splitllm-edge-operator-token';
  var COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf'];
  var PHASE_WORDS = { training: 'training', waiting: 'waiting', done: 'done this round', 'sitting-out': 'sitting out' };
  var $ = function (id) { return document.getElementById(id); };
  var timer = null;
  var polling = false;
  var lastOk = null;
  var plot = null;
  var plotKey = '';
  var seen = {};
  var clientLeft = [];
  var dropping = null;

  function token() { try { return sessionStorage.getItem(KEY); } catch (e) { return null; } }
  function setToken(t) {
    try { if (t) sessionStorage.setItem(KEY, t); else sessionStorage.removeItem(KEY); }
    catch (e) { /* storage disabled: the token lives as long as this page */ }
  }
  function text(id, v) { var el = $(id); if (el.textContent !== v) el.textContent = v; }
  function mib(b) { return b == null ? '—' : (b / 1048576).toFixed(1) + ' MiB'; }
  function bytes(b) {
    if (b == null) return '—';
    if (b < 1024) return b + ' B';
    if (b < 1048576) return (b / 1024).toFixed(1) + ' KiB';
    if (b < 1073741824) return (b / 1048576).toFixed(1) + ' MiB';
    return (b / 1073741824).toFixed(2) + ' GiB';
  }
  function params(n) {
    if (n >= 1e9) return (n / 1e9).toFixed(1) + ' billion';
    if (n >= 1e6) return (n / 1e6).toFixed(1) + ' million';
    if (n >= 1e3) return Math.round(n / 1e3) + ' thousand';
    return String(n);
  }
  function clock(iso) { var d = new Date(iso); return isNaN(d) ? String(iso) : d.toLocaleTimeString(); }
  function ago(iso) {
    var s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min';
    return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  }
  function ordinal(n) {
    var t = n % 100, u = n % 10;
    return n + (t >= 11 && t <= 13 ? 'th' : u === 1 ? 'st' : u === 2 ? 'nd' : u === 3 ? 'rd' : 'th');
  }
  function el(tag, cls, content) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (content != null) e.textContent = content;
    return e;
  }
  /** a problem said for people: a sentence, and the code in a small line under it */
  function problem(boxId, sentence, code) {
    var box = $(boxId);
    box.hidden = !sentence;
    text(boxId + '-text', sentence || '');
    text(boxId + '-code', code || '');
  }

  function showLogin(sentence, code) {
    stop();
    $('dashboard').hidden = true;
    $('login').hidden = false;
    $('forget').hidden = true;
    problem('conn-problem', '');
    text('auth-message', sentence || '');
    text('auth-code', code || '');
    $('token').value = '';
    $('token').focus();
  }
  function showDashboard() {
    $('login').hidden = true;
    $('dashboard').hidden = false;
    $('forget').hidden = false;
    text('auth-message', '');
    text('auth-code', '');
  }
  function status(msg) { text('status-line', msg); }
  function stop() { if (timer) clearTimeout(timer); timer = null; }
  function schedule(ms) { stop(); timer = setTimeout(poll, ms); }
  function refused(body) {
    setToken(null);
    showLogin('This edge did not accept that token. Use the operator token it printed at start-up ' +
      '(or the one set with SPLITLLM_EDGE_OPERATOR_TOKEN), then try again.',
      'UNAUTHORIZED' + (body && body.message ? ': ' + body.message : ''));
  }

  function api(method, path) {
    return fetch(path, { method: method, headers: { authorization: 'Bearer ' + token() }, cache: 'no-store' })
      .then(function (res) {
        return res.json().catch(function () { return {}; }).then(function (body) {
          return { status: res.status, body: body };
        });
      });
  }

  function since() { return lastOk ? ' The figures below are from ' + lastOk.toLocaleTimeString() + '.' : ''; }

  function poll() {
    if (polling || !token()) return;
    polling = true;
    api('GET', '/api/admin/status').then(function (r) {
      polling = false;
      if (r.status === 401) { refused(r.body); return; }
      if (r.status === 503) {
        problem('conn-problem', 'This edge is still starting (registering with the cloud and loading its part ' +
          'of the model). This page fills in as soon as it is ready.', r.body.code || '503');
        schedule(2000);
        return;
      }
      if (r.status !== 200) {
        problem('conn-problem', 'This edge answered with an error; the page keeps asking every 2 seconds.' + since(),
          (r.body.code || r.status) + (r.body.message ? ': ' + r.body.message : ''));
        schedule(2000);
        return;
      }
      lastOk = new Date();
      problem('conn-problem', '');
      showDashboard();
      render(r.body);
      status('Updated ' + lastOk.toLocaleTimeString() + '.');
      schedule(1000);
    }, function (e) {
      polling = false;
      problem('conn-problem', 'The connection to this edge is lost: it may have stopped or be restarting. ' +
        'The page tries again every 2 seconds.' + since(), e && e.message ? e.message : String(e));
      schedule(2000);
    });
  }

  function render(s) {
    var round = s.round;
    text('edge-id', s.edgeId);
    text('provider', s.provider);
    text('cloud-state', s.cloudConnected ? 'connected' : 'disconnected: reconnecting');
    $('cloud-state').className = s.cloudConnected ? 'ok' : 'bad';
    text('version', 'update ' + s.version);
    text('round', round ? 'round ' + round.number : 'none running (next: round ' + (s.version + 1) + ')');
    text('legend-steps', String(s.train.stepsPerUser));
    text('legend-users', String(s.train.usersPerEdge));
    var m = s.model;
    text('model-name', m.name);
    text('model-size', params(m.parameters) + ' parameters');
    text('model-description', m.description);
    $('model-demo').hidden = !m.demo;
    var cur = round && round.current;
    text('training-now', cur ? cur.userId : 'nobody');
    text('training-step', cur ? 'step ' + cur.step + ' of ' + cur.steps + ', round ' + round.number : '');
    text('step-ms', s.lastStepMs == null ? '—' : s.lastStepMs.toFixed(0) + ' ms');
    text('tokens-per-second', s.tokensPerSecond == null ? '—' : Math.round(s.tokensPerSecond).toLocaleString());
    text('bytes-in', bytes(s.bytesIn));
    text('bytes-out', bytes(s.bytesOut));
    var mem = s.memory || {};
    text('memory', 'rss ' + mib(mem.rss) + ' · heap used ' + mib(mem.heapUsed) +
      ' · peak rss this round ' + mib(mem.peakRss));
    var r = s.restarts;
    $('restarts-card').hidden = !r;
    text('restarts', r ? 'restarted ' + r.count + (r.count === 1 ? ' time' : ' times') +
      (r.lastExit ? ', last: ' + r.lastExit : '') : '');
    renderCounts(s.counts);
    renderUsers(s.users, round);
    renderLeft(s.users, s.leaves || []);
    renderChart(s.steps || []);
    renderErrors(s.errors || []);
  }

  function renderCounts(c) {
    var box = $('users-count');
    var parts = [['connected', c.connected + ' connected']];
    if (c.training) parts.push(['training', c.training + ' training']);
    if (c.waiting) parts.push(['waiting', c.waiting + ' waiting']);
    if (c.done) parts.push(['done', c.done + ' done this round']);
    if (c.sittingOut) parts.push(['sitting-out', c.sittingOut + ' sitting out']);
    var sig = parts.map(function (p) { return p[1]; }).join('|');
    if (box.dataset.sig === sig) return;
    box.dataset.sig = sig;
    while (box.lastChild) box.removeChild(box.lastChild);
    parts.forEach(function (p) {
      var sp = el('span', null, p[1]);
      sp.dataset.count = p[0];
      box.appendChild(sp);
    });
  }

  function cell(tr, tag, cls, label) {
    var c = el(tag, cls);
    if (label) c.dataset.label = label;
    tr.appendChild(c);
    return c;
  }
  function set(c, v) { if (c.textContent !== v) c.textContent = v; }

  function renderUsers(users, round) {
    var body = $('users').tBodies[0];
    var rows = {};
    Array.prototype.forEach.call(body.rows, function (tr) { if (tr.dataset.userId) rows[tr.dataset.userId] = tr; });
    var empty = $('users-empty');
    if (users.length === 0) {
      if (!empty) {
        empty = el('tr'); empty.id = 'users-empty';
        var td = el('td', 'muted', 'Nobody is connected to this edge right now.'); td.colSpan = 7;
        empty.appendChild(td);
      }
    } else if (empty) { empty.remove(); empty = null; }
    var want = [];
    users.forEach(function (u) {
      var tr = rows[u.userId];
      delete rows[u.userId];
      if (!tr) {
        tr = el('tr');
        tr.dataset.userId = u.userId;
        var id = cell(tr, 'th', 'id'); id.scope = 'row'; id.textContent = u.userId;
        cell(tr, 'td', 'phase', 'state');
        cell(tr, 'td', 'num order', 'turn order');
        cell(tr, 'td', 'since', 'connected since');
        cell(tr, 'td', 'num', 'bytes in');
        cell(tr, 'td', 'num', 'bytes out');
        var act = cell(tr, 'td', 'action');
        var b = el('button', 'danger', 'Drop');
        b.type = 'button';
        b.dataset.drop = u.userId;
        // the visible word, and whom it drops for whoever cannot see the row
        b.appendChild(el('span', 'vh', ' user ' + u.userId));
        act.appendChild(b);
      }
      if (tr.dataset.phase !== u.phase) tr.dataset.phase = u.phase;
      var c = tr.cells;
      var state = PHASE_WORDS[u.phase] || u.phase;
      if (u.phase === 'training' && round && round.current && round.current.userId === u.userId)
        state += ' (step ' + round.current.step + ' of ' + round.current.steps + ')';
      if (u.phase === 'sitting-out' && u.sitsOutThrough != null) state += ' (through round ' + u.sitsOutThrough + ')';
      if (u.misses > 0) state += ' · missed ' + u.misses + (u.misses === 1 ? ' turn' : ' turns');
      set(c[1], state);
      set(c[2], u.waitingPosition == null ? '—' : u.waitingPosition === 1 ? 'next' : ordinal(u.waitingPosition));
      set(c[3], clock(u.connectedAt) + ' (' + ago(u.connectedAt) + ' ago)');
      c[3].title = u.connectedAt;
      set(c[4], bytes(u.bytesIn));
      set(c[5], bytes(u.bytesOut));
      want.push(tr);
    });
    for (var gone in rows) rows[gone].remove();
    // queue order, moving only the rows that are out of place (keeps focus on a Drop button)
    want.forEach(function (tr, i) { if (body.rows[i] !== tr) body.insertBefore(tr, body.rows[i] || null); });
    if (empty && body.rows[0] !== empty) body.appendChild(empty);
  }

  /**
   * Departures: the edge's own record (a user that went during its turn, one you dropped), and
   * the users this page saw go while they waited, which the edge does not list.
   */
  function renderLeft(users, leaves) {
    var now = {};
    users.forEach(function (u) { now[u.userId] = true; });
    var known = {};
    leaves.forEach(function (l) { known[l.userId] = true; });
    for (var id in seen) {
      if (!now[id] && !known[id]) {
        clientLeft.push({ at: new Date().toISOString(), userId: id, kind: 'left',
          summary: 'Left while waiting for a turn: the tab was closed, paused or lost its connection.' });
      }
    }
    seen = now;
    clientLeft = clientLeft.filter(function (l) { return !known[l.userId] && !now[l.userId]; }).slice(-50);
    var all = leaves.concat(clientLeft).sort(function (a, b) { return a.at < b.at ? 1 : a.at > b.at ? -1 : 0; });
    var list = $('left');
    var sig = all.map(function (l) { return l.at + l.userId + l.summary; }).join('|');
    if (list.dataset.sig === sig) return;
    list.dataset.sig = sig;
    while (list.lastChild) list.removeChild(list.lastChild);
    if (all.length === 0) { list.appendChild(el('li', 'muted', 'Nobody has left yet.')); return; }
    all.forEach(function (l) {
      var li = el('li');
      li.dataset.userId = l.userId;
      li.dataset.kind = l.kind;
      var t = el('time', 'when', clock(l.at)); t.dateTime = l.at; li.appendChild(t);
      li.appendChild(el('span', 'id', l.userId));
      li.appendChild(el('span', 'say', ': ' + l.summary));
      list.appendChild(li);
    });
  }

  function cssVar(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

  /**
   * The loss of the edge's recent steps in the order they ran: one series per user, a gap and a
   * dashed line where a round begins (the shared model changed there, so the loss may jump).
   */
  function renderChart(steps) {
    var box = $('loss-chart');
    var last = steps[steps.length - 1];
    var sig = steps.length + ':' + (last ? last.n : '');
    if (box.dataset.sig === sig) return;
    box.dataset.sig = sig;
    var order = [], index = {}, rounds = [];
    steps.forEach(function (p) {
      if (!(p.userId in index)) { index[p.userId] = order.length; order.push(p.userId); }
    });
    var xs = [], ys = order.map(function () { return []; }), boundaries = [];
    steps.forEach(function (p, i) {
      if (i === 0 || steps[i - 1].round !== p.round) {
        rounds.push(p.round);
        if (i > 0) {
          // a gap (no line across it) and the round's marker, half a step before its first step
          xs.push(p.n - 0.5);
          ys.forEach(function (y) { y.push(null); });
          boundaries.push({ x: p.n - 0.5, round: p.round });
        }
      }
      xs.push(p.n);
      ys.forEach(function (y, k) { y.push(k === index[p.userId] ? p.loss : null); });
    });
    box.dataset.points = String(steps.length);
    box.dataset.series = String(order.length);
    box.dataset.round = last ? String(last.round) : '';
    box.dataset.rounds = rounds.join(',');
    text('loss-summary', last
      ? 'The last ' + steps.length + ' steps on this edge (rounds ' + rounds[0] +
        (rounds.length > 1 ? '–' + rounds[rounds.length - 1] : '') + ', ' + order.length +
        (order.length === 1 ? ' user' : ' users') + '). Last step: loss ' + last.loss.toFixed(3) + ' nats (' +
        last.userId + ', round ' + last.round + ', step ' + last.step + ').'
      : 'No training steps on this edge yet.');
    box.setAttribute('aria-label', 'Loss chart. ' + $('loss-summary').textContent);
    if (steps.length === 0) return;
    if (typeof uPlot !== 'function') {
      text('loss-fallback', 'The chart could not be drawn: its library (/admin/uplot.js) did not load. ' +
        'The figures above are not affected.');
      return;
    }
    text('loss-fallback', '');
    var key = order.join('|');
    var width = Math.max(240, box.clientWidth);
    var height = width < 500 ? 220 : 280;
    var data = [xs].concat(ys);
    if (plot && plotKey === key) {
      plot._boundaries = boundaries;
      plot.setData(data);
      return;
    }
    if (plot) plot.destroy();
    plotKey = key;
    var fg = cssVar('--fg') || '#1b1f24', line = cssVar('--line') || '#d5d9df', muted = cssVar('--muted') || '#5b6470';
    var axis = {
      stroke: fg, grid: { stroke: line, width: 1 }, ticks: { stroke: line, width: 1 },
      font: '12px system-ui, sans-serif', labelFont: '600 13px system-ui, sans-serif'
    };
    var series = [{ label: 'step' }].concat(order.map(function (id, k) {
      return {
        label: id, stroke: COLORS[k % COLORS.length], width: 2, spanGaps: false,
        points: { show: true, size: 4 },
        value: function (u, v) { return v == null ? '—' : v.toFixed(3); }
      };
    }));
    plot = new uPlot({
      width: width, height: height, series: series,
      scales: { x: { time: false } },
      axes: [
        Object.assign({ label: 'step', labelSize: 22, size: 34,
          values: function (u, vals) { return vals.map(function (v) { return Number.isInteger(v) ? String(v) : ''; }); }
        }, axis),
        Object.assign({ label: 'loss (nats)', labelSize: 22, size: 44,
          values: function (u, vals) { return vals.map(function (v) { return v.toFixed(2); }); } }, axis)
      ],
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      hooks: {
        draw: [function (u) {
          var ctx = u.ctx, b = u.bbox, dpr = window.devicePixelRatio || 1;
          ctx.save();
          ctx.strokeStyle = muted; ctx.fillStyle = muted;
          ctx.lineWidth = 1.5 * dpr;
          ctx.setLineDash([5 * dpr, 4 * dpr]);
          ctx.font = (11 * dpr) + 'px system-ui, sans-serif';
          ctx.textBaseline = 'top';
          (u._boundaries || []).forEach(function (m) {
            var x = Math.round(u.valToPos(m.x, 'x', true));
            if (x < b.left || x > b.left + b.width) return;
            ctx.beginPath(); ctx.moveTo(x, b.top); ctx.lineTo(x, b.top + b.height); ctx.stroke();
            ctx.fillText('round ' + m.round, x + 3 * dpr, b.top + 2 * dpr);
          });
          ctx.restore();
        }]
      }
    }, data, box);
    plot._boundaries = boundaries;
    plot.redraw();
  }

  window.addEventListener('resize', function () {
    if (!plot) return;
    var w = Math.max(240, $('loss-chart').clientWidth);
    plot.setSize({ width: w, height: w < 500 ? 220 : 280 });
  });

  function renderErrors(errors) {
    var list = $('errors');
    var sig = errors.length + ':' + (errors.length ? errors[errors.length - 1].at : '');
    if (list.dataset.sig === sig) return;
    list.dataset.sig = sig;
    while (list.lastChild) list.removeChild(list.lastChild);
    if (errors.length === 0) { list.appendChild(el('li', 'muted', 'No problems.')); return; }
    errors.slice().reverse().forEach(function (e) {
      var li = el('li', 'problem');
      li.dataset.code = e.code;
      if (e.userId) li.dataset.userId = e.userId;
      var p = el('p', 'say');
      var t = el('time', 'when', clock(e.at)); t.dateTime = e.at; p.appendChild(t);
      if (e.userId) { p.appendChild(el('span', 'id', e.userId)); p.appendChild(document.createTextNode(': ')); }
      p.appendChild(document.createTextNode(e.summary));
      li.appendChild(p);
      li.appendChild(el('small', 'code', e.code + ' · ' + e.message));
      list.appendChild(li);
    });
  }

  // Drop: a dialog says what it does before anything happens; a failure is said in it
  function openDrop(id) {
    dropping = id;
    text('drop-user', id);
    text('drop-confirm-who', id);
    problem('drop-error', '');
    $('drop-confirm').disabled = false;
    $('drop-dialog').showModal();
    $('drop-cancel').focus();
  }
  function closeDrop() { dropping = null; if ($('drop-dialog').open) $('drop-dialog').close(); }
  $('users').addEventListener('click', function (ev) {
    var b = ev.target.closest ? ev.target.closest('button[data-drop]') : null;
    if (b) openDrop(b.dataset.drop);
  });
  $('drop-cancel').addEventListener('click', closeDrop);
  $('drop-dialog').addEventListener('close', function () { dropping = null; });
  $('drop-confirm').addEventListener('click', function () {
    var id = dropping;
    if (!id) return;
    var b = $('drop-confirm');
    b.disabled = true;
    problem('drop-error', '');
    api('POST', '/api/admin/users/' + encodeURIComponent(id) + '/drop').then(function (r) {
      if (r.status === 401) { closeDrop(); refused(r.body); return; }
      if (r.status === 200) {
        closeDrop();
        status('Dropped user ' + id + '. It is listed under "Recently left".');
        poll();
        return;
      }
      b.disabled = false;
      var code = (r.body.code || r.status) + (r.body.message ? ': ' + r.body.message : '');
      if (r.status === 404) {
        problem('drop-error', id + ' is no longer connected to this edge (it left before the Drop), so ' +
          'nothing was dropped.', code);
      } else if (r.status === 503) {
        problem('drop-error', 'This edge is still starting; try again in a few seconds.', code);
      } else {
        problem('drop-error', 'The edge did not drop ' + id + '; nothing was changed. Try again.', code);
      }
    }, function (e) {
      b.disabled = false;
      problem('drop-error', 'The Drop did not reach this edge: the connection to it is lost. Nothing was ' +
        'changed; try again once the page updates.', e && e.message ? e.message : String(e));
    });
  });

  $('token-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var t = $('token').value.trim();
    if (!t) { text('auth-message', 'Enter the operator token first.'); text('auth-code', ''); return; }
    setToken(t);
    text('auth-message', '');
    text('auth-code', '');
    status('Checking the token…');
    poll();
  });
  $('forget').addEventListener('click', function () {
    setToken(null); showLogin('Signed out: this tab no longer holds the token.');
  });

  // #token=... in the URL: take it, and take it out of the address bar and history
  var m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    setToken(decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
  if (token()) { status('Connecting…'); poll(); } else showLogin('');
})();
`;

/** The versions (content hashes) of uPlot's two files, in their URLs so that browsers may cache them for good. */
export interface AdminAssets {
  uplotJs: string;
  uplotCss: string;
}

export function adminPage(assets: AdminAssets): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>SplitLLM edge \u00b7 operator</title>
<link rel="stylesheet" href="/admin/uplot.css?v=${assets.uplotCss}">
<style>${ADMIN_STYLE}</style>
</head>
<body>
<header>
  <h1>SplitLLM edge <span id="edge-id" class="id">\u2014</span></h1>
  <button type="button" id="forget" hidden>Forget token</button>
</header>
<main>
  <div id="conn-problem" class="problem" role="alert" hidden>
    <p id="conn-problem-text" class="say"></p><small id="conn-problem-code" class="code"></small>
  </div>
  <section id="login" aria-labelledby="login-title" hidden>
    <h2 id="login-title">Operator sign-in</h2>
    <p>This dashboard needs this edge's operator token: the edge prints it in its log at start-up, or it is
      the one set with SPLITLLM_EDGE_OPERATOR_TOKEN. It stays in this tab only.</p>
    <form id="token-form" autocomplete="off">
      <label for="token">Operator token</label>
      <input id="token" name="token" type="password" autocomplete="off" spellcheck="false" required
        aria-describedby="auth-message auth-code">
      <div role="alert"><p id="auth-message" class="bad"></p><small id="auth-code" class="code"></small></div>
      <button id="token-submit" type="submit">Open dashboard</button>
    </form>
  </section>
  <div id="dashboard" hidden>
    <section id="model-card" aria-labelledby="model-title">
      <h2 id="model-title">Model: <span id="model-name">\u2014</span></h2>
      <p><span id="model-size"></span>. <span id="model-description"></span></p>
      <p id="model-demo" hidden>This is a small demonstration model: it learns fast, and its continuations are
        rough even after training. That is expected, not a fault of this edge.</p>
    </section>
    <section aria-labelledby="now-title">
      <h2 id="now-title">This edge now</h2>
      <dl class="cards">
        <div><dt>round</dt><dd id="round">\u2014</dd></div>
        <div><dt>shared model</dt><dd id="version">\u2014</dd></div>
        <div class="wide"><dt>training now</dt>
          <dd><span id="training-now" class="id">\u2014</span> <span id="training-step" class="sub"></span></dd></div>
        <div><dt>cloud</dt><dd id="cloud-state">\u2014</dd></div>
        <div><dt>runs on</dt><dd id="provider">\u2014</dd></div>
        <div><dt>last step took</dt><dd id="step-ms">\u2014</dd></div>
        <div><dt>tokens / second</dt><dd id="tokens-per-second">\u2014</dd></div>
        <div><dt>received from users</dt><dd id="bytes-in">\u2014</dd></div>
        <div><dt>sent to users</dt><dd id="bytes-out">\u2014</dd></div>
        <div class="wide"><dt>memory</dt><dd id="memory">\u2014</dd></div>
        <div class="wide" id="restarts-card" hidden><dt>restarts</dt><dd id="restarts"></dd></div>
      </dl>
      <p class="legend" id="legend"><b>How to read this.</b> In <b>round R</b>, up to
        <span id="legend-users">\u2014</span> users of this edge take a turn of <span id="legend-steps">\u2014</span>
        training steps each, starting from <b>shared model update R\u22121</b>; the cloud then combines the turns
        of every edge into <b>update R</b> (update 0 is the model before any training). A connected user is
        <b>training</b> (its turn now), <b>waiting</b> (for a turn), <b>done this round</b> (its turn in this round
        is over; it trains again next round) or <b>sitting out</b> (it missed its turn deadline too often).</p>
    </section>
    <section aria-labelledby="users-title">
      <h2 id="users-title">Users</h2>
      <p id="users-count" aria-live="polite"></p>
      <table id="users">
        <caption>In queue order. Turn order "next" marks the waiting user who trains next.
          Drop removes a user from the run.</caption>
        <thead><tr>
          <th scope="col">user</th><th scope="col">state</th><th scope="col" class="num">turn order</th>
          <th scope="col">connected since</th><th scope="col" class="num">bytes in</th>
          <th scope="col" class="num">bytes out</th><th scope="col"><span class="vh">action</span></th>
        </tr></thead>
        <tbody></tbody>
      </table>
    </section>
    <section aria-labelledby="left-title">
      <h2 id="left-title">Recently left</h2>
      <p class="sub">Users who closed their tab, paused or were dropped. Leaving is normal, not an error.</p>
      <ol id="left" class="events"></ol>
    </section>
    <section aria-labelledby="loss-title">
      <h2 id="loss-title">Training loss</h2>
      <figure>
        <div id="loss-chart" role="img" aria-label="Loss chart: no data yet" data-points="0" data-round=""
          data-series="0"></div>
        <figcaption>
          <p id="loss-summary"></p>
          <p id="loss-fallback" class="bad"></p>
          <p class="chart-note">One line per user, one point per training step, in the order this edge ran them.
            Lower loss means the model predicts the users' text better. <span class="boundary"></span> A dashed
            line marks the start of a round: the shared model changed there, so the loss may jump.</p>
        </figcaption>
      </figure>
    </section>
    <section aria-labelledby="errors-title">
      <h2 id="errors-title">Problems <span class="sub">(newest first)</span></h2>
      <ol id="errors" class="events"></ol>
    </section>
  </div>
  <p id="status-line" role="status">Loading\u2026</p>
</main>
<dialog id="drop-dialog" aria-labelledby="drop-title" aria-describedby="drop-what">
  <h2 id="drop-title">Drop user <span id="drop-user" class="id"></span>?</h2>
  <p id="drop-what">Dropping removes this user from the run: its connection closes now, its turn in progress
    (if any) is rolled back, and it cannot rejoin, on this edge or another, until the cloud's operator
    re-admits it.</p>
  <div id="drop-error" class="problem" role="alert" hidden>
    <p id="drop-error-text" class="say"></p><small id="drop-error-code" class="code"></small>
  </div>
  <div class="actions">
    <button type="button" id="drop-cancel">Cancel</button>
    <button type="button" id="drop-confirm" class="danger-fill">Drop <span id="drop-confirm-who"
      class="id"></span></button>
  </div>
</dialog>
<script src="/admin/uplot.js?v=${assets.uplotJs}"></script>
<script>${ADMIN_SCRIPT}</script>
</body>
</html>
`;
}
