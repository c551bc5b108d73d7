// The dashboard at /_/ in headless Chromium (Debian's, driven by
// playwright-core): sign-in and its refusals, each page's main action, the
// CSRF and session refusals, phone width and keyboard use. Started by
// run.sh, which provides DASHBOARD_URL, the keys and the browser.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const url = process.env.DASHBOARD_URL;
const serviceKey = process.env.DASHBOARD_SERVICE_KEY;
const platformKey = process.env.DASHBOARD_PLATFORM_KEY;
const anonKey = process.env.DASHBOARD_ANON_KEY;
const shots = new URL('./screenshots/', import.meta.url).pathname;
const suffix = Math.random().toString(36).slice(2, 8);

let browser;
let context;
let page;
// Answers of /_/api that the page got, to check for server errors.
const serverErrors = [];

async function shot(name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

async function signIn(key, tenant) {
  await page.goto(`${url}/_/`);
  await page.getByLabel('Key', { exact: true }).fill(key);
  if (tenant) await page.getByLabel(/^Tenant/).fill(tenant);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.DASHBOARD_CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
  context = await browser.newContext({ viewport: { width: 1280, height: 800 }, acceptDownloads: true });
  page = await context.newPage();
  page.on('response', (response) => {
    if (response.url().includes('/_/api/') && response.status() >= 500) {
      serverErrors.push(`${response.status()} ${response.url()}`);
    }
  });
  page.on('console', (message) => {
    // A CSP violation or a script error shows up here.
    // (Refusals the tests provoke log "Failed to load resource": expected.)
    // (so does the refused socket of the realtime test).
    const expected = ['Failed to load resource', 'WebSocket connection to'];
    if (message.type() === 'error' && !expected.some((start) => message.text().startsWith(start))) {
      serverErrors.push(`console: ${message.text()}`);
    }
  });
});

after(async () => {
  if (browser) await browser.close();
});

test('a wrong key is refused with a message and no cookie', async () => {
  await signIn('not-a-key');
  await page.getByRole('alert').filter({ hasText: 'That key was not accepted.' }).waitFor();
  assert.equal((await context.cookies()).length, 0);
  await shot('01-sign-in-refused');
});

test('the sign-in form works from the keyboard alone', async () => {
  await page.goto(`${url}/_/`);
  await page.getByLabel('Key', { exact: true }).waitFor();
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.getAttribute('name')), 'key');
  await page.keyboard.type(serviceKey);
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate(() => document.activeElement.getAttribute('name')), 'tenant');
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'Tables' }).waitFor();
  assert.match(await page.locator('.who').innerText(), /service key of default/);
  // The session cookie is HttpOnly and strict; nothing sits in storage.
  const [cookie] = await context.cookies();
  assert.equal(cookie.name, 'sovra_dashboard');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');
  assert.equal(await page.evaluate(() => document.cookie), '');
  assert.equal(await page.evaluate(() => localStorage.length + sessionStorage.length), 0);
  // The service key's session has no Tenants page.
  assert.equal(await page.getByRole('link', { name: 'Tenants' }).count(), 0);
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('button', { name: 'Sign in' }).waitFor();
});

test('the platform key signs in to the shell with a tenant picker', async () => {
  await signIn(platformKey);
  await page.getByRole('heading', { name: 'Tables' }).waitFor();
  await page.getByLabel('Tenant', { exact: true }).waitFor();
  assert.equal(await page.getByLabel('Tenant', { exact: true }).inputValue(), 'default');
  await page.getByRole('link', { name: 'Tenants' }).waitFor();
  await shot('02-shell-tables');
});

