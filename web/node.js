// web/node.js: run.c's WebAssembly build (web/run.wasm) on the command line, under Node's WASI:
//     node web/node.js model.bin [run's options]      (make runwasm: ./runwasm model.bin ...)
// The same options, output, errors and exit status as ./run; the tests compare the two. The module
// sees the file system from /, and WASI has no current directory of the host's, so the paths run
// takes (the checkpoint, -z, -o) are made absolute here: its messages name them so.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { WASI } = require('node:wasi');

const args = process.argv.slice(2).map((a, i, all) =>
    (i === 0 || all[i - 1] === '-z' || all[i - 1] === '-o') && !a.startsWith('-') ? path.resolve(a) : a);
const wasi = new WASI({ version: 'preview1', args: ['run', ...args], env: {}, preopens: { '/': '/' } });
// Each WASI call through a plain JS function: Node 20 called directly aborts (SIGABRT, no message)
// once a model of some 60 MB has grown the module's memory, and not through a wrapper.
const calls = {};
for (const [name, f] of Object.entries(wasi.getImportObject().wasi_snapshot_preview1)) {
    calls[name] = (...a) => f(...a);
}
const module_ = new WebAssembly.Module(fs.readFileSync(path.join(__dirname, 'run.wasm')));
process.exitCode = wasi.start(new WebAssembly.Instance(module_, { wasi_snapshot_preview1: calls }));
