/**
 * The edge operator's dashboard: one self-contained page (inline CSS and JS, nothing fetched
 * but its own data, no build step), served at GET /admin by admin.ts. It holds no data itself:
 * it asks for the operator token (a form, or the URL fragment `#token=...`, which browsers do
 * not send to servers), keeps it in sessionStorage, and polls GET /api/admin/status with it
 * every second. Everything from the server is written with textContent, never as HTML.
 *
 * The element ids are stable (the end-to-end test and its screenshots use them): #edge-id,
 * #provider, #cloud-state, #version, #round, #training-now, #step-ms, #tokens-per-second,
 * #bytes-in, #bytes-out, #memory, #restarts (hidden unless a launcher restarted the edge), #users
 * (a table with one tr[data-user-id] per user and a button[data-drop] in it), #loss-chart (an SVG
 * with data-points), #errors, #status-line, and the token form's #token and #token-submit.
 */

export const ADMIN_STYLE = `
:root {
  color-scheme: light dark; --fg: #1b1f24; --muted: #5b6470; --bg: #f6f7f9; --card: #fff; --line: #d5d9df;
  --accent: #1f6feb; --bad: #c62828; --good: #2e7d32;
}
@media (prefers-color-scheme: dark) {
  :root {
    --fg: #e6e8eb; --muted: #9aa4af; --bg: #0f1216; --card: #171b21; --line: #2c333b; --accent: #58a6ff;
    --bad: #ff6b6b; --good: #5cc46a;
  }
}
* { box-sizing: border-box; }
body {
  margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  background: var(--bg);
}
header {
  display: flex; flex-wrap: wrap; align-items: baseline; gap: .25rem 1.25rem; padding: .75rem 1.25rem;
  background: var(--card); border-bottom: 1px solid var(--line);
}
header h1 { font-size: 1.1rem; margin: 0 .5rem 0 0; }
header dl, .cards { margin: 0; }
.inline { display: flex; flex-wrap: wrap; gap: .25rem 1.25rem; }
.inline div { display: flex; gap: .35rem; }
dt { color: var(--muted); }
dd { margin: 0; font-weight: 600; }
main { padding: 1rem 1.25rem; display: grid; gap: 1rem; max-width: 1200px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: .75rem 1rem; }
section h2 { font-size: .95rem; margin: 0 0 .5rem; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: .5rem; }
.cards div { border: 1px solid var(--line); border-radius: 6px; padding: .4rem .6rem; }
.cards .wide { grid-column: span 2; }
.cards dd { font-size: 1.05rem; font-variant-numeric: tabular-nums; }
.sub { color: var(--muted); font-weight: 400; font-size: .85em; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
caption { text-align: left; color: var(--muted); padding-bottom: .35rem; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { font-weight: 600; color: var(--muted); }
td.num, th.num { text-align: right; }
#training-now { white-space: nowrap; }
td.id, th.id, #training-now { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.state-training { color: var(--accent); font-weight: 600; }
.state-done { color: var(--good); }
.ok { color: var(--good); }
.bad { color: var(--bad); }
button {
  font: inherit; padding: .2rem .7rem; border-radius: 5px; border: 1px solid var(--line); background: var(--card);
  color: var(--fg); cursor: pointer;
}
button:hover { border-color: var(--accent); }
button.danger { color: var(--bad); border-color: var(--bad); }
button:disabled { opacity: .5; cursor: default; }
button:focus-visible, input:focus-visible { outline: 2px solid var(--accent); outline-offset: 1px; }
#login { max-width: 28rem; }
#login label { display: block; margin-bottom: .3rem; font-weight: 600; }
#login input {
  font: inherit; width: 100%; padding: .35rem .5rem; margin-bottom: .5rem; border: 1px solid var(--line);
  border-radius: 5px; background: var(--bg); color: var(--fg);
}
#login p { margin: .25rem 0 .6rem; color: var(--muted); }
#auth-message:not(:empty) { color: var(--bad); font-weight: 600; margin: 0 0 .6rem; }
#loss-chart { width: 100%; height: auto; max-height: 320px; display: block; }
#loss-chart text { fill: var(--muted); font-size: 11px; }
#loss-chart .axis { stroke: var(--line); }
#loss-chart .empty { font-size: 13px; }
#errors { margin: 0; padding: 0; list-style: none; max-height: 16rem; overflow: auto; }
#errors li { margin: .15rem 0; }
#errors code { color: var(--bad); font-weight: 600; }
#errors .muted, .muted { color: var(--muted); }
#status-line { color: var(--muted); font-size: .85rem; margin: 0; }
#status-line.bad { color: var(--bad); }
.toolbar { display: flex; gap: .75rem; align-items: center; justify-content: space-between; }
`;