test('tables: counts, browse with a filter, insert, edit and delete a row, policies', async () => {
  await page.goto(`${url}/_/t/default/tables`);
  const count = page.locator('[data-rows="todos"]');
  await count.waitFor();
  assert.equal(await count.innerText(), '2');
  await page.getByRole('link', { name: 'todos' }).click();
  await page.getByRole('heading', { name: 'todos' }).waitFor();
  await page.locator('[data-total]').filter({ hasText: '2' }).waitFor();
  assert.match(await page.locator('.policies').innerText(), /owners read/);

  await page.getByRole('button', { name: 'Insert row' }).click();
  const form = page.getByRole('form', { name: 'Insert row' });
  await form.getByLabel(/^title/).fill('buy milk');
  await form.getByLabel(/^done/).selectOption('true');
  await form.getByLabel(/^due/).fill('2030-01-31');
  await form.getByRole('button', { name: 'Insert' }).click();
  await page.getByRole('status').filter({ hasText: 'Row inserted.' }).waitFor();
  await page.locator('[data-total]').filter({ hasText: '3' }).waitFor();
  await shot('03-table-rows');

  // Filter: title = buy milk.
  const filter = page.getByRole('form', { name: 'Filter rows' });
  await filter.getByLabel('Column').selectOption('title');
  await filter.getByLabel('Value').fill('buy milk');
  await filter.getByRole('button', { name: 'Add filter' }).click();
  await page.locator('[data-total]').filter({ hasText: /^1$/ }).waitFor();
  const rows = page.getByRole('table', { name: 'Rows of todos' }).locator('tbody tr');
  assert.equal(await rows.count(), 1);
  assert.match(await rows.first().innerText(), /buy milk/);
  assert.match(await rows.first().innerText(), /2030-01-31/);

  // Edit it.
  await rows.first().getByRole('button', { name: 'Edit' }).click();
  const edit = page.getByRole('form', { name: 'Edit row' });
  await edit.getByLabel(/^title/).fill('buy oat milk');
  await edit.getByRole('button', { name: 'Save' }).click();
  await page.getByRole('status').filter({ hasText: 'Row saved.' }).waitFor();
  await page.getByRole('button', { name: 'Remove filter on title' }).click();
  await page.locator('[data-total]').filter({ hasText: '3' }).waitFor();
  // Sort by title, descending after two clicks.
  const sort = page.getByRole('button', { name: /^title/ });
  await sort.click();
  await sort.click();
  await page.getByRole('button', { name: 'title ▼' }).waitFor();
  await page.waitForFunction(
    () => document.querySelector('table[aria-label="Rows of todos"] tbody tr td:nth-child(2)')?.innerText === 'write the report',
  );

  // Delete it.
  page.once('dialog', (dialog) => dialog.accept());
  const milk = page.getByRole('row').filter({ hasText: 'buy oat milk' });
  await milk.getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('status').filter({ hasText: 'Row deleted.' }).waitFor();
  await page.locator('[data-total]').filter({ hasText: '2' }).waitFor();
});

test('policies: enable RLS, create, edit and drop a policy, test as user', async () => {
  await page.goto(`${url}/_/t/default/tables/public/notes`);
  await page.getByRole('heading', { name: 'notes', exact: true }).waitFor();
  await page.locator('[data-rls]').filter({ hasText: 'is on' }).waitFor();
  const tester = page.getByRole('form', { name: 'Test as user' });
  const runAs = async (email, count) => {
    await tester.getByLabel('User', { exact: true }).selectOption({ label: email });
    await tester.getByRole('button', { name: 'Run as user' }).click();
    await tester.locator('[data-as-user-count]').filter({ hasText: new RegExp(`^${count}$`) }).waitFor();
  };
  // RLS on, no policy: alice sees nothing.
  await runAs('alice@example.com', 0);

  await page.getByRole('button', { name: 'New policy' }).click();
  let form = page.getByRole('form', { name: 'New policy' });
  await form.getByLabel('Policy name').fill('own notes');
  await form.getByLabel('Command').selectOption('SELECT');
  await form.getByLabel(/^Roles/).fill('authenticated');
  await form.getByLabel(/^Using/).fill('owner = auth.uid()');
  await form.getByRole('button', { name: 'Save policy' }).click();
  await page.getByRole('status').filter({ hasText: 'Policy own notes created.' }).waitFor();
  await page.locator('[data-policy="own notes"]').filter({ hasText: 'owner = auth.uid()' }).waitFor();
  await runAs('alice@example.com', 1);
  assert.match(await tester.getByRole('table', { name: 'Rows this user sees' }).innerText(), /alice 1/);
  assert.doesNotMatch(await tester.getByRole('table', { name: 'Rows this user sees' }).innerText(), /bob/);
  assert.match(await tester.locator('[data-as-user]').innerText(), /as role authenticated, auth.uid\(\) a0000000-/);
  await runAs('bob@example.com', 2);
  await shot('12-policies');

  // A policy PostgreSQL refuses: its error, nothing created.
  await page.getByRole('button', { name: 'New policy' }).click();
  form = page.getByRole('form', { name: 'New policy' });
  await form.getByLabel('Policy name').fill('broken');
  await form.getByLabel(/^Using/).fill('owner = ');
  await form.getByRole('button', { name: 'Save policy' }).click();
  await page.locator('.policies > .error').filter({ hasText: /syntax error/ }).waitFor();
  await form.getByRole('button', { name: 'Cancel' }).click();
  assert.equal(await page.locator('[data-policy="broken"]').count(), 0);

  // Edit: every row.
  await page.getByRole('button', { name: 'Edit policy own notes' }).click();
  form = page.getByRole('form', { name: 'Edit policy' });
  await form.getByLabel(/^Using/).fill('true');
  await form.getByRole('button', { name: 'Save policy' }).click();
  await page.getByRole('status').filter({ hasText: 'Policy own notes saved.' }).waitFor();
  await runAs('alice@example.com', 3);

  page.once('dialog', (dialog) => dialog.accept());
  await page.getByRole('button', { name: 'Drop policy own notes' }).click();
  await page.getByRole('status').filter({ hasText: 'Policy own notes dropped.' }).waitFor();
  await page.getByText('No policies.').waitFor();
  await page.getByRole('button', { name: 'Disable RLS' }).click();
  await page.locator('[data-rls]').filter({ hasText: 'is off' }).waitFor();
  await runAs('bob@example.com', 3);
  await page.getByRole('button', { name: 'Enable RLS' }).click();
  await page.locator('[data-rls]').filter({ hasText: 'is on' }).waitFor();
  await runAs('bob@example.com', 0);
});

