// Sovra quickstart: sign up, insert a row and read it back through
// supabase-js, with row-level security deciding who sees what.
//
//   SUPABASE_URL=http://127.0.0.1:54321 SUPABASE_ANON_KEY=eyJ... node app.mjs
//
// Sign-up needs the mailed confirmation unless the server auto-confirms
// (SOVRA_AUTH_EMAIL_AUTOCONFIRM=true; see README.md).
import { createClient } from '@supabase/supabase-js';
import ws from 'ws';

const url = process.env.SUPABASE_URL ?? 'http://127.0.0.1:54321';
const anonKey = process.env.SUPABASE_ANON_KEY;
if (!anonKey) {
  console.error('Set SUPABASE_ANON_KEY to the anon key (`sovra keys` prints it).');
  process.exit(2);
}
// Node.js before 22 has no WebSocket of its own: supabase-js's realtime
// client takes the `ws` package's instead (unused here, but it is made).
const options = { auth: { persistSession: false, autoRefreshToken: false }, realtime: { transport: ws } };
const email = process.env.QUICKSTART_EMAIL ?? `ada-${Date.now()}@example.com`;
const password = 'correct horse battery staple';

function fail(step, error) {
  console.error(`${step} failed: ${error.message ?? error}`);
  process.exit(1);
}

// 1. Sign up. With auto-confirm on, this signs the user in at once.
const supabase = createClient(url, anonKey, options);
const { data: signUp, error: signUpError } = await supabase.auth.signUp({ email, password });
if (signUpError) fail('sign-up', signUpError);
if (!signUp.session) {
  console.log(`Signed up ${email}; confirm it first: \`sovra mail --last --to ${email}\` prints`);
  console.log('the confirmation link. Then sign in (or start Sovra with SOVRA_AUTH_EMAIL_AUTOCONFIRM=true).');
  process.exit(1);
}
console.log(`signed up ${email} as user ${signUp.user.id}`);

// 2. Insert a note. `author` defaults to auth.uid(): the signed-in user.
const { data: inserted, error: insertError } = await supabase
  .from('notes')
  .insert({ body: 'hello from the quickstart' })
  .select()
  .single();
if (insertError) fail('insert', insertError);
console.log(`inserted note ${inserted.id}: "${inserted.body}" by ${inserted.author}`);

// 3. Read. The policy lets through the author's notes only.
const { data: mine, error: readError } = await supabase.from('notes').select('id, body');
if (readError) fail('read', readError);
console.log(`notes this user sees: ${mine.length}`);

// 4. Without signing in (the anon role), no policy lets a row through.
const anonymous = createClient(url, anonKey, options);
const { data: theirs, error: anonError } = await anonymous.from('notes').select('id');
if (anonError) fail('anonymous read', anonError);
console.log(`notes an anonymous client sees: ${theirs.length}`);

await supabase.auth.signOut();
