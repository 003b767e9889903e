#!/usr/bin/env node
// Builds a plugin's component with componentize-js, which takes one directory of ES modules:
// the plugin's sources and this package's src/ are copied into a staging directory, with the
// plugin's `weir-guest` imports rewritten to relative paths, and componentized from there.
//
// Run from the plugin's directory (where npm installed @bytecodealliance/componentize-js):
//   weir-guest-componentize --world transformer|decoder|aggregator --src src/app.js --out X.wasm [--wit FILE]

import { cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const fail = (message) => {
  console.error(`weir-guest-componentize: ${message}`);
  process.exit(1);
};

const args = {};
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  if (!argv[i].startsWith('--') || argv[i + 1] === undefined) fail(`usage: --world W --src FILE --out FILE [--wit FILE], not ${argv.join(' ')}`);
  args[argv[i].slice(2)] = argv[i + 1];
}
for (const a of ['world', 'src', 'out']) if (args[a] === undefined) fail(`--${a} is missing`);

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const wit = resolve(args.wit ?? [join(pkg, 'wit/weir-operator.wit'), join(pkg, '../../wit/weir-operator.wit')].find(existsSync) ?? fail('no WIT contract: give --wit FILE'));
const pluginDir = process.cwd();
const engineDir = join(pluginDir, 'node_modules/@bytecodealliance/componentize-js');
if (!existsSync(engineDir)) fail(`@bytecodealliance/componentize-js is not installed in ${pluginDir}: run npm install there`);
const entry = JSON.parse(await readFile(join(engineDir, 'package.json'), 'utf8')).exports.import;
const { componentize } = await import(pathToFileURL(join(engineDir, entry)).href);

const source = resolve(args.src);
const sourceDir = dirname(source);
const stage = await mkdtemp(join(tmpdir(), 'weir-guest-'));
try {
  await cp(join(pkg, 'src'), join(stage, 'weir-guest'), { recursive: true });
  const modules = { '': 'index.js', '/component': 'component.js', '/aggregate': 'aggregate.js', '/testing': 'testing.js' };
  const copy = async (from, to) => {
    await mkdir(to, { recursive: true });
    for (const entry of await readdir(from, { withFileTypes: true })) {
      if (entry.name === 'node_modules') continue;
      if (entry.isDirectory()) await copy(join(from, entry.name), join(to, entry.name));
      else if (entry.name.endsWith('.js')) {
        const up = relative(to, join(stage, 'weir-guest')).split(sep).join('/');
        const text = (await readFile(join(from, entry.name), 'utf8')).replace(
          /(['"])weir-guest(\/[a-z]+)?\1/g,
          (whole, q, sub = '') => (modules[sub] ? `${q}${up}/${modules[sub]}${q}` : whole),
        );
        await writeFile(join(to, entry.name), text);
      }
    }
  };
  await copy(sourceDir, join(stage, 'app'));
  process.chdir(stage);
  const { component } = await componentize({
    sourcePath: join(stage, 'app', relative(sourceDir, source)),
    witPath: wit,
    worldName: args.world,
    // weir links WASI preview 2 without wasi:http, so the engine's fetch features are left out.
    disableFeatures: ['http', 'fetch-event'],
  });
  process.chdir(pluginDir);
  await mkdir(dirname(resolve(args.out)), { recursive: true });
  await writeFile(resolve(args.out), component);
} finally {
  process.chdir(pluginDir);
  await rm(stage, { recursive: true, force: true });
}