test('SQL editor: results, an error with its position, history', async () => {
  await page.getByRole('link', { name: 'SQL editor' }).click();
  const editor = page.getByLabel('Statements');
  await editor.fill('select title, done from public.todos order by id');
  await page.getByRole('button', { name: 'Run' }).click();
  const result = page.getByRole('table', { name: 'Result 1' });
  await result.waitFor();
  assert.match(await result.innerText(), /water the plants/);
  assert.match(await page.locator('.result .meta').innerText(), /2 rows/);

  await editor.fill('select 1;\nselect * fro public.todos');
  await page.keyboard.press('Control+Enter');
  const failure = page.locator('[data-sql-error]');
  await failure.waitFor();
  assert.match(await failure.innerText(), /42601/);
  assert.match(await failure.innerText(), /line 2, column 10/);
  await shot('04-sql-error');
  const history = page.locator('.history li');
  await history.filter({ hasText: 'select title, done' }).waitFor();
  await history.filter({ hasText: 'select title, done' }).getByRole('button').click();
  assert.equal(await editor.inputValue(), 'select title, done from public.todos order by id');
});

test('a change without the CSRF token is refused with 403', async () => {
  const status = await page.evaluate(async () => {
    const response = await fetch('/_/api/t/default/sql', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ query: 'select 1' }),
    });
    return response.status;
  });
  assert.equal(status, 403);
});

test('auth: create, find, ban and delete a user; the mailbox', async () => {
  const email = `dash-${suffix}@example.com`;
  await page.getByRole('link', { name: 'Auth' }).click();
  const form = page.getByRole('form', { name: 'Create user' });
  await form.getByLabel('Email', { exact: true }).fill(email);
  await form.getByLabel('Password').fill('a long enough password');
  await form.getByRole('button', { name: 'Create user' }).click();
  await page.getByRole('status').filter({ hasText: `User ${email} created.` }).waitFor();
  await page.getByLabel('Search this page').fill(suffix);
  const row = page.getByRole('row').filter({ hasText: email });
  await row.waitFor();
  assert.equal(await page.getByRole('table', { name: 'Users' }).locator('tbody tr').count(), 1);
  await row.getByRole('button', { name: 'Ban' }).click();
  await row.getByRole('cell', { name: 'banned' }).waitFor();
  // An invitation lands in the local mailbox.
  const invited = `invited-${suffix}@example.com`;
  await form.getByLabel('Email', { exact: true }).fill(invited);
  await form.getByRole('button', { name: 'Send invitation' }).click();
  await page.getByRole('status').filter({ hasText: `Invitation sent to ${invited}.` }).waitFor();
  await page.getByRole('button', { name: 'Show mailbox' }).click();
  await page.locator('.mail li').filter({ hasText: invited }).waitFor();
  await page.getByLabel('Search this page').fill(suffix);
  await shot('05-auth-users');
  page.once('dialog', (dialog) => dialog.accept());
  await row.getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('status').filter({ hasText: `${email} deleted.` }).waitFor();
  await page.getByRole('row').filter({ hasText: email }).waitFor({ state: 'detached' });
  await page.getByRole('row').filter({ hasText: invited }).waitFor();
});