export const ADMIN_SCRIPT = `
(function () {
  'use strict';
  var KEY = 'splitllm-edge-operator-token';
  var COLORS = [
    '#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#17becf', '#bcbd22', '#7f7f7f'
  ];
  var SVG = 'http://www.w3.org/2000/svg';
  var $ = function (id) { return document.getElementById(id); };
  var timer = null;
  var polling = false;
  var notice = null;
  var noticeUntil = 0;

  function token() { try { return sessionStorage.getItem(KEY); } catch (e) { return null; } }
  function setToken(t) {
    try { if (t) sessionStorage.setItem(KEY, t); else sessionStorage.removeItem(KEY); }
    catch (e) { /* storage disabled */ }
  }
  function text(id, v) { var el = $(id); if (el.textContent !== v) el.textContent = v; }
  function mib(b) { return b == null ? '\\u2014' : (b / 1048576).toFixed(1) + ' MiB'; }
  function bytes(b) {
    if (b == null) return '\\u2014';
    if (b < 1024) return b + ' B';
    if (b < 1048576) return (b / 1024).toFixed(1) + ' KiB';
    if (b < 1073741824) return (b / 1048576).toFixed(1) + ' MiB';
    return (b / 1073741824).toFixed(2) + ' GiB';
  }
  function clock(iso) { var d = new Date(iso); return isNaN(d) ? String(iso) : d.toLocaleTimeString(); }
  function ago(iso) {
    var s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min';
    return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
  }
  function el(tag, cls, content) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (content != null) e.textContent = content;
    return e;
  }
  function svg(tag, attrs, content) {
    var e = document.createElementNS(SVG, tag);
    for (var k in attrs) e.setAttribute(k, String(attrs[k]));
    if (content != null) e.textContent = content;
    return e;
  }

  function showLogin(message) {
    stop();
    $('dashboard').hidden = true;
    $('login').hidden = false;
    $('forget').hidden = true;
    text('auth-message', message || '');
    $('token').value = '';
    $('token').focus();
  }
  function showDashboard() {
    $('login').hidden = true;
    $('dashboard').hidden = false;
    $('forget').hidden = false;
    text('auth-message', '');
  }
  function status(msg, bad) {
    var s = $('status-line');
    s.textContent = msg;
    s.className = bad ? 'bad' : '';
  }
  function stop() { if (timer) clearTimeout(timer); timer = null; }
  function schedule(ms) { stop(); timer = setTimeout(poll, ms); }

  function api(method, path) {
    return fetch(path, { method: method, headers: { authorization: 'Bearer ' + token() }, cache: 'no-store' })
      .then(function (res) {
        return res.json().catch(function () { return {}; }).then(function (body) {
          return { status: res.status, body: body };
        });
      });
  }

  function poll() {
    if (polling || !token()) return;
    polling = true;
    api('GET', '/api/admin/status').then(function (r) {
      polling = false;
      if (r.status === 401) {
        setToken(null);
        showLogin('The operator token was refused (' + (r.body.message || 'unauthorized') +
          '). Enter the token this edge printed at start-up.');
        return;
      }
      if (r.status !== 200) {
        status('The edge answered ' + r.status + ': ' + (r.body.code || '') + ' ' + (r.body.message || '') +
          ' \\u2014 retrying', true);
        schedule(2000);
        return;
      }
      showDashboard();
      render(r.body);
      status('Updated ' + new Date().toLocaleTimeString() +
        (notice && Date.now() < noticeUntil ? ' \u2014 ' + notice : ''), false);
      schedule(1000);
    }, function (e) {
      polling = false;
      status('Cannot reach the edge (' + (e && e.message ? e.message : e) + ') \\u2014 retrying', true);
      schedule(2000);
    });
  }

  function render(s) {
    var round = s.round;
    text('edge-id', s.edgeId);
    text('provider', s.provider);
    var cloud = $('cloud-state');
    text('cloud-state', s.cloudConnected ? 'connected' : 'disconnected');
    cloud.className = s.cloudConnected ? 'ok' : 'bad';
    text('version', String(s.version));
    var lossRound = s.loss && s.loss.round;
    text('round', round ? String(round.number) : 'idle' + (lossRound ? ' (last: ' + lossRound + ')' : ''));
    var cur = round && round.current;
    text('training-now', cur ? cur.userId : 'nobody');
    text('training-step', cur ? 'step ' + cur.step + ' of ' + cur.steps : '');
    text('step-ms', s.lastStepMs == null ? '\\u2014' : s.lastStepMs.toFixed(0) + ' ms');
    text('tokens-per-second', s.tokensPerSecond == null ? '\\u2014' : Math.round(s.tokensPerSecond).toLocaleString());
    text('bytes-in', bytes(s.bytesIn));
    text('bytes-out', bytes(s.bytesOut));
    var m = s.memory || {};
    text('memory',
      'rss ' + mib(m.rss) + ' \\u00b7 heap used ' + mib(m.heapUsed) + ' \\u00b7 peak rss ' + mib(m.peakRss));
    var r = s.restarts;
    $('restarts-card').hidden = !r;
    text('restarts', r ? 'restarted ' + r.count + (r.count === 1 ? ' time' : ' times') +
      (r.lastExit ? ', last: ' + r.lastExit : '') : '');
    var out = s.sittingOut || [];
    text('users-count', s.users.length + ' connected, ' + s.waiting + ' waiting' +
      (out.length ? ', ' + out.length + ' sitting out' : ''));
    renderUsers(s.users, round ? round.completed : [], out);
    renderChart(s.loss || { round: null, points: [] });
    renderErrors(s.errors || []);
  }

  function renderUsers(users, completed, out) {
    var body = $('users').tBodies[0];
    var rows = {};
    Array.prototype.forEach.call(body.rows, function (tr) { if (tr.dataset.userId) rows[tr.dataset.userId] = tr; });
    var empty = $('users-empty');
    if (users.length === 0) {
      if (!empty) {
        empty = el('tr'); empty.id = 'users-empty';
        var td = el('td', 'muted', 'No users connected.'); td.colSpan = 7; empty.appendChild(td);
      }
    } else if (empty) { empty.remove(); empty = null; }
    var want = [];
    users.forEach(function (u) {
      var tr = rows[u.userId];
      delete rows[u.userId];
      if (!tr) {
        tr = el('tr');
        tr.dataset.userId = u.userId;
        var id = el('th', 'id', u.userId); id.scope = 'row'; tr.appendChild(id);
        tr.appendChild(el('td', 'state'));
        tr.appendChild(el('td', 'num'));
        tr.appendChild(el('td'));
        tr.appendChild(el('td', 'num'));
        tr.appendChild(el('td', 'num'));
        var act = el('td');
        var b = el('button', 'danger', 'Drop');
        b.type = 'button';
        b.dataset.drop = u.userId;
        b.setAttribute('aria-label', 'Drop user ' + u.userId);
        act.appendChild(b);
        tr.appendChild(act);
      }
      var state = u.state === 'training' ? 'training'
        : completed.indexOf(u.userId) >= 0 ? 'done this round'
        : out.indexOf(u.userId) >= 0 ? 'sitting out (through round ' + u.sitsOutThrough + ')' : 'waiting';
      if (u.misses > 0) state += ' \u00b7 missed ' + u.misses + (u.misses === 1 ? ' turn' : ' turns');
      var c = tr.cells;
      if (c[1].textContent !== state) {
        c[1].textContent = state; c[1].className = 'state state-' + state.split(' ')[0];
      }
      var pos = String(u.position);
      if (c[2].textContent !== pos) c[2].textContent = pos;
      var since = clock(u.connectedAt) + ' (' + ago(u.connectedAt) + ')';
      if (c[3].textContent !== since) { c[3].textContent = since; c[3].title = u.connectedAt; }
      var bi = bytes(u.bytesIn), bo = bytes(u.bytesOut);
      if (c[4].textContent !== bi) c[4].textContent = bi;
      if (c[5].textContent !== bo) c[5].textContent = bo;
      want.push(tr);
    });
    for (var gone in rows) rows[gone].remove();
    // queue order, moving only the rows that are out of place (keeps focus on a Drop button)
    want.forEach(function (tr, i) { if (body.rows[i] !== tr) body.insertBefore(tr, body.rows[i] || null); });
    if (empty && body.rows[0] !== empty) body.appendChild(empty);
  }

  function renderChart(series) {
    var chart = $('loss-chart');
    var points = series.points || [];
    var sig = series.round + ':' + points.length;
    if (chart.dataset.sig === sig) return;
    chart.dataset.sig = sig;
    chart.setAttribute('data-points', String(points.length));
    chart.setAttribute('data-round', series.round == null ? '' : String(series.round));
    text('loss-title',
      series.round == null ? 'Loss (no round yet)' : 'Loss, round ' + series.round + ' (' + points.length + ' steps)');
    while (chart.lastChild) chart.removeChild(chart.lastChild);
    var W = 720, H = 260, L = 52, R = 150, T = 12, Bm = 38;
    var pw = W - L - R, ph = H - T - Bm;
    chart.appendChild(svg('line', { class: 'axis', x1: L, y1: T, x2: L, y2: T + ph }));
    chart.appendChild(svg('line', { class: 'axis', x1: L, y1: T + ph, x2: L + pw, y2: T + ph }));
    chart.appendChild(svg('text', { x: L + pw / 2, y: H - 4, 'text-anchor': 'middle' }, 'step'));
    chart.appendChild(svg('text',
      { x: 12, y: T + ph / 2, 'text-anchor': 'middle', transform: 'rotate(-90 12 ' + (T + ph / 2) + ')' }, 'loss'));
    if (points.length === 0) {
      chart.appendChild(svg('text', { class: 'empty', x: L + pw / 2, y: T + ph / 2, 'text-anchor': 'middle' },
        'No steps yet in this round.'));
      chart.setAttribute('aria-label', 'Loss chart: no steps yet');
      return;
    }
    var byUser = {}, order = [];
    var lo = Infinity, hi = -Infinity, maxStep = 1;
    points.forEach(function (p) {
      if (!byUser[p.userId]) { byUser[p.userId] = []; order.push(p.userId); }
      byUser[p.userId].push(p);
      if (isFinite(p.loss)) { lo = Math.min(lo, p.loss); hi = Math.max(hi, p.loss); }
      maxStep = Math.max(maxStep, p.step);
    });
    if (!isFinite(lo)) { lo = 0; hi = 1; }
    if (hi - lo < 1e-6) { lo -= 0.5; hi += 0.5; }
    var pad = (hi - lo) * 0.05; lo -= pad; hi += pad;
    var x = function (step) { return L + (maxStep <= 1 ? pw / 2 : ((step - 1) / (maxStep - 1)) * pw); };
    var y = function (v) { return T + ph - ((v - lo) / (hi - lo)) * ph; };
    for (var i = 0; i <= 4; i++) {
      var v = lo + ((hi - lo) * i) / 4;
      chart.appendChild(svg('line', { class: 'axis', x1: L - 4, y1: y(v), x2: L, y2: y(v) }));
      chart.appendChild(svg('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end' }, v.toFixed(2)));
    }
    var ticks = Math.min(maxStep, 6);
    for (var j = 0; j < ticks; j++) {
      var st = ticks === 1 ? 1 : Math.round(1 + ((maxStep - 1) * j) / (ticks - 1));
      chart.appendChild(svg('line', { class: 'axis', x1: x(st), y1: T + ph, x2: x(st), y2: T + ph + 4 }));
      chart.appendChild(svg('text', { x: x(st), y: T + ph + 16, 'text-anchor': 'middle' }, String(st)));
    }
    order.forEach(function (id, k) {
      var color = COLORS[k % COLORS.length];
      var pts = byUser[id].slice().sort(function (a, b) { return a.step - b.step; });
      var line = svg('polyline', {
        fill: 'none', stroke: color, 'stroke-width': 2, 'data-user-id': id,
        points: pts.map(function (p) { return x(p.step).toFixed(1) + ',' + y(p.loss).toFixed(1); }).join(' ')
      });
      line.appendChild(svg('title', {}, id));
      chart.appendChild(line);
      pts.forEach(function (p) {
        var dot = svg('circle', { cx: x(p.step).toFixed(1), cy: y(p.loss).toFixed(1), r: 2.5, fill: color });
        dot.appendChild(svg('title', {},
          id + ' step ' + p.step + ': loss ' + p.loss.toFixed(4) + ', ' + p.ms.toFixed(0) + ' ms'));
        chart.appendChild(dot);
      });
      if (k < 12) {
        var ly = T + 8 + k * 18;
        chart.appendChild(svg('line',
          { x1: L + pw + 14, y1: ly, x2: L + pw + 32, y2: ly, stroke: color, 'stroke-width': 3 }));
        chart.appendChild(svg('text', { class: 'legend', x: L + pw + 38, y: ly + 4 },
          id.length > 16 ? id.slice(0, 15) + '\\u2026' : id));
      } else if (k === 12) {
        chart.appendChild(svg('text', { x: L + pw + 14, y: T + 8 + k * 18 + 4 }, '+' + (order.length - 12) + ' more'));
      }
    });
    var last = points[points.length - 1];
    chart.setAttribute('aria-label',
      'Loss chart, round ' + series.round + ': ' + points.length + ' steps of ' + order.length +
      ' user(s); last loss ' + last.loss.toFixed(4) + ' (' + last.userId + ', step ' + last.step + ')');
  }

  function renderErrors(errors) {
    var list = $('errors');
    var sig = errors.length + ':' + (errors.length ? errors[errors.length - 1].at : '');
    if (list.dataset.sig === sig) return;
    list.dataset.sig = sig;
    while (list.lastChild) list.removeChild(list.lastChild);
    if (errors.length === 0) { list.appendChild(el('li', 'muted', 'No errors.')); return; }
    errors.slice().reverse().forEach(function (e) {
      var li = el('li');
      var t = el('time', 'muted', clock(e.at)); t.dateTime = e.at; li.appendChild(t);
      li.appendChild(document.createTextNode(' '));
      li.appendChild(el('code', null, e.code));
      if (e.userId) {
        li.appendChild(document.createTextNode(' ')); li.appendChild(el('span', 'id', 'user ' + e.userId));
      }
      li.appendChild(document.createTextNode(' \\u2014 ' + e.message));
      list.appendChild(li);
    });
  }

  $('users').addEventListener('click', function (ev) {
    var b = ev.target.closest ? ev.target.closest('button[data-drop]') : null;
    if (!b) return;
    var id = b.dataset.drop;
    if (!confirm(
      'Drop user ' + id +
      '? Its connection closes, it does not reconnect by itself, and its turn in this round (if any) is rolled back.'
    )) return;
    b.disabled = true;
    api('POST', '/api/admin/users/' + encodeURIComponent(id) + '/drop').then(function (r) {
      if (r.status === 401) { setToken(null); showLogin('The operator token was refused.'); return; }
      if (r.status === 200) {
        notice = 'dropped user ' + id;
        noticeUntil = Date.now() + 10000;
        status('Dropped user ' + id + '.', false);
      }
      else {
        b.disabled = false;
        status('Dropping ' + id + ' failed: ' + (r.body.code || r.status) + ' ' + (r.body.message || ''), true);
      }
      poll();
    }, function (e) { b.disabled = false; status('Dropping ' + id + ' failed: ' + e.message, true); });
  });

  $('token-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var t = $('token').value.trim();
    if (!t) { text('auth-message', 'Enter the operator token.'); return; }
    setToken(t);
    text('auth-message', '');
    status('Checking the token\\u2026', false);
    poll();
  });
  $('forget').addEventListener('click', function () {
    setToken(null); showLogin('Signed out: the token is forgotten in this tab.');
  });

  // #token=... in the URL: take it, and take it out of the address bar and history
  var m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    setToken(decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
  if (token()) { status('Connecting\\u2026', false); poll(); } else showLogin('');
})();
`;

