'use strict';
// hyco-ws 1.0.5 WebSocket listener for the hyrelay interop tests. See README.md.
const WS = require('hyco-ws');
const c = require('./common');

c.installCrashHandler();

let args, opts;
try {
  args = c.parseArgs(process.argv.slice(2));
  opts = c.commonOptions(args);
  opts.exitOnError = c.flag(args, 'exitOnError', true);
  opts.closeWith = c.int(args, 'closeWith', null);
  opts.renewAfter = 'renewAfter' in args ? Number(args.renewAfter) : null;
} catch (e) {
  c.emit({ event: 'usage', message: e.message });
  process.exit(64);
}

const listenUri = c.hcUri(opts.relay, opts.path, '', 'listen');
const makeToken = (uri) => WS.createRelayToken(uri, opts.keyrule, opts.key, opts.expiry);
const placed = c.placeToken(listenUri, opts, makeToken);
// Header mode: a token FUNCTION (called on every (re)connect, hourly renewToken). Otherwise '' = no header.
const tokenOption = placed.mode === 'header' ? () => makeToken(listenUri) : '';

c.emit({ event: 'start', role: 'ws-listener', uri: placed.uri, token: placed.mode });

let stopping = false;
let connSeq = 0;
let renewScheduled = false;

const server = WS.createRelayedServer({ server: placed.uri, token: tokenOption }, onConnection);

server.on('listening', () => {
  c.emit({ event: 'listening' });
  if (opts.renewAfter !== null && !renewScheduled) {
    renewScheduled = true;
    setTimeout(sendRenew, Math.max(0, opts.renewAfter * 1000));
  }
});

server.on('error', (err) => {
  if (stopping) return;
  c.emit(c.errorEvent(err, { scope: 'control' }));
  if (opts.exitOnError) {
    stop(2);
  }
});

server.on('close', () => {
  c.emit({ event: 'closed' });
});

// Send {"renewToken":{"token":...}} at once on the control channel (the library itself only does it hourly).
function sendRenew() {
  const token = placed.mode === 'none' ? '' : makeToken(listenUri);
  const msg = JSON.stringify({ renewToken: { token } });
  try {
    server.controlChannel.send(msg, (err) => {
      if (err) c.emit(c.errorEvent(err, { scope: 'renew' }));
      else c.emit({ event: 'renewSent' });
    });
  } catch (e) {
    c.emit(c.errorEvent(e, { scope: 'renew' }));
  }
}

function onConnection(ws) {
  const conn = ++connSeq;
  let gotFirst = false;
  // The rendezvous socket is still connecting here; ws.url is the accept address.
  c.emit({ event: 'accept', conn, url: ws.url });

  ws.on('error', (err) => {
    c.emit(c.errorEvent(err, { scope: 'rendezvous', conn }));
  });

  ws.on('open', () => {
    c.emit({ event: 'connection', conn, url: ws.url, protocol: ws.protocol || null });
  });

  ws.on('message', (data, flags) => {
    const binary = !!(flags && flags.binary);
    const ev = {
      event: 'message', conn, type: binary ? 'binary' : 'text',
      len: binary ? data.length : Buffer.byteLength(data),
    };
    if (!binary) ev.data = String(data).slice(0, 200);
    else ev.hex = c.hexPrefix(data, 32);
    c.emit(ev);

    if (opts.closeWith !== null) {
      if (!gotFirst) {
        gotFirst = true;
        try {
          ws.close(opts.closeWith, 'bye-from-listener');
          c.emit({ event: 'closing', conn, code: opts.closeWith, reason: 'bye-from-listener' });
        } catch (e) {
          c.emit(c.errorEvent(e, { scope: 'rendezvous', conn }));
        }
      }
      return;
    }
    try {
      ws.send(data, { binary }, (err) => {
        if (err) c.emit(c.errorEvent(err, { scope: 'rendezvous', conn }));
      });
    } catch (e) {
      c.emit(c.errorEvent(e, { scope: 'rendezvous', conn }));
    }
  });

  ws.on('close', (code, reason) => {
    c.emit({ event: 'close', conn, code, reason: reason === undefined ? '' : String(reason) });
  });
}

function stop(exitCode) {
  if (stopping) return;
  stopping = true;
  try {
    server.close(() => {});
  } catch (e) {
    // ignore: we are leaving anyway
  }
  c.emit({ event: 'exit', code: exitCode });
  process.exit(exitCode);
}

process.on('SIGINT', () => stop(0));
process.on('SIGTERM', () => stop(0));