test('auth: sessions of a user end, invite codes, API keys, settings', async () => {
  const email = `sess-${suffix}@example.com`;
  await page.getByRole('link', { name: 'Auth' }).click();
  const form = page.getByRole('form', { name: 'Create user' });
  await form.getByLabel('Email', { exact: true }).fill(email);
  await form.getByLabel('Password').fill('a long enough password');
  await form.getByRole('button', { name: 'Create user' }).click();
  await page.getByRole('status').filter({ hasText: `User ${email} created.` }).waitFor();
  // The user signs in (as an app would, with the anon key): a session.
  const signedIn = await fetch(`${url}/auth/v1/token?grant_type=password`, {
    method: 'POST',
    headers: { apikey: anonKey, 'content-type': 'application/json' },
    body: JSON.stringify({ email, password: 'a long enough password' }),
  });
  assert.equal(signedIn.status, 200);
  const { refresh_token: refresh } = await signedIn.json();
  await page.getByLabel('Search this page').fill(`sess-${suffix}`);
  await page.getByRole('row').filter({ hasText: email }).getByRole('button', { name: 'Details' }).click();
  const details = page.getByRole('region', { name: `User ${email}` });
  await details.getByRole('table', { name: 'Sessions' }).locator('tbody tr').first().waitFor();
  await details.getByText('No MFA factors.').waitFor();
  await shot('13-auth-user-sessions');
  await details.getByRole('button', { name: 'End session' }).click();
  await details.getByRole('status').filter({ hasText: 'Session ended.' }).waitFor();
  await details.getByText('No sessions.').waitFor();
  // Its refresh token no longer works.
  const refreshed = await fetch(`${url}/auth/v1/token?grant_type=refresh_token`, {
    method: 'POST',
    headers: { apikey: anonKey, 'content-type': 'application/json' },
    body: JSON.stringify({ refresh_token: refresh }),
  });
  assert.equal(refreshed.status, 400);
  await details.getByRole('button', { name: 'Close' }).click();

  const invite = page.getByRole('form', { name: 'Create invite code' });
  await invite.getByLabel('Note').fill(`for ${suffix}`);
  await invite.getByRole('button', { name: 'Create invite code' }).click();
  assert.match(await page.locator('[data-invite-code]').innerText(), /^[A-Za-z0-9]{20}$/);
  await page.getByRole('listitem').filter({ hasText: `for ${suffix}` }).waitFor();

  const keys = page.getByRole('form', { name: 'Create API key' });
  await keys.getByLabel('Key name').fill(`ci-${suffix}`);
  await keys.getByRole('button', { name: 'Create API key' }).click();
  await page.locator('[data-api-key]').waitFor();
  const key = page.locator(`[data-key-name="ci-${suffix}"]`);
  await key.filter({ hasText: 'active' }).waitFor();
  page.once('dialog', (dialog) => dialog.accept());
  await page.getByRole('button', { name: `Revoke API key ci-${suffix}` }).click();
  await key.filter({ hasText: 'revoked' }).waitFor();

  await page.getByRole('table', { name: 'Providers' }).getByRole('cell', { name: 'email', exact: true }).waitFor();
  await shot('14-auth-keys-settings');
});

