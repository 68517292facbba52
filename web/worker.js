// web/worker.js: one run of run.c's WebAssembly build (run.wasm), in a Web Worker so that the page
// stays responsive; the page ends a run early by terminating the worker.
//
// The page posts {model, tokenizer, args}: model and tokenizer are {name, blob} (a File the user
// picked) or {name, url} (a file on the page's own origin, fetched into a Blob). run.wasm is a WASI
// command: main() runs with argv ['run', model, '-z', tokenizer, ...args] against the small WASI
// below, whose file system is the two files, read-only. Reads come straight from the Blob into the
// module's memory (FileReaderSync, a slice at a time), so the model is held in memory once, by run.c.
// The worker posts {type: 'out', bytes} for each write to stdout (run.c flushes every token),
// {type: 'err', text} for stderr, and {type: 'exit', code} at the end, or {type: 'fail', message}
// when the run could not happen at all (the file could not be fetched, the module trapped).
'use strict';

const E = { BADF: 8, INVAL: 28, ISDIR: 31, NOENT: 44, NOSYS: 52, ROFS: 69, SPIPE: 70 };  // WASI errno
const FILETYPE = { CHAR: 2, DIR: 3, FILE: 4 };
const READ_CHUNK = 16 << 20;  // bytes per read at most: the copy in JS stays this small
const ALL_RIGHTS = 0xFFFFFFFFFFFFFFFFn;

class Exit { constructor(code) { this.code = code; } }  // thrown by proc_exit to leave main()

