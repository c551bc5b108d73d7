// The RBAC recipe of docs/auth.md through the real supabase-js client: the
// recipe's SQL (docs/examples/rbac.sql) applied with psql, the custom
// access token hook turned on (the instance at E2E_HOOKS_URL that run.sh
// started with it), then a moderator sees rows a plain user does not.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { createClient } from '@supabase/supabase-js';
import ws from 'ws';

const url = process.env.E2E_HOOKS_URL;
const anonKey = process.env.SOVRA_ANON_KEY;
const serviceKey = process.env.SOVRA_SERVICE_KEY;
const pgSocket = process.env.SOVRA_PG_SOCKET;
const recipe = fileURLToPath(new URL('../../docs/examples/rbac.sql', import.meta.url));

const opts = { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: ws } };
const psql = (args) => execFileSync('psql', ['-h', pgSocket, '-U', 'postgres', '-d', 'postgres', '-v', 'ON_ERROR_STOP=1', '-q', ...args]);
const claimsOf = (jwt) => JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());

async function signedIn(email, password) {
  const client = createClient(url, anonKey, opts);
  const { data, error } = await client.auth.signInWithPassword({ email, password });
  assert.equal(error, null);
  return { client, session: data.session };
}

test('RBAC recipe: a moderator sees posts a plain user does not', async () => {
  psql(['-f', recipe]);
  const service = createClient(url, serviceKey, opts);
  const tag = randomUUID().slice(0, 8);
  const users = {};
  for (const name of ['author', 'plain', 'moderator']) {
    const email = `${name}-${tag}@example.com`;
    const { data, error } = await service.auth.admin.createUser({ email, password: 'password-1', email_confirm: true });
    assert.equal(error, null);
    users[name] = { email, id: data.user.id };
  }
  psql(['-c', `insert into public.user_roles (user_id, role) values ('${users.moderator.id}', 'moderator')`]);

  const author = await signedIn(users.author.email, 'password-1');
  const plain = await signedIn(users.plain.email, 'password-1');
  const moderator = await signedIn(users.moderator.email, 'password-1');
  assert.equal(claimsOf(moderator.session.access_token).user_role, 'moderator');
  assert.equal(claimsOf(plain.session.access_token).user_role, null);
  // auth-js reads the same claims.
  const { data: claims, error: claimsError } = await moderator.client.auth.getClaims();
  assert.equal(claimsError, null);
  assert.equal(claims.claims.user_role, 'moderator');

  // The recipe's DDL reloads this instance's schema cache; wait for it.
  for (let i = 0; ; i++) {
    const { error } = await author.client.from('posts').select('id').limit(1);
    if (!error) break;
    assert.ok(i < 100, `posts never appeared: ${error.message}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const { error: insertError } = await author.client.from('posts').insert({ body: `hello ${tag}` });
  assert.equal(insertError, null);

  const mine = await author.client.from('posts').select('body, author');
  assert.deepEqual(mine.data, [{ body: `hello ${tag}`, author: users.author.id }]);
  const others = await plain.client.from('posts').select('body');
  assert.deepEqual(others.data, []);
  const all = await moderator.client.from('posts').select('body, author').eq('author', users.author.id);
  assert.deepEqual(all.data, [{ body: `hello ${tag}`, author: users.author.id }]);
  // The role table stays closed to the API roles.
  const roles = await moderator.client.from('user_roles').select('*');
  assert.notEqual(roles.error, null);

  // A refreshed token carries the role too (the hook runs on refresh).
  const { data: refreshed, error: refreshError } = await moderator.client.auth.refreshSession();
  assert.equal(refreshError, null);
  assert.equal(claimsOf(refreshed.session.access_token).user_role, 'moderator');
});