test('storage: create a bucket, upload, download and delete a file', async () => {
  const bucket = `files-${suffix}`;
  await page.getByRole('link', { name: 'Storage' }).click();
  const form = page.getByRole('form', { name: 'Create bucket' });
  await form.getByLabel('Name').fill(bucket);
  await form.getByRole('button', { name: 'Create bucket' }).click();
  await page.getByRole('status').filter({ hasText: `Bucket ${bucket} created.` }).waitFor();
  await page.getByRole('link', { name: bucket }).click();
  await page.getByRole('heading', { name: bucket }).waitFor();

  const local = join(tmpdir(), `dashboard-upload-${suffix}.txt`);
  const content = `hello from the dashboard test ${suffix}\n`;
  writeFileSync(local, content);
  await page.getByLabel('File', { exact: true }).setInputFiles(local);
  await page.getByRole('button', { name: 'Upload' }).click();
  await page.getByRole('status').filter({ hasText: 'Uploaded' }).waitFor();
  const row = page.getByRole('row').filter({ hasText: `dashboard-upload-${suffix}.txt` });
  await row.waitFor();
  await shot('06-storage-bucket');

  const [download] = await Promise.all([
    page.waitForEvent('download'),
    row.getByRole('link', { name: 'Download' }).click(),
  ]);
  const saved = await download.path();
  assert.equal(readFileSync(saved, 'utf8'), content);

  // A signed URL works without the session (a fresh request, no cookie).
  await row.getByRole('button', { name: 'Signed URL' }).click();
  const signed = await page.locator('input[name="signed-url"]').inputValue();
  assert.match(signed, /\/storage\/v1\/object\/sign\/.+\?token=/);
  const fetched = await fetch(signed);
  assert.equal(fetched.status, 200);
  assert.equal(await fetched.text(), content);

  page.once('dialog', (dialog) => dialog.accept());
  await row.getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('status').filter({ hasText: 'Deleted' }).waitFor();
  await page.getByText('This folder is empty.').waitFor();

  // A file over 6 MiB goes up resumably (TUS, two chunks, through the proxy).
  const bigName = `big-${suffix}.bin`;
  const big = join(tmpdir(), bigName);
  const bytes = Buffer.alloc(7 * 1024 * 1024 + 123);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 31) % 251;
  writeFileSync(big, bytes);
  const chunks = [];
  const onRequest = (request) => {
    if (request.url().includes('/storage/v1/upload/resumable/') && request.method() === 'PATCH') chunks.push(request.url());
  };
  page.on('request', onRequest);
  await page.getByLabel('File', { exact: true }).setInputFiles(big);
  await page.getByRole('button', { name: 'Upload' }).click();
  await page.getByRole('status').filter({ hasText: `Uploaded ${bigName}` }).waitFor();
  page.off('request', onRequest);
  assert.equal(chunks.length, 2);
  const bigRow = page.getByRole('row').filter({ hasText: bigName });
  await bigRow.getByRole('cell', { name: String(bytes.length) }).waitFor();
  const [bigDownload] = await Promise.all([page.waitForEvent('download'), bigRow.getByRole('link', { name: 'Download' }).click()]);
  assert.ok(readFileSync(await bigDownload.path()).equals(bytes));
  await shot('16-storage-resumable');
});

test('realtime: subscribe through the dashboard, see broadcasts arrive, counts', async () => {
  await page.getByRole('link', { name: 'Realtime' }).click();
  await page.getByRole('heading', { name: 'Realtime' }).waitFor();
  const room = `room-${suffix}`;
  const form = page.getByRole('form', { name: 'Subscribe' });
  await form.getByLabel('Topic').fill(room);
  await form.getByRole('button', { name: 'Subscribe', exact: true }).click();
  await page.locator('[data-socket-state="joined"]').waitFor();
  // A broadcast from a server (HTTP API, the service key) arrives.
  const sent = await fetch(`${url}/realtime/v1/api/broadcast`, {
    method: 'POST',
    headers: { apikey: serviceKey, 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ topic: room, event: 'greet', payload: { from: suffix } }] }),
  });
  assert.equal(sent.status, 202);
  const tail = page.getByRole('list', { name: 'Received' });
  await tail.getByRole('listitem').filter({ hasText: `greet {"from":"${suffix}"}` }).waitFor();
  // One sent from the page comes back (broadcast self).
  const out = page.getByRole('form', { name: 'Send a broadcast' });
  await out.getByLabel('Event').fill('ping');
  await out.getByRole('button', { name: 'Send broadcast' }).click();
  await tail.getByRole('listitem').filter({ hasText: 'ping {"from":"dashboard"}' }).waitFor();
  await page.locator('[data-connections]').filter({ hasText: /^[1-9]/ }).waitFor();
  await shot('18-realtime');
  // The socket without the session's CSRF token is refused.
  const opened = await page.evaluate(
    () =>
      new Promise((resolve) => {
        const ws = new WebSocket(`ws://${location.host}/_/api/t/default/realtime/websocket?vsn=1.0.0`);
        ws.onopen = () => resolve(true);
        ws.onerror = () => resolve(false);
      }),
  );
  assert.equal(opened, false);
  // No key anywhere in the page.
  const all = await page.content();
  assert.ok(!all.includes(serviceKey));
  await page.getByRole('button', { name: 'Unsubscribe' }).click();
  await page.locator('[data-socket-state="closed"]').waitFor();
});

