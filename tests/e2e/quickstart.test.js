// The quickstart in examples/quickstart, run as its README says: a Sovra
// of its own (fresh data directory, auto-confirm on, nothing else set),
// schema.sql applied with psql, then `node app.mjs` with the URL and the
// anon key. run.sh passes the binary (E2E_SOVRA_BIN) and installs the
// example's dependencies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, chmodSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const example = join(dirname(fileURLToPath(import.meta.url)), '../../examples/quickstart');
const bin = process.env.E2E_SOVRA_BIN;

const freePort = () =>
  new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

// The environment without the SOVRA_* settings run.sh made for the other
// tests: the quickstart gets a new project's defaults.
function cleanEnv(extra) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('SOVRA_')) env[k] = v;
  return { ...env, ...extra };
}

async function until(what, check) {
  for (let i = 0; i < 600; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`${what} did not happen within a minute`);
}

test('the quickstart signs up, inserts and reads under RLS through supabase-js', async (t) => {
  assert.ok(bin, 'E2E_SOVRA_BIN names the sovra binary');
  const dir = mkdtempSync('/tmp/sovra-quickstart-');
  chmodSync(dir, 0o755);
  const data = join(dir, 'data');
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  let stderr = '';
  const server = spawn(bin, ['serve', '--data-dir', data, '--listen', `127.0.0.1:${port}`], {
    env: cleanEnv({ SOVRA_AUTH_EMAIL_AUTOCONFIRM: 'true' }),
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  server.stderr.on('data', (chunk) => (stderr += chunk));
  const exited = new Promise((resolve) => server.on('exit', resolve));
  t.after(async () => {
    server.kill('SIGINT');
    await exited;
    rmSync(dir, { recursive: true, force: true });
  });
  await until('/ready', async () => {
    assert.equal(server.exitCode, null, `sovra exited: ${stderr}`);
    return fetch(`${url}/ready`).then((r) => r.ok, () => false);
  });

  // README: apply the schema with psql over the embedded cluster's socket.
  execFileSync('psql', ['-h', join(data, 'pg'), '-U', 'postgres', '-d', 'postgres',
    '-v', 'ON_ERROR_STOP=1', '-q', '-f', join(example, 'schema.sql')]);
  const keys = JSON.parse(execFileSync(bin, ['keys', '--json', '--data-dir', data], { env: cleanEnv({}) }));
  await until('the schema cache has notes', async () => {
    const r = await fetch(`${url}/rest/v1/notes`, { headers: { apikey: keys.anon_key } });
    return r.status === 200;
  });

  // README: run the app.
  const out = execFileSync(process.execPath, ['app.mjs'], {
    cwd: example,
    env: cleanEnv({ SUPABASE_URL: url, SUPABASE_ANON_KEY: keys.anon_key, QUICKSTART_EMAIL: 'ada@example.com' }),
  }).toString();
  assert.match(out, /^signed up ada@example\.com as user [0-9a-f-]{36}$/m);
  const user = /as user ([0-9a-f-]{36})/.exec(out)[1];
  assert.match(out, new RegExp(`^inserted note 1: "hello from the quickstart" by ${user}$`, 'm'));
  assert.match(out, /^notes this user sees: 1$/m);
  assert.match(out, /^notes an anonymous client sees: 0$/m);

  // The row is really there, and really Ada's (read past RLS with the
  // service_role key).
  const rows = await fetch(`${url}/rest/v1/notes?select=author,body`, {
    headers: { apikey: keys.service_role_key, Authorization: `Bearer ${keys.service_role_key}` },
  }).then((r) => r.json());
  assert.deepEqual(rows, [{ author: user, body: 'hello from the quickstart' }]);

  // Without the key, the app says what to set instead of failing obscurely.
  let refused;
  try {
    execFileSync(process.execPath, ['app.mjs'], { cwd: example, env: cleanEnv({}), stdio: 'pipe' });
  } catch (err) {
    refused = err;
  }
  assert.equal(refused?.status, 2);
  assert.match(refused.stderr.toString(), /SUPABASE_ANON_KEY/);
});
