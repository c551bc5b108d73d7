// A real OpenID Connect provider (the `oidc-provider` package) for the
// external sign-in tests: run.sh starts it before the Sovra instance that
// trusts it. Sign-in and consent are finished at once for the one account
// (the interaction handler below stands in for a person at the login page),
// so tests follow its redirects with plain fetch.
//
// `login_hint=oidc-grace` signs in a second account (linking tests).
//
// Environment: OIDC_PORT, OIDC_REDIRECT_URIS (comma-separated),
// OIDC_CLIENT_ID, OIDC_CLIENT_SECRET.
import http from 'node:http';
import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_PORT);
const issuer = `http://127.0.0.1:${port}`;
const accounts = {
  'oidc-ada': {
    sub: 'oidc-ada',
    email: 'oidc-ada@example.com',
    email_verified: true,
    name: 'Ada From OIDC',
    picture: 'https://example.com/ada.png',
  },
  'oidc-grace': {
    sub: 'oidc-grace',
    email: 'oidc-grace@example.com',
    email_verified: true,
    name: 'Grace From OIDC',
  },
};

const provider = new Provider(issuer, {
  clients: [{
    client_id: process.env.OIDC_CLIENT_ID,
    client_secret: process.env.OIDC_CLIENT_SECRET,
    redirect_uris: process.env.OIDC_REDIRECT_URIS.split(','),
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name', 'picture'] },
  features: { devInteractions: { enabled: false } },
  async findAccount(_ctx, id) {
    if (!Object.hasOwn(accounts, id)) return undefined;
    return { accountId: id, claims: async () => accounts[id] };
  },
  // Refresh tokens for this client whatever the scope, so that the
  // provider's refresh token can be seen travelling back.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ['e2e-cookie-key'] },
});
provider.proxy = false;

const callback = provider.callback();
http.createServer(async (req, res) => {
  if (!req.url.startsWith('/interaction/')) return callback(req, res);
  try {
    const details = await provider.interactionDetails(req, res);
    if (details.prompt.name === 'login') {
      const hint = details.params.login_hint;
      const accountId = Object.hasOwn(accounts, hint) ? hint : 'oidc-ada';
      await provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
      return;
    }
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: details.session.accountId, clientId: details.params.client_id });
    if (details.prompt.details.missingOIDCScope) grant.addOIDCScope(details.prompt.details.missingOIDCScope.join(' '));
    if (details.prompt.details.missingOIDCClaims) grant.addOIDCClaims(details.prompt.details.missingOIDCClaims);
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  } catch (err) {
    res.statusCode = 500;
    res.end(String(err));
  }
}).listen(port, '127.0.0.1', () => console.log(`oidc-provider at ${issuer}`));
