// Builds the dashboard into dist/: one JavaScript bundle and one style
// sheet, both with a content hash in their names (cached for a year by
// Sovra), and index.html that loads them (no inline script: the pages are
// served with `script-src 'self'`). crates/sovra-dashboard embeds dist/.
import { build } from 'esbuild';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(fileURLToPath(import.meta.url));
const dist = join(root, 'dist');
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist, { recursive: true });

const result = await build({
  entryPoints: [join(root, 'src/main.jsx')],
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['es2020'],
  jsx: 'automatic',
  jsxImportSource: 'preact',
  entryNames: 'assets/[name]-[hash]',
  outdir: dist,
  metafile: true,
  legalComments: 'none',
  logLevel: 'warning',
});

const outputs = Object.keys(result.metafile.outputs).map((file) => basename(file));
const script = outputs.find((file) => file.endsWith('.js'));
const style = outputs.find((file) => file.endsWith('.css'));
if (!script || !style) throw new Error(`unexpected build outputs: ${outputs.join(', ')}`);
writeFileSync(
  join(dist, 'index.html'),
  `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sovra</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/_/assets/${style}">
<script type="module" src="/_/assets/${script}"></script>
</head>
<body>
<div id="app"></div>
<noscript>The Sovra dashboard needs JavaScript.</noscript>
</body>
</html>
`,
);
console.log(`dashboard: built dist/ (${outputs.join(', ')})`);
