#!/usr/bin/env node
// Copies the repository's API protos (../../proto) into ./proto, so the
// package carries the exact .proto files it was built against and an
// installed copy (npm pack, a file: dependency) works outside the repository.
// Run by `npm run build`; a no-op outside a checkout when ./proto exists.
'use strict';

const fs = require('fs');
const path = require('path');

const pkg = path.resolve(__dirname, '..');
const src = path.resolve(pkg, '..', '..', 'proto');
const dst = path.join(pkg, 'proto');
// What the client loads: the taskbroker API and the google.rpc.Status it uses.
const DIRS = ['taskbroker/v1', 'google/rpc'];

if (!fs.existsSync(path.join(src, 'taskbroker', 'v1'))) {
  if (fs.existsSync(path.join(dst, 'taskbroker', 'v1'))) process.exit(0);
  console.error(`copy-proto: no protos at ${src} (run inside the taskbroker repository)`);
  process.exit(1);
}
fs.rmSync(dst, { recursive: true, force: true });
for (const dir of DIRS) {
  fs.mkdirSync(path.join(dst, dir), { recursive: true });
  for (const name of fs.readdirSync(path.join(src, dir))) {
    if (name.endsWith('.proto')) fs.copyFileSync(path.join(src, dir, name), path.join(dst, dir, name));
  }
}
