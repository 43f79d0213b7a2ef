'use strict';
// hyco-https 1.4.5 HTTP listener for the hyrelay interop tests. See README.md.
const crypto = require('crypto');
const { Readable } = require('stream');
const https = require('hyco-https');
const moment = require('moment'); // installed at top level by the two libraries (no direct dependency)
const c = require('./common');

c.installCrashHandler();

let args, opts;
try {
  args = c.parseArgs(process.argv.slice(2));
  opts = c.commonOptions(args);
  opts.exitOnError = c.flag(args, 'exitOnError', true);
  opts.keepAlive = 'keepAlive' in args ? Number(args.keepAlive) : null;
  if (opts.keepAlive !== null && !(opts.keepAlive > 0)) throw new Error('--keepAlive must be > 0 seconds');
  opts.renewAfter = 'renewAfter' in args ? Number(args.renewAfter) : null;
} catch (e) {
  c.emit({ event: 'usage', message: e.message });
  process.exit(64);
}

const listenUri = c.hcUri(opts.relay, opts.path, '', 'listen');
const makeToken = (uri) => https.createRelayToken(uri, opts.keyrule, opts.key, opts.expiry);
const placed = c.placeToken(listenUri, opts, makeToken);
const tokenOption = placed.mode === 'header' ? () => makeToken(listenUri) : '';

c.emit({ event: 'start', role: 'https-listener', uri: placed.uri, token: placed.mode, keepAlive: opts.keepAlive });

let stopping = false;
let reqSeq = 0;
let channelSeq = 0;
let renewScheduled = false;

const serverOptions = { server: placed.uri, token: tokenOption };
if (opts.keepAlive !== null) serverOptions.keepAliveTimeout = moment.duration(opts.keepAlive, 'seconds');

const server = https.createRelayedServer(serverOptions, onRequest);

server.on('listening', () => {
  c.emit({ event: 'listening' });
  if (opts.renewAfter !== null && !renewScheduled) {
    renewScheduled = true;
    setTimeout(sendRenew, Math.max(0, opts.renewAfter * 1000));
  }
});

// hyco-https emits 'error' only when a handler is attached.
server.on('error', (err) => {
  if (stopping) return;
  c.emit(c.errorEvent(err, { scope: 'control' }));
  if (opts.exitOnError) stop(2);
});

server.on('close', () => c.emit({ event: 'closed' }));

// A relay-initiated request rendezvous has opened (request without `method` on the control channel).
server.on('requestchannel', (channel) => {
  const channelId = ++channelSeq;
  c.emit({ event: 'requestchannel', channel: channelId, url: channel.url });
  channel.on('close', (code, reason) => {
    c.emit({ event: 'requestchannelClose', channel: channelId, code, reason: reason === undefined ? '' : String(reason) });
  });
});

function sendRenew() {
  const token = placed.mode === 'none' ? '' : makeToken(listenUri);
  try {
    server.controlChannel.send(JSON.stringify({ renewToken: { token } }), (err) => {
      if (err) c.emit(c.errorEvent(err, { scope: 'renew' }));
      else c.emit({ event: 'renewSent' });
    });
  } catch (e) {
    c.emit(c.errorEvent(e, { scope: 'renew' }));
  }
}

function pattern(n) {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = i & 0xff;
  return b;
}

// Split buf into k roughly equal pieces (k >= 1).
function pieces(buf, k) {
  const out = [];
  const step = Math.max(1, Math.ceil(buf.length / k));
  for (let i = 0; i < buf.length; i += step) out.push(buf.subarray(i, i + step));
  while (out.length < k) out.push(Buffer.alloc(0));
  return out;
}

// Send `body` according to the query: writes=K (K write() calls, then end()), pipe=1 (stream.pipe),
// otherwise a single end(body). HEAD gets no body unless headBody=1.
function sendBody(req, res, q, body) {
  if (req.method === 'HEAD' && q.get('headBody') !== '1') {
    res.end();
    return;
  }
  if (q.get('pipe') === '1') {
    Readable.from(pieces(body, 8)).pipe(res);
    return;
  }
  const writes = Number(q.get('writes') || 0);
  if (writes > 0) {
    for (const p of pieces(body, writes)) {
      if (p.length) res.write(p);
    }
    res.end();
    return;
  }
  // hyco-https sends nothing at all for end(<empty Buffer>) (an empty Buffer is truthy there);
  // an empty body is ended the way the package's own tests do it.
  if (body.length === 0) res.end();
  else res.end(body);
}

function onRequest(req, res) {
  const id = ++reqSeq;
  const chunks = [];
  req.on('data', (chunk) => chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk)));
  req.on('error', (err) => c.emit(c.errorEvent(err, { scope: 'request', req: id })));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    const bodySha256 = crypto.createHash('sha256').update(body).digest('hex');
    c.emit({ event: 'request', req: id, method: req.method, url: req.url, bodyLen: body.length, bodySha256 });

    let q;
    try {
      q = new URL(req.url, 'http://listener.invalid').searchParams;
    } catch (e) {
      q = new URLSearchParams();
    }

    const respond = () => {
      try {
        const status = Number(q.get('status') || 200);
        const reason = q.get('reason');
        const headers = { 'X-Echo-Method': req.method, 'X-Echo-Request': String(id) };
        let out;
        if (status === 204 || status === 304 || (status >= 100 && status < 200)) {
          out = null;
        } else if (q.get('echoBody') === '1') {
          headers['Content-Type'] = 'application/octet-stream';
          out = body;
        } else if (q.has('size')) {
          headers['Content-Type'] = 'application/octet-stream';
          out = pattern(Math.max(0, Number(q.get('size')) || 0));
        } else {
          headers['Content-Type'] = 'application/json';
          out = Buffer.from(JSON.stringify({
            method: req.method,
            url: req.url,
            headers: req.headers,
            bodyLen: body.length,
            bodySha256,
            bodyHead: body.subarray(0, 64).toString('utf8'),
            bodyHeadHex: body.subarray(0, 32).toString('hex'),
          }));
        }
        if (reason) res.writeHead(status, reason, headers);
        else res.writeHead(status, headers);
        if (out === null) res.end();
        else sendBody(req, res, q, out);
        c.emit({ event: 'response', req: id, status, len: out === null ? 0 : out.length });
      } catch (e) {
        c.emit(c.errorEvent(e, { scope: 'response', req: id }));
      }
    };

    const delay = Number(q.get('delay') || 0);
    if (delay > 0) setTimeout(respond, delay);
    else respond();
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

// Nothing connects before listen(); its arguments are ignored.
server.listen();
