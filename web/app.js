// web/app.js: the page's side of a run. It turns the form into run's command line, starts a
// worker.js per story, shows the story as the worker streams it (token by token, with tok/s) and
// run's own messages (errors, notes, its final stats), and terminates the worker on Stop.
// document.body.dataset.state says where a run is: idle, running, done, stopped or error.
'use strict';

const $ = (id) => document.getElementById(id);
let worker = null;

function setState(state, status) {
    document.body.dataset.state = state;
    $('status').textContent = status;
    $('start').disabled = state === 'running';
    $('stop').disabled = state !== 'running';
}

// the file picked in input (a File), else the URL typed in urlInput on this page's origin; the
// name run sees is the file's own, so its messages name it as the command line would
function source(input, urlInput, what) {
    const file = $(input).files[0];
    if (file) { return { name: file.name, blob: file }; }
    const text = $(urlInput).value.trim();
    if (!text) { throw new Error(`pick a ${what} file, or give its URL`); }
    const url = new URL(text, location.href);
    if (url.origin !== location.origin) { throw new Error(`${text}: a URL on this page's origin (${location.origin}) is expected`); }
    return { name: decodeURIComponent(url.pathname.split('/').pop()) || what, url: url.href };
}

// run's options from the form: the values go to run as typed, and run checks them as it does
// on the command line
function options() {
    const args = ['-t', $('temperature').value, '-p', $('topp').value, '-n', $('steps').value];
    if ($('seed').value.trim()) { args.push('-s', $('seed').value.trim()); }
    if ($('prompt').value) { args.push('-i', $('prompt').value); }
    return args;
}

function start(event) {
    event.preventDefault();
    stop('stopped');
    $('story').textContent = '';
    $('log').textContent = '';
    let model, tokenizer;
    try {
        model = source('model-file', 'model-url', 'model');
        tokenizer = source('tokenizer-file', 'tokenizer-url', 'tokenizer');
        if (tokenizer.name === model.name) { tokenizer.name = `tokenizer/${tokenizer.name}`; }
    } catch (err) {
        $('log').textContent = `error: ${err.message}\n`;
        setState('error', 'not started');
        return;
    }
    const decoder = new TextDecoder();
    let writes = 0, first = 0;  // each write after the prompt's first one is one token
    worker = new Worker('worker.js');
    setState('running', `reading ${model.name}…`);
    worker.onmessage = (e) => {
        const m = e.data;
        if (m.type === 'out') {
            $('story').append(decoder.decode(m.bytes, { stream: true }));
            const now = performance.now();
            if (writes++ === 0) { first = now; }
            const rate = writes > 1 ? ` at ${((writes - 1) / ((now - first) / 1000)).toFixed(1)} tok/s` : '';
            setState('running', `telling: ${writes - 1} tokens${rate}`);
        } else if (m.type === 'err') {
            $('log').append(m.text);
        } else {
            $('story').append(decoder.decode());
            if (m.type === 'fail') { $('log').append(`error: ${m.message}\n`); }
            const ok = m.type === 'exit' && m.code === 0;
            setState(ok ? 'done' : 'error', ok ? 'done' : 'failed: see below');
            worker.terminate();
            worker = null;
        }
    };
    worker.postMessage({ model, tokenizer, args: options() });
}

function stop(state) {
    if (!worker) { return; }
    worker.terminate();
    worker = null;
    setState(state, 'stopped');
}

$('form').addEventListener('submit', start);
$('stop').addEventListener('click', () => stop('stopped'));
setState('idle', 'pick a model and its tokenizer');
