/**
 * The operator's invitations: GET /api/admin/invitations lists every join token by its id (the
 * first hex digits of its hash: the token itself is not kept), when it was made, when it expires,
 * who used it and whether it was revoked; POST /api/admin/invitations/:id/revoke withdraws an
 * unused one. Minting is POST /api/join-tokens (routes/join.ts).
 *
 * /admin/invitations is a self-contained page (inline style and script, pinned by hash in a
 * strict CSP) that loads without a token: the token is typed into its form, kept in
 * sessionStorage, and sent as a bearer header with each API call, which is what the token guards.
 */
import type { FastifyPluginAsync } from 'fastify';
import { createHash } from 'node:crypto';
import { requireOperator } from '../auth';
import { CloudRequestError } from '../errors';
import { ref } from '../schemas';

const INVITATIONS_STYLE = `
body{font:15px/1.4 system-ui,sans-serif;margin:0;padding:12px;max-width:960px;color:#111;background:#fff}
h1{font-size:1.3em;margin:0 0 12px}form,fieldset{margin:0 0 12px}fieldset{border:1px solid #ccc;padding:8px}
label{display:inline-block;margin:4px 8px 4px 0}input,select,button{font:inherit;padding:6px 8px;max-width:100%}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 6px;border-bottom:1px solid #ddd}
.wrap{overflow-x:auto}#links{width:100%;box-sizing:border-box;font-family:monospace}
#msg{min-height:1.4em;color:#a00}@media (max-width:480px){th.o,td.o{display:none}}
`;

const INVITATIONS_SCRIPT = `(function () {
  var KEY = 'splitllm-cloud-operator-token';
  var $ = function (id) { return document.getElementById(id); };
  function token() { try { return sessionStorage.getItem(KEY); } catch (e) { return null; } }
  function say(text) { $('msg').textContent = text || ''; }
  function api(method, path, body) {
    var t = token();
    if (!t) return Promise.reject(new Error('enter the operator token first'));
    var init = { method: method, headers: { authorization: 'Bearer ' + t } };
    if (body !== undefined) { init.headers['content-type'] = 'application/json'; init.body = JSON.stringify(body); }
    return fetch(path, init).then(function (r) {
      return r.json().then(function (j) {
        if (!r.ok) {
          throw new Error((j && j.message ? j.message : 'HTTP ' + r.status) + (j && j.code ? ' [' + j.code + ']' : ''));
        }
        return j;
      });
    });
  }
  function cell(tr, text, cls) {
    var td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  function load() {
    return api('GET', '/api/admin/invitations').then(function (j) {
      var body = $('rows'); body.textContent = '';
      j.invitations.slice().reverse().forEach(function (inv) {
        var tr = document.createElement('tr');
        cell(tr, inv.id);
        cell(tr, inv.createdAt.replace('T', ' ').slice(0, 19), 'o');
        cell(tr, inv.expiresAt ? inv.expiresAt.replace('T', ' ').slice(0, 19) : 'never', 'o');
        cell(tr, inv.usedBy ? 'used by ' + inv.usedBy : inv.revokedAt ? 'revoked' : inv.expired ? 'expired' : 'unused');
        var td = document.createElement('td');
        if (!inv.usedBy && !inv.revokedAt) {
          var b = document.createElement('button');
          b.type = 'button'; b.textContent = 'Revoke invitation ' + inv.id;
          b.addEventListener('click', function () {
            api('POST', '/api/admin/invitations/' + inv.id + '/revoke', {})
              .then(load)
              .then(function () { say('revoked ' + inv.id); }, function (e) { say(e.message); });
          });
          td.appendChild(b);
        }
        tr.appendChild(td); body.appendChild(tr);
      });
      say(j.invitations.length ? '' : 'no invitations yet');
    }, function (e) { say(e.message); });
  }
  $('tokenForm').addEventListener('submit', function (ev) {
    ev.preventDefault();
    try { sessionStorage.setItem(KEY, $('token').value.trim()); } catch (e) {}
    $('token').value = ''; load();
  });
  $('mintForm').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var n = Number($('count').value), exp = Number($('expires').value), out = [], i = 0;
    var body = exp > 0 ? { expiresInS: exp } : {};
    (function next() {
      if (i >= n) { $('links').value = out.join('\\n'); return load(); }
      i++;
      return api('POST', '/api/join-tokens', body).then(function (j) {
        out.push(location.origin + '/?join=' + j.token); return next();
      }, function (e) { say(e.message); });
    })();
  });
  if (token()) load(); else say('enter the operator token to list invitations');
})();`;