test('jobs: a queue (send, read), cron runs, dead letters replayed', async () => {
  await page.getByRole('link', { name: 'Jobs' }).click();
  await page.getByRole('heading', { name: 'Jobs' }).waitFor();
  const queue = page.getByRole('region', { name: 'Queue dash_jobs' });
  await queue.locator('[data-queue-length]').filter({ hasText: /^0$/ }).waitFor();
  await queue.getByLabel('Message (JSON)').fill(`{"job": "${suffix}"}`);
  await queue.getByRole('button', { name: 'Send' }).click();
  await page.getByRole('status').filter({ hasText: /Message 1 sent to dash_jobs/ }).waitFor();
  await queue.locator('[data-queue-length]').filter({ hasText: /^1$/ }).waitFor();
  await queue.getByRole('button', { name: 'Read messages' }).click();
  await queue.locator('.messages li').filter({ hasText: suffix }).waitFor();
  // Read again at once: hidden for 30 s by the first read.
  await queue.getByRole('button', { name: 'Read messages' }).click();
  await queue.getByText('No message to read').waitFor();
  // Invalid JSON is refused in the page.
  await queue.getByLabel('Message (JSON)').fill('{nope');
  await queue.getByRole('button', { name: 'Send' }).click();
  await queue.getByRole('alert').filter({ hasText: 'Not valid JSON' }).waitFor();

  const cron = page.getByRole('table', { name: 'Cron jobs' });
  await cron.getByRole('row').filter({ hasText: 'dash-tick' }).waitFor();
  for (let i = 0; i < 60 && !(await cron.getByText(/succeeded/).count()); i++) {
    await page.waitForTimeout(500);
    await page.getByRole('button', { name: 'Refresh' }).click();
  }
  await cron.getByText(/succeeded/).first().waitFor();

  const dead = page.getByRole('table', { name: 'Dead letters' });
  await dead.getByRole('row').filter({ hasText: 'hooks.example.invalid' }).waitFor();
  await shot('17-jobs');
  await page.getByRole('button', { name: 'Replay dead letter 900001' }).click();
  await page.getByRole('status').filter({ hasText: '1 dead letters back in the queue.' }).waitFor();
});

test('logs: recent requests with status, latency and request id, no keys', async () => {
  await page.getByRole('link', { name: 'Logs' }).click();
  await page.getByRole('heading', { name: 'Logs' }).waitFor();
  const table = page.getByRole('table', { name: 'Recent requests' });
  await table.getByRole('row').filter({ hasText: '/rest/v1/todos' }).first().waitFor();
  await page.getByLabel('Filter').fill('/storage/v1/bucket');
  await table.getByRole('row').filter({ hasText: '/storage/v1/bucket' }).first().waitFor();
  const text = await table.innerText();
  assert.doesNotMatch(text, /\/rest\/v1\/todos/);
  assert.match(text, /[0-9a-f]{8}-[0-9a-f]{4}-/, 'request ids');
  const all = await page.content();
  for (const secret of [serviceKey, anonKey, platformKey]) assert.ok(!all.includes(secret), 'no key on the page');
  await shot('15-logs');
});

