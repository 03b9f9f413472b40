// A real OpenID Provider (the certified `oidc-provider`) on loopback, for the auth tests.
//
//   node tests/oidc/provider.mjs
//   env OIDC_TOOLS   the folder whose node_modules holds oidc-provider and jose
//                    (default .tools/oidc, installed by tests/setup.sh)
//
// Prints one JSON line, {"issuer": "http://127.0.0.1:PORT"}, once it listens, and exits when
// its standard input closes (the test that started it ended). Clients, all with the client
// credentials grant and secret "secret":
//   admin-bot (realm_access.roles ["capstan-admins"]), ci-bot (["capstan-writers"]),
//   reader-bot (["capstan-readers"], namespaces {"read": ["team-b"]}), nobody ([]),
//   pipeline-svc (["capstan-services"]), system:serviceaccount:capstan:pipeline-svc ([]: the
//   `sub` a Kubernetes service-account token of pipeline-svc carries); expiring-bot is
//   ci-bot with tokens of one second. Clients authenticate with client_secret_post.
// Resources (RFC 8707 `resource`), each a JWT access token for audience capstan-registry:
//   https://rs256.capstan.test, https://es256.capstan.test, https://eddsa.capstan.test;
//   https://other.capstan.test is for audience other-api (RS256).
// Test controls, beside the provider's own routes:
//   POST /test/rotate      new signing keys; the old ones stay published after them
//   GET  /test/forge?kind= tokens no provider would issue: wrong-kid (a new made-up kid
//                          each time), wrong-issuer, none, hs256-public (HS256 with the
//                          RSA public key's PEM as secret)
//   GET  /test/stats       {"jwksRequests": N}: how often the JWKS was fetched
import http from 'node:http';
import path from 'node:path';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

const tools = path.resolve(process.env.OIDC_TOOLS
  || path.join(path.dirname(new URL(import.meta.url).pathname), '../../.tools/oidc'));
const requireFromTools = createRequire(path.join(tools, 'package.json'));
const load = async (name) => import(pathToFileURL(requireFromTools.resolve(name)).href);
const { default: Provider } = await load('oidc-provider');
const jose = await load('jose');

const AUDIENCE = 'capstan-registry';
const RESOURCES = {
  'https://rs256.capstan.test': { alg: 'RS256', audience: AUDIENCE },
  'https://es256.capstan.test': { alg: 'ES256', audience: AUDIENCE },
  'https://eddsa.capstan.test': { alg: 'EdDSA', audience: AUDIENCE },
  'https://other.capstan.test': { alg: 'RS256', audience: 'other-api' },
};
const ROLES = {
  'admin-bot': ['capstan-admins'],
  'ci-bot': ['capstan-writers'],
  'expiring-bot': ['capstan-writers'],
  'reader-bot': ['capstan-readers'],
  'pipeline-svc': ['capstan-services'],
  'system:serviceaccount:capstan:pipeline-svc': [],
  nobody: [],
};
const NAMESPACES = { 'reader-bot': { read: ['team-b'] } };

let generation = 0;
async function keyPair(alg, options) {
  const { privateKey, publicKey } = await jose.generateKeyPair(alg, { extractable: true, ...options });
  const jwk = await jose.exportJWK(privateKey);
  return { jwk: { ...jwk, alg, use: 'sig', kid: `${alg.toLowerCase()}-${generation}` }, privateKey, publicKey };
}
async function keyGeneration() {
  generation += 1;
  return {
    RS256: await keyPair('RS256', { modulusLength: 2048 }),
    ES256: await keyPair('ES256'),
    EdDSA: await keyPair('EdDSA', { crv: 'Ed25519' }),
  };
}

// Newest first: the provider signs with the kid each resource names, and publishes all.
const generations = [await keyGeneration()];
let jwksRequests = 0;

function makeProvider(issuer) {
  const current = generations[0];
  const provider = new Provider(issuer, {
    clients: Object.keys(ROLES).map((id) => ({
      client_id: id,
      client_secret: 'secret',
      token_endpoint_auth_method: 'client_secret_post',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
    })),
    jwks: { keys: generations.flatMap((g) => Object.values(g).map((k) => k.jwk)) },
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'https://rs256.capstan.test',
        getResourceServerInfo: (ctx, indicator, client) => {
          const rs = RESOURCES[indicator];
          if (!rs) throw new Error(`unknown resource ${indicator}`);
          return {
            audience: rs.audience,
            scope: 'registry',
            accessTokenTTL: client.clientId === 'expiring-bot' ? 1 : 600,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: rs.alg, kid: current[rs.alg].jwk.kid } },
          };
        },
      },
    },
    extraTokenClaims: (ctx, token) => {
      const claims = { realm_access: { roles: ROLES[token.clientId] ?? [] } };
      if (NAMESPACES[token.clientId]) claims.namespaces = NAMESPACES[token.clientId];
      return claims;
    },
  });
  provider.on('server_error', (ctx, err) => console.error('oidc-provider server_error:', err));
  return provider;
}

// A key the provider never publishes, and how many kids were made up with it.
let stranger;
let forged = 0;
const b64 = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');

async function forge(issuer, kind) {
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    iss: issuer, sub: 'forger', aud: AUDIENCE, iat: now, exp: now + 600,
    client_id: 'forger', realm_access: { roles: ['capstan-admins'] },
  };
  const rsa = generations[0].RS256;
  switch (kind) {
    case 'wrong-kid': {
      stranger ??= await keyPair('RS256', { modulusLength: 2048 });
      forged += 1;
      return new jose.SignJWT(claims)
        .setProtectedHeader({ alg: 'RS256', kid: `not-published-${forged}` }).sign(stranger.privateKey);
    }
    case 'wrong-issuer':
      return new jose.SignJWT({ ...claims, iss: `${issuer}/other` })
        .setProtectedHeader({ alg: 'RS256', kid: rsa.jwk.kid }).sign(rsa.privateKey);
    case 'none':
      return `${b64({ alg: 'none', kid: rsa.jwk.kid })}.${b64(claims)}.`;
    case 'hs256-public': {
      const pem = await jose.exportSPKI(rsa.publicKey);
      return new jose.SignJWT(claims)
        .setProtectedHeader({ alg: 'HS256', kid: rsa.jwk.kid }).sign(new TextEncoder().encode(pem));
    }
    default:
      throw new Error(`unknown kind ${kind}`);
  }
}

let provider;
let issuer;
const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    if (url.pathname === '/test/rotate' && req.method === 'POST') {
      generations.unshift(await keyGeneration());
      provider = makeProvider(issuer);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ kids: Object.values(generations[0]).map((k) => k.jwk.kid) }));
    } else if (url.pathname === '/test/forge') {
      const token = await forge(issuer, url.searchParams.get('kind'));
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(token);
    } else if (url.pathname === '/test/stats') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ jwksRequests }));
    } else {
      if (url.pathname === '/jwks') jwksRequests += 1;
      provider.callback()(req, res);
    }
  } catch (e) {
    res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(String(e?.stack ?? e));
  }
});

server.listen(0, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  provider = makeProvider(issuer);
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});
process.stdin.resume();
process.stdin.on('end', () => process.exit(0));