const cspHash = (s: string) => `'sha256-${createHash('sha256').update(s, 'utf8').digest('base64')}'`;

export const INVITATIONS_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>splitllm: invitations</title><style>${INVITATIONS_STYLE}</style></head>
<body><h1>Invitations</h1>
<form id="tokenForm"><label>Operator token <input id="token" type="password" autocomplete="off" required></label>
<button type="submit">Use token</button></form>
<form id="mintForm"><fieldset><legend>Mint join links</legend>
<label>How many <input id="count" type="number" min="1" max="100" value="1" required></label>
<label>Expires after <select id="expires"><option value="0">never</option><option value="1800">30 minutes</option>
<option value="3600" selected>1 hour</option><option value="86400">1 day</option><option value="604800">7 days</option>
</select></label><button type="submit">Mint</button>
<label>New links (each works once)<br><textarea id="links" rows="3" readonly></textarea></label></fieldset></form>
<p id="msg" role="status"></p>
<div class="wrap"><table><thead><tr><th>Invitation</th><th class="o">Created</th><th class="o">Expires</th>
<th>State</th><th></th></tr></thead><tbody id="rows"></tbody></table></div>
<script>${INVITATIONS_SCRIPT}</script></body></html>`;

const CSP = [
  "default-src 'none'",
  `script-src ${cspHash(INVITATIONS_SCRIPT)}`,
  `style-src ${cspHash(INVITATIONS_STYLE)}`,
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

const invitation = {
  type: 'object',
  properties: {
    id: { type: 'string' },
    createdAt: { type: 'string' },
    expiresAt: { type: ['string', 'null'] },
    expired: { type: 'boolean' },
    usedBy: { type: ['string', 'null'] },
    revokedAt: { type: ['string', 'null'] },
  },
  required: ['id', 'createdAt', 'expiresAt', 'expired', 'usedBy', 'revokedAt'],
  additionalProperties: false,
} as const;

export const invitationRoutes: FastifyPluginAsync = async (app) => {
  const store = app.cloudStore;

  app.get('/admin/invitations', async (_req, reply) =>
    reply
      .type('text/html; charset=utf-8')
      .header('cache-control', 'no-store')
      .header('content-security-policy', CSP)
      .header('referrer-policy', 'no-referrer')
      .header('x-content-type-options', 'nosniff')
      .send(INVITATIONS_PAGE),
  );

  app.get(
    '/api/admin/invitations',
    {
      onRequest: requireOperator,
      schema: {
        response: {
          200: {
            type: 'object',
            properties: { invitations: { type: 'array', items: invitation } },
            required: ['invitations'],
            additionalProperties: false,
          },
          401: ref('cloudError'),
        },
      },
    },
    async () => {
      const now = new Date().toISOString();
      const invitations = store
        .invitations()
        .map((inv) => ({ ...inv, expired: inv.usedBy === null && inv.expiresAt !== null && inv.expiresAt <= now }));
      return { invitations };
    },
  );

  app.post<{ Params: { id: string } }>(
    '/api/admin/invitations/:id/revoke',
    {
      onRequest: requireOperator,
      bodyLimit: 4096,
      schema: {
        params: {
          type: 'object',
          properties: { id: { type: 'string', minLength: 1, maxLength: 64 } },
          required: ['id'],
          additionalProperties: false,
        },
        response: {
          200: {
            type: 'object',
            properties: { id: { type: 'string' }, revoked: { type: 'boolean' } },
            required: ['id', 'revoked'],
            additionalProperties: false,
          },
          401: ref('cloudError'),
          404: ref('cloudError'),
          409: ref('cloudError'),
        },
      },
    },
    async (req) => {
      const { id } = req.params;
      const outcome = store.revokeInvitation(id);
      if (outcome === 'unknown') {
        throw new CloudRequestError(404, 'UNKNOWN_INVITATION', `no invitation "${id}" in this run`);
      }
      if (outcome === 'used') {
        throw new CloudRequestError(
          409,
          'INVITATION_USED',
          `invitation "${id}" was already used; to keep its user out, Drop it on its edge's dashboard`,
        );
      }
      req.log.info({ invitation: id }, 'the operator revoked an invitation');
      return { id, revoked: true };
    },
  );
};
