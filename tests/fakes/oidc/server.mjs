// A real OAuth 2.1 / OpenID Connect authorization server for the tests: the certified
// `oidc-provider` package (npm), on 127.0.0.1, configured as an MCP client meets it in the wild.
// Started by tests/support/oidc.py, which installs the package into .cache/ and passes:
//
//   node server.mjs <path of oidc-provider's lib/index.js> <config.json>
//
// config.json (all optional but `resources`):
//   resources     {"<resource URL>": "scope1 scope2"}: the resource indicators (RFC 8707) it
//                 issues tokens for; every access token is a JWT whose `aud` is its resource
//   clients       pre-registered clients (oidc-provider client metadata)
//   registration  true: open dynamic client registration (RFC 7591); false: closed
//   cimd          true: client ID metadata documents (client_id = an https URL it fetches)
//   cimd_plain_http_hosts  ["127.0.0.1:P"]: a CIMD URL on these hosts is fetched over plain
//                 HTTP, without the SSRF guard (test seam: the spec wants https, the test serves
//                 the document on loopback)
//   send_iss      false: drop the RFC 9207 `iss` from authorization responses and discovery,
//                 like IdPs without RFC 9207 (Entra ID, Cognito); default true
//
// What the test drives, besides the standard endpoints (/auth, /token, /reg, /jwks, discovery):
//   GET  /interaction/:uid          -> {"prompt": "login"|"consent", "params": {...}}
//   POST /interaction/:uid/login    {"account": "alice"}  -> 303 back to /auth (signs in)
//   POST /interaction/:uid/confirm  {}                    -> 303 back to /auth (grants the
//                                   requested scopes of each resource)
//   POST /admin/rotate              -> {"kid": new}: publishes the next signing key and signs
//                                   new access tokens with it; old keys stay published
//   POST /admin/iss {"send": bool}  -> switch `send_iss` at run time
// and prints `READY <port>` once it listens.

import { generateKeyPairSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { pathToFileURL } from 'node:url';

const [modulePath, configPath] = process.argv.slice(2);
const { default: Provider, errors } = await import(pathToFileURL(modulePath).href);
const cfg = JSON.parse(readFileSync(configPath, 'utf8'));

// Three RSA keys, only the first published and signing at start; /admin/rotate moves on.
const keys = [1, 2, 3].map((n) => ({
  ...generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' }),
  kid: `key-${n}`, use: 'sig', alg: 'RS256',
}));
let current = 0;
const published = new Set([keys[0].kid]);
let sendIss = cfg.send_iss !== false;

const server = createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;
const plainHttpHosts = new Set(cfg.cimd_plain_http_hosts ?? []);

const provider = new Provider(issuer, {
  clients: cfg.clients ?? [],
  jwks: { keys },
  cookies: { keys: ['test-cookie-key'] },
  // the resources' scopes too: a registering client may name them in its `scope` metadata
  scopes: [...new Set(['openid', 'offline_access',
    ...Object.values(cfg.resources).flatMap((s) => s.split(' '))])],
  claims: { openid: ['sub'], email: ['email'] },
  async findAccount(ctx, sub) {
    return { accountId: sub, claims: async () => ({ sub, email: `${sub}@example.test` }) };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  pkce: { required: () => true },
  responseTypes: ['code'], // OAuth 2.1: the authorization code flow only
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    registration: { enabled: cfg.registration === true },
    clientIdMetadataDocument: { enabled: cfg.cimd === true, ack: 'draft-02' },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => undefined,
      useGrantedResource: async () => true,
      async getResourceServerInfo(ctx, resource) {
        if (!(resource in cfg.resources)) throw new errors.InvalidTarget();
        return {
          scope: cfg.resources[resource],
          audience: resource,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256', kid: keys[current].kid } },
        };
      },
    },
  },
  // who signed in, in the access token: agw maps `email` and `groups` (jwtProviders.claims)
  async extraTokenClaims(ctx, token) {
    return token.accountId ? { email: `${token.accountId}@example.test`, groups: ['eng'] } : {};
  },
  async fetch(url, options) {
    const target = new URL(url);
    if (target.protocol === 'https:' && plainHttpHosts.has(target.host)) {
      target.protocol = 'http:';
      delete options.dispatcher; // the SSRF guard refuses loopback
    }
    return globalThis.fetch(target, options);
  },
});

// Only published keys in /jwks; no `iss` where the IdP is to look like one without RFC 9207.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/jwks' && ctx.body?.keys) {
    ctx.body = { keys: ctx.body.keys.filter((k) => published.has(k.kid)) };
  }
  if (!sendIss && ctx.path.startsWith('/.well-known/') && ctx.body?.issuer) {
    delete ctx.body.authorization_response_iss_parameter_supported;
  }
  const location = ctx.response.get('location');
  if (!sendIss && location && location.includes('iss=')) {
    const target = new URL(location);
    target.searchParams.delete('iss');
    ctx.response.set('location', target.href);
  }
});

async function body(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString() || '{}';
  return JSON.parse(text);
}

function json(res, status, value) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(value));
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return json(res, 400, { error: 'interaction mismatch' });
  if (req.method === 'GET' && !action) {
    return json(res, 200, { prompt: details.prompt.name, params: details.params });
  }
  const input = await body(req);
  if (action === 'login') {
    if (!input.account) return json(res, 400, { error: 'account required' });
    return provider.interactionFinished(req, res, { login: { accountId: input.account } });
  }
  if (action === 'confirm') {
    const { prompt: { details: missing }, params, session } = details;
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [resource, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
      grant.addResourceScope(resource, scopes.join(' '));
    }
    const grantId = await grant.save();
    const consent = details.grantId ? {} : { grantId };
    return provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
  }
  return json(res, 404, { error: 'unknown interaction action' });
}

async function admin(req, res, action) {
  if (req.method !== 'POST') return json(res, 405, { error: 'POST only' });
  if (action === 'rotate') {
    if (current + 1 >= keys.length) return json(res, 409, { error: 'no key left' });
    current += 1;
    published.add(keys[current].kid);
    return json(res, 200, { kid: keys[current].kid });
  }
  if (action === 'iss') {
    sendIss = (await body(req)).send !== false;
    return json(res, 200, { send_iss: sendIss });
  }
  return json(res, 404, { error: 'unknown admin action' });
}

const handle = provider.callback();
server.on('request', async (req, res) => {
  const path = new URL(req.url, issuer).pathname;
  try {
    const step = path.match(/^\/interaction\/([^/]+)(?:\/(login|confirm))?$/);
    if (step) return await interaction(req, res, step[1], step[2]);
    const hook = path.match(/^\/admin\/([a-z]+)$/);
    if (hook) return await admin(req, res, hook[1]);
    return handle(req, res);
  } catch (err) {
    return json(res, 500, { error: String(err?.message ?? err) });
  }
});

process.on('SIGTERM', () => process.exit(0));
console.log(`READY ${port}`);