export function adminPage(): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>SplitLLM edge \u00b7 operator</title>
<style>${ADMIN_STYLE}</style>
</head>
<body>
<header>
  <h1>SplitLLM edge</h1>
  <dl class="inline" aria-label="edge">
    <div><dt>edge</dt><dd id="edge-id">\u2014</dd></div>
    <div><dt>provider</dt><dd id="provider">\u2014</dd></div>
    <div><dt>cloud</dt><dd id="cloud-state">\u2014</dd></div>
    <div><dt>global version</dt><dd id="version">\u2014</dd></div>
    <div><dt>round</dt><dd id="round">\u2014</dd></div>
  </dl>
  <button type="button" id="forget" hidden>Forget token</button>
</header>
<main>
  <section id="login" aria-labelledby="login-title" hidden>
    <h2 id="login-title">Operator sign-in</h2>
    <p>This dashboard needs the edge's operator token (printed in the edge's log at start-up, or set with
      SPLITLLM_EDGE_OPERATOR_TOKEN). It stays in this tab only.</p>
    <p id="auth-message" role="alert"></p>
    <form id="token-form" autocomplete="off">
      <label for="token">Operator token</label>
      <input id="token" name="token" type="password" autocomplete="off" spellcheck="false" required>
      <button id="token-submit" type="submit">Open dashboard</button>
    </form>
  </section>
  <div id="dashboard" hidden>
    <section aria-labelledby="now-title">
      <h2 id="now-title">Now</h2>
      <dl class="cards">
        <div class="wide"><dt>training now</dt>
          <dd><span id="training-now">\u2014</span> <span id="training-step" class="sub"></span></dd></div>
        <div><dt>step time</dt><dd id="step-ms">\u2014</dd></div>
        <div><dt>tokens / s</dt><dd id="tokens-per-second">\u2014</dd></div>
        <div><dt>bytes in</dt><dd id="bytes-in">\u2014</dd></div>
        <div><dt>bytes out</dt><dd id="bytes-out">\u2014</dd></div>
        <div class="wide"><dt>memory</dt><dd id="memory">\u2014</dd></div>
        <div class="wide" id="restarts-card" hidden><dt>restarts</dt><dd id="restarts"></dd></div>
      </dl>
    </section>
    <section aria-labelledby="users-title">
      <h2 id="users-title">Users <span id="users-count" class="sub"></span></h2>
      <table id="users">
        <caption>Connected users in queue order: the first waiting user trains next.</caption>
        <thead><tr>
          <th scope="col">user</th><th scope="col">state</th><th scope="col" class="num">queue position</th>
          <th scope="col">connected since</th><th scope="col" class="num">bytes in</th>
          <th scope="col" class="num">bytes out</th><th scope="col"><span class="muted">action</span></th>
        </tr></thead>
        <tbody></tbody>
      </table>
    </section>
    <section aria-labelledby="loss-title">
      <h2 id="loss-title">Loss</h2>
      <svg id="loss-chart" data-points="0" data-round="" viewBox="0 0 720 260" role="img"
        aria-label="Loss chart: no data yet" xmlns="http://www.w3.org/2000/svg"></svg>
    </section>
    <section aria-labelledby="errors-title">
      <h2 id="errors-title">Recent errors <span class="sub">(newest first)</span></h2>
      <ol id="errors"></ol>
    </section>
  </div>
  <p id="status-line">Loading\u2026</p>
</main>
<script>${ADMIN_SCRIPT}</script>
</body>
</html>
`;
}