test('tenants: create, pick, suspend, resume and delete a tenant', async () => {
  const name = `t-${suffix}`;
  await page.getByRole('link', { name: 'Tenants' }).click();
  const form = page.getByRole('form', { name: 'Create tenant' });
  await form.getByLabel('Name').fill(name);
  await form.getByRole('button', { name: 'Create tenant' }).click();
  await page.getByRole('status').filter({ hasText: `Tenant ${name} created` }).waitFor();
  const row = page.getByRole('row').filter({ hasText: name });
  await row.waitFor();
  await shot('07-tenants');

  // The picker has it; its (empty) tables page opens.
  await page.getByLabel('Tenant', { exact: true }).selectOption(name);
  await page.waitForURL(`${url}/_/t/${name}/tables`);
  await page.getByRole('heading', { name: 'Tables' }).waitFor();
  await page.getByRole('link', { name: 'SQL editor' }).click();
  await page.getByLabel('Statements').fill('select current_database()');
  await page.getByRole('button', { name: 'Run' }).click();
  await page.getByRole('table', { name: 'Result 1' }).filter({ hasText: `tenant_${name.replace(/-/g, '_')}` }).waitFor();

  await page.getByRole('link', { name: 'Tenants' }).click();
  await row.getByRole('button', { name: 'Suspend' }).click();
  await row.getByRole('cell', { name: 'suspended' }).waitFor();
  await row.getByRole('button', { name: 'Resume' }).click();
  await row.getByRole('cell', { name: 'active' }).waitFor();
  page.once('dialog', (dialog) => dialog.accept());
  await row.getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('status').filter({ hasText: `Tenant ${name}: deleted.` }).waitFor();
  await page.getByRole('row').filter({ hasText: name }).waitFor({ state: 'detached' });
});

test('metrics: charts drawn from /metrics', async () => {
  await page.getByRole('link', { name: 'Metrics' }).click();
  await page.getByRole('heading', { name: 'Metrics' }).waitFor();
  const requests = page.getByRole('img', { name: /^Requests: all [0-9.]+ \/s/ });
  await requests.waitFor({ timeout: 15000 });
  // Two intervals make a line.
  await page.waitForFunction(
    () => (document.querySelector('polyline[data-series="all"]')?.getAttribute('points') || '').includes(' '),
    null,
    { timeout: 15000 },
  );
  await page.getByRole('img', { name: /^Database pool: in use [0-9.]+ connections, max [0-9.]+ connections/ }).waitFor();
  await shot('08-metrics');
});

test('at phone width the pages fit and navigation stays usable', async () => {
  await page.setViewportSize({ width: 375, height: 800 });
  for (const [path, heading, ready, name] of [
    ['/t/default/tables', 'Tables', '[data-rows="todos"]', '09-phone-tables'],
    ['/t/default/tables/public/todos', 'todos', '[data-total]', '10-phone-table-rows'],
    ['/t/default/sql', 'SQL editor', '.history li', '11-phone-sql'],
    ['/t/default/tables/public/notes', 'notes', '[data-rls]', '19-phone-policies'],
    ['/t/default/auth', 'Auth', '#invite-codes', '20-phone-auth'],
    ['/t/default/jobs', 'Jobs', '[data-webhooks-queued]', '21-phone-jobs'],
    ['/t/default/realtime', 'Realtime', '[data-connections]', '22-phone-realtime'],
    ['/t/default/logs', 'Logs', 'table[aria-label="Recent requests"] tbody tr', '23-phone-logs'],
  ]) {
    await page.goto(`${url}/_${path}`);
    await page.getByRole('heading', { name: heading, exact: true }).waitFor();
    await page.locator(ready).first().waitFor();
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 375, `${path} is ${width}px wide`);
    await shot(name);
  }
  await page.getByRole('link', { name: 'Storage' }).click();
  await page.getByRole('heading', { name: 'Storage' }).waitFor();
  await page.setViewportSize({ width: 1280, height: 800 });
});

test('a session the server no longer knows goes back to sign-in', async () => {
  // What an expired or revoked session looks like to the browser: the
  // server answers 401 and the dashboard asks for a key again.
  await context.clearCookies();
  await page.getByRole('link', { name: 'Tables' }).click();
  await page.getByRole('button', { name: 'Sign in' }).waitFor();
  const status = await page.evaluate(async () => (await fetch('/_/api/session')).status);
  assert.equal(status, 401);
});

test('no server errors or script errors happened', () => {
  assert.deepEqual(serverErrors, []);
});
