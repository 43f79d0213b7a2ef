'use strict';
// Shared helpers for the hyrelay interop scripts: argument parsing, URI and token building,
// JSON event lines on stdout, error-message/status extraction. No dependencies.

// Parse `--key=value` and bare `--flag` arguments. A key given more than once keeps the last value.
function parseArgs(argv) {
  const args = {};
  for (const arg of argv) {
    if (!arg.startsWith('--')) {
      throw new Error(`unexpected argument ${JSON.stringify(arg)} (expected --key=value)`);
    }
    const eq = arg.indexOf('=');
    if (eq === -1) {
      args[arg.slice(2)] = true;
    } else {
      args[arg.slice(2, eq)] = arg.slice(eq + 1);
    }
  }
  return args;
}

// Boolean option: absent -> dflt; `--x` / `--x=true|1|yes` -> true; `--x=false|0|no` -> false.
function flag(args, name, dflt) {
  if (!(name in args)) return dflt;
  const v = args[name];
  if (v === true) return true;
  const s = String(v).toLowerCase();
  if (s === '' || s === 'true' || s === '1' || s === 'yes') return true;
  if (s === 'false' || s === '0' || s === 'no') return false;
  throw new Error(`--${name} must be true or false, got ${JSON.stringify(v)}`);
}

// Integer option with default.
function int(args, name, dflt) {
  if (!(name in args) || args[name] === true) return dflt;
  const n = Number(args[name]);
  if (!Number.isInteger(n)) throw new Error(`--${name} must be an integer, got ${JSON.stringify(args[name])}`);
  return n;
}

// Options shared by all scripts, with environment fallbacks (RELAY_URL, HC_PATH, SAS_KEY_NAME, SAS_KEY).
function commonOptions(args) {
  const relay = String(args.relay || process.env.RELAY_URL || 'ws://127.0.0.1:9000').replace(/\/+$/, '');
  const path = String(args.path || process.env.HC_PATH || '').replace(/^\/+/, '');
  if (!path) throw new Error('--path (or HC_PATH) is required');
  return {
    relay,
    path,
    keyrule: String(args.keyrule || process.env.SAS_KEY_NAME || 'RootManageSharedAccessKey'),
    key: args.key !== undefined && args.key !== true ? String(args.key) : (process.env.SAS_KEY || ''),
    tokenInQuery: flag(args, 'tokenInQuery', false),
    noToken: flag(args, 'noToken', false),
    // Token lifetime in seconds for createRelayToken. Note: 0 means "default (3600)" inside the library;
    // a negative value makes an already expired token.
    expiry: int(args, 'expiry', 3600),
  };
}

// Normalise a path suffix: '' stays '', '?x=1' stays, 'room7' -> '/room7', '/room7?x=1' stays.
function normSuffix(suffix) {
  if (!suffix || suffix === true) return '';
  suffix = String(suffix);
  if (suffix.startsWith('/') || suffix.startsWith('?')) return suffix;
  return '/' + suffix;
}

// {relay}/$hc/{path}{suffix}?[app-query&]sb-hc-action={action}
function hcUri(relay, path, suffix, action) {
  const base = `${relay}/$hc/${path}${normSuffix(suffix)}`;
  const sep = base.includes('?') ? (base.endsWith('?') || base.endsWith('&') ? '' : '&') : '?';
  return `${base}${sep}sb-hc-action=${action}`;
}

// Decide where the token travels. makeToken(uri) must return a token string for `uri`.
// Returns {uri, headerToken, mode}: headerToken is '' when no header must be sent.
function placeToken(uri, opts, makeToken) {
  if (opts.noToken) return { uri, headerToken: '', mode: 'none' };
  if (opts.tokenInQuery) {
    const token = makeToken(uri);
    return { uri: `${uri}&sb-hc-token=${encodeURIComponent(token)}`, headerToken: '', mode: 'query' };
  }
  return { uri, headerToken: makeToken(uri), mode: 'header' };
}

// One JSON object per line on stdout. Writes to pipes/files are synchronous on Linux.
function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

// ws 1.1.5 emits Error objects and sometimes plain strings; ws 6 hands an ErrorEvent to onerror.
function errorMessage(err) {
  if (err == null) return String(err);
  if (typeof err === 'string') return err;
  if (err.error instanceof Error) return err.error.message;
  if (typeof err.message === 'string') return err.message;
  return String(err);
}

function errorCode(err) {
  if (err && typeof err === 'object') {
    if (err.code) return err.code;
    if (err.error && err.error.code) return err.error.code;
  }
  return undefined;
}

// HTTP status of a refused upgrade: 'unexpected server response (401)' (ws 1.1.5) or
// 'Unexpected server response: 401' (ws 6). null when the message carries none.
function upgradeStatus(message) {
  const m = /unexpected server response(?: \((\d{3})\)|: (\d{3}))/i.exec(message || '');
  return m ? Number(m[1] || m[2]) : null;
}

function errorEvent(err, extra) {
  const message = errorMessage(err);
  const ev = Object.assign({ event: 'error' }, extra || {}, { message });
  const code = errorCode(err);
  if (code) ev.code = code;
  const status = upgradeStatus(message);
  if (status !== null) ev.status = status;
  return ev;
}

// Print uncaught exceptions as a JSON line (plus the stack on stderr) and exit 3, so that a listener
// killed by something the relay sent is easy to recognise.
function installCrashHandler() {
  const onCrash = (err) => {
    try {
      emit({ event: 'crash', name: err && err.name, message: errorMessage(err) });
      process.stderr.write(`${(err && err.stack) || err}\n`);
    } finally {
      process.exit(3);
    }
  };
  process.on('uncaughtException', onCrash);
  process.on('unhandledRejection', onCrash);
}

function hexPrefix(buf, n) {
  return Buffer.from(buf).subarray(0, n).toString('hex');
}

module.exports = {
  parseArgs, flag, int, commonOptions, normSuffix, hcUri, placeToken, emit,
  errorMessage, errorCode, upgradeStatus, errorEvent, installCrashHandler, hexPrefix,
};
