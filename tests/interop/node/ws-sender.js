'use strict';
// hyco-ws 1.0.5 WebSocket sender for the hyrelay interop tests. See README.md.
const WS = require('hyco-ws');
const c = require('./common');

c.installCrashHandler();

let args, opts;
try {
  args = c.parseArgs(process.argv.slice(2));
  opts = c.commonOptions(args);
  opts.suffix = args.suffix === true ? '' : (args.suffix || '');
  opts.protocol = args.protocol && args.protocol !== true ? String(args.protocol) : null;
  opts.count = c.int(args, 'count', 3);
  opts.binSize = c.int(args, 'binSize', 1024);
  opts.closeCode = c.int(args, 'closeCode', 1000);
  opts.closeReason = args.closeReason === undefined || args.closeReason === true ? 'bye-from-sender' : String(args.closeReason);
  opts.expectClose = c.int(args, 'expectClose', null);
  opts.concurrency = c.int(args, 'concurrency', 1);
  opts.timeout = Number(args.timeout === undefined ? 20 : args.timeout);
  if (!(opts.timeout > 0)) throw new Error('--timeout must be > 0');
  if (opts.count < 0 || opts.binSize < 0 || opts.concurrency < 1) throw new Error('bad --count/--binSize/--concurrency');
} catch (e) {
  c.emit({ event: 'usage', message: e.message });
  process.exit(64);
}

const connectUri = c.hcUri(opts.relay, opts.path, opts.suffix, 'connect');
const makeToken = (uri) => WS.createRelayToken(uri, opts.keyrule, opts.key, opts.expiry);
const multi = opts.concurrency > 1;

function binaryPayload(n) {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = i & 0xff;
  return b;
}

// Runs one sender connection; resolves true on a clean run, false otherwise.
function runOne(conn) {
  return new Promise((resolve) => {
    const tag = multi ? { conn } : {};
    const placed = c.placeToken(connectUri, opts, makeToken);
    c.emit(Object.assign({ event: 'start', role: 'ws-sender', uri: placed.uri, token: placed.mode, protocol: opts.protocol }, tag));

    const expected = [];
    for (let i = 0; i < opts.count; i++) expected.push({ type: 'text', data: JSON.stringify({ seq: i }) });
    expected.push({ type: 'binary', data: binaryPayload(opts.binSize) });

    let received = 0;
    let mismatches = 0;
    let closeSent = false;
    let errored = false;
    let done = false;
    let ws;

    const finish = (ok) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(ok);
    };

    const timer = setTimeout(() => {
      const phase = !ws || ws.readyState === WS.CONNECTING ? 'handshake' : (closeSent ? 'close' : 'echo');
      errored = true;
      c.emit(Object.assign({ event: 'error', message: `timeout after ${opts.timeout}s waiting for ${phase}`, timeout: true }, tag));
      try { ws && ws.terminate(); } catch (e) { /* ignore */ }
      finish(false);
    }, opts.timeout * 1000);

    const onOpen = () => {
      c.emit(Object.assign({ event: 'open', protocol: ws.protocol || null }, tag));
      try {
        for (const m of expected) {
          ws.send(m.data, { binary: m.type === 'binary' }, (err) => {
            if (err) c.emit(Object.assign(c.errorEvent(err), tag));
          });
        }
      } catch (e) {
        c.emit(Object.assign(c.errorEvent(e), tag));
        finish(false);
      }
    };

    try {
      if (opts.protocol) {
        // relayedConnect cannot offer a subprotocol: construct the re-exported ws 1.1.5 client directly.
        const options = placed.headerToken ? { headers: { ServiceBusAuthorization: placed.headerToken } } : {};
        ws = new WS(placed.uri, opts.protocol, options);
        ws.on('open', onOpen);
      } else {
        // null (not '') when there is no header token: relayedConnect sends the header whenever token != null.
        ws = WS.relayedConnect(placed.uri, placed.headerToken || null, onOpen);
      }
    } catch (e) {
      c.emit(Object.assign(c.errorEvent(e), tag));
      finish(false);
      return;
    }

    ws.on('message', (data, flags) => {
      const binary = !!(flags && flags.binary);
      const type = binary ? 'binary' : 'text';
      const ev = Object.assign({ event: 'echo', type, len: binary ? data.length : Buffer.byteLength(data) }, tag);
      ev.data = binary ? c.hexPrefix(data, 32) : String(data);
      const exp = expected[received];
      let match = false;
      if (exp && exp.type === type) {
        match = binary ? Buffer.compare(Buffer.from(data), exp.data) === 0 : String(data) === exp.data;
      }
      ev.match = match;
      if (!match) mismatches++;
      received++;
      c.emit(ev);
      if (received === expected.length && !closeSent) {
        closeSent = true;
        try {
          ws.close(opts.closeCode, opts.closeReason);
        } catch (e) {
          c.emit(Object.assign(c.errorEvent(e), tag));
          finish(false);
        }
      }
    });

    ws.on('error', (err) => {
      errored = true;
      c.emit(Object.assign(c.errorEvent(err), tag));
      // ws 1.1.5 may emit 'close' right after 'error'; let that line through first.
      setImmediate(() => finish(false));
    });

    ws.on('close', (code, reason) => {
      reason = reason === undefined ? '' : String(reason);
      c.emit(Object.assign({ event: 'close', code, reason, byPeer: !closeSent }, tag));
      let ok;
      if (opts.expectClose !== null) {
        ok = code === opts.expectClose && mismatches === 0;
      } else {
        ok = closeSent && received === expected.length && mismatches === 0 && code === opts.closeCode;
      }
      if (!ok && errored) {
        // already reported
      } else if (!ok && received !== expected.length && opts.expectClose === null) {
        c.emit(Object.assign({ event: 'error', message: `closed after ${received} of ${expected.length} echoes` }, tag));
      } else if (!ok && mismatches) {
        c.emit(Object.assign({ event: 'error', message: `${mismatches} echo mismatch(es)` }, tag));
      } else if (!ok) {
        c.emit(Object.assign({ event: 'error', message: `unexpected close code ${code}` }, tag));
      }
      finish(ok);
    });
  });
}

(async () => {
  let exitCode;
  if (!multi) {
    exitCode = (await runOne(1)) ? 0 : 2;
  } else {
    const results = await Promise.all(Array.from({ length: opts.concurrency }, (_, i) => runOne(i + 1)));
    const ok = results.filter(Boolean).length;
    c.emit({ event: 'summary', ok, failed: results.length - ok });
    exitCode = ok === results.length ? 0 : 2;
  }
  c.emit({ event: 'exit', code: exitCode });
  process.exit(exitCode);
})();

process.on('SIGINT', () => { c.emit({ event: 'exit', code: 130 }); process.exit(130); });
process.on('SIGTERM', () => { c.emit({ event: 'exit', code: 143 }); process.exit(143); });