// The WASI preview1 calls run.c's libc makes, over files = {name: Blob}. fd 3 is the preopened
// directory "/", in which the names are relative paths; open files get fds from 4 up.
function wasi(files, argv, memory) {
    const enc = new TextEncoder(), dec = new TextDecoder();
    const args = argv.map((a) => enc.encode(a + '\0'));
    const open = new Map();  // fd -> {blob, pos}
    let nextFd = 4, errText = '';
    const view = () => new DataView(memory().buffer);
    const bytes = (ptr, len) => new Uint8Array(memory().buffer, ptr, len);
    const pathAt = (ptr, len) => dec.decode(bytes(ptr, len)).replace(/^\.\//, '');
    const iovecs = (ptr, n) => Array.from({ length: n }, (_, i) =>
        [view().getUint32(ptr + 8 * i, true), view().getUint32(ptr + 8 * i + 4, true)]);
    const reader = new FileReaderSync();
    function readAt(blob, pos, iovs) {  // into the iovecs from pos; returns the bytes read
        let done = 0;
        for (const [buf, len] of iovs) {
            const n = Math.min(len, READ_CHUNK - done, blob.size - pos - done);
            if (n <= 0) { break; }
            const part = reader.readAsArrayBuffer(blob.slice(pos + done, pos + done + n));
            bytes(buf, n).set(new Uint8Array(part));
            done += n;
            if (n < len) { break; }
        }
        return done;
    }
    function filestat(ptr, type, size) {
        const v = view();
        for (let i = 0; i < 64; i += 8) { v.setBigUint64(ptr + i, 0n, true); }
        v.setUint8(ptr + 16, type);
        v.setBigUint64(ptr + 24, 1n, true);
        v.setBigUint64(ptr + 32, BigInt(size), true);
    }
    function flushErr(all) {  // stderr goes to the page a line at a time (die() writes byte by byte)
        const cut = all ? errText.length : errText.lastIndexOf('\n') + 1;
        if (cut > 0) { postMessage({ type: 'err', text: errText.slice(0, cut) }); errText = errText.slice(cut); }
    }
    const calls = {
        args_sizes_get(argc, size) {
            view().setUint32(argc, args.length, true);
            view().setUint32(size, args.reduce((s, a) => s + a.length, 0), true);
            return 0;
        },
        args_get(argvPtr, buf) {
            for (const [i, a] of args.entries()) {
                view().setUint32(argvPtr + 4 * i, buf, true);
                bytes(buf, a.length).set(a);
                buf += a.length;
            }
            return 0;
        },
        environ_sizes_get(count, size) { view().setUint32(count, 0, true); view().setUint32(size, 0, true); return 0; },
        environ_get() { return 0; },
        clock_time_get(id, precision, out) {  // realtime (0) from the epoch; the others monotonic
            const ms = id === 0 ? Date.now() : performance.now();
            view().setBigUint64(out, BigInt(Math.round(ms * 1e6)), true);
            return 0;
        },
        fd_write(fd, iovs, n, written) {
            let total = 0;
            const parts = iovecs(iovs, n).map(([buf, len]) => { total += len; return bytes(buf, len).slice(); });
            if (fd === 1) {
                const out = new Uint8Array(total);
                let at = 0;
                for (const p of parts) { out.set(p, at); at += p.length; }
                postMessage({ type: 'out', bytes: out }, [out.buffer]);
            } else if (fd === 2) {
                for (const p of parts) { errText += dec.decode(p, { stream: true }); }
                flushErr(false);
            } else {
                return E.BADF;
            }
            view().setUint32(written, total, true);
            return 0;
        },
        fd_read(fd, iovs, n, nread) {
            const f = open.get(fd);
            if (fd === 0) { view().setUint32(nread, 0, true); return 0; }  // stdin: empty
            if (!f) { return E.BADF; }
            const got = readAt(f.blob, f.pos, iovecs(iovs, n));
            f.pos += got;
            view().setUint32(nread, got, true);
            return 0;
        },
        fd_pread(fd, iovs, n, offset, nread) {
            const f = open.get(fd);
            if (!f) { return fd < 3 ? E.SPIPE : E.BADF; }
            view().setUint32(nread, readAt(f.blob, Number(offset), iovecs(iovs, n)), true);
            return 0;
        },
        fd_seek(fd, offset, whence, out) {
            const f = open.get(fd);
            if (!f) { return fd < 3 ? E.SPIPE : E.BADF; }
            const pos = Number(offset) + [0, f.pos, f.blob.size][whence];
            if (!(pos >= 0)) { return E.INVAL; }
            f.pos = pos;
            view().setBigUint64(out, BigInt(pos), true);
            return 0;
        },
        fd_close(fd) { return open.delete(fd) || fd < 4 ? 0 : E.BADF; },
        fd_fdstat_get(fd, out) {
            const type = fd < 3 ? FILETYPE.CHAR : fd === 3 ? FILETYPE.DIR : open.has(fd) ? FILETYPE.FILE : 0;
            if (!type) { return E.BADF; }
            const v = view();
            v.setUint8(out, type);
            v.setUint16(out + 2, 0, true);
            v.setBigUint64(out + 8, ALL_RIGHTS, true);
            v.setBigUint64(out + 16, ALL_RIGHTS, true);
            return 0;
        },
        fd_fdstat_set_flags() { return 0; },
        fd_filestat_get(fd, out) {
            const f = open.get(fd);
            if (f) { filestat(out, FILETYPE.FILE, f.blob.size); } else if (fd <= 3) { filestat(out, fd === 3 ? FILETYPE.DIR : FILETYPE.CHAR, 0); } else { return E.BADF; }
            return 0;
        },
        fd_prestat_get(fd, out) {
            if (fd !== 3) { return E.BADF; }
            view().setUint32(out, 0, true);      // a directory
            view().setUint32(out + 4, 1, true);  // whose name, "/", is 1 byte
            return 0;
        },
        fd_prestat_dir_name(fd, ptr, len) {
            if (fd !== 3 || len < 1) { return E.BADF; }
            bytes(ptr, 1)[0] = 0x2F;
            return 0;
        },
        path_filestat_get(fd, flags, ptr, len, out) {
            const name = pathAt(ptr, len);
            if (name === '' || name === '.') { filestat(out, FILETYPE.DIR, 0); return 0; }
            if (!(name in files)) { return E.NOENT; }
            filestat(out, FILETYPE.FILE, files[name].size);
            return 0;
        },
        path_open(dirfd, dirflags, ptr, len, oflags, rightsBase, rightsInheriting, fdflags, out) {
            const name = pathAt(ptr, len);
            if (oflags & 1) { return E.ROFS; }  // O_CREAT: the page's files are read-only
            if (name === '' || name === '.') { return E.ISDIR; }
            if (!(name in files)) { return E.NOENT; }
            open.set(nextFd, { blob: files[name], pos: 0 });
            view().setUint32(out, nextFd++, true);
            return 0;
        },
        proc_exit(code) { flushErr(true); throw new Exit(code); },
    };
    return { calls, flushErr };
}

async function fetchBlob(url) {
    const r = await fetch(url);
    if (!r.ok) { throw new Error(`${url}: HTTP ${r.status} ${r.statusText}`); }
    return r.blob();
}

onmessage = async (e) => {
    const { model, tokenizer, args } = e.data;
    let memory = null;
    try {
        const files = {};
        for (const f of [model, tokenizer]) { files[f.name] = f.blob || await fetchBlob(f.url); }
        const module = await WebAssembly.compileStreaming(fetch('run.wasm')).catch(
            async () => WebAssembly.compile(await (await fetch('run.wasm')).arrayBuffer()));  // any server's MIME type
        const { calls, flushErr } = wasi(files, ['run', model.name, '-z', tokenizer.name, ...args], () => memory);
        const imports = {};
        for (const imp of WebAssembly.Module.imports(module)) {  // any call run.c's libc needs beyond these: ENOSYS
            imports[imp.module] = imports[imp.module] || {};
            imports[imp.module][imp.name] = calls[imp.name] || (() => E.NOSYS);
        }
        const instance = await WebAssembly.instantiate(module, imports);
        memory = instance.exports.memory;
        let code = 0;
        try { instance.exports._start(); } catch (err) { if (err instanceof Exit) { code = err.code; } else { throw err; } }
        flushErr(true);
        postMessage({ type: 'exit', code });
    } catch (err) {
        postMessage({ type: 'fail', message: String(err && err.message || err) });
    }
};
