// SAS tokens and connection strings, computed in the browser (spec §5; protocol/sas.py build_token).
// The key never leaves the page: only tokens signed with it are sent.
"use strict";

(function (global) {
  const encoder = new TextEncoder();

  // --- SHA-256 and HMAC in plain JS -------------------------------------------------------------
  // WebCrypto exists only in secure contexts (https, localhost). A relay reached over plain http on
  // a LAN address still deserves a working dashboard, so this fallback signs there.
  function firstPrimes(count) {
    const primes = [];
    for (let n = 2; primes.length < count; n++) {
      if (primes.every((p) => n % p !== 0)) primes.push(n);
    }
    return primes;
  }
  function fractionBits(x) {
    return ((x - Math.floor(x)) * 4294967296) >>> 0;
  }
  const PRIMES = firstPrimes(64);
  const K = Uint32Array.from(PRIMES, (p) => fractionBits(Math.cbrt(p)));
  const H0 = Uint32Array.from(PRIMES.slice(0, 8), (p) => fractionBits(Math.sqrt(p)));

  function ror(x, n) {
    return (x >>> n) | (x << (32 - n));
  }

  function sha256(bytes) {
    const length = bytes.length;
    const padded = new Uint8Array(((length + 9 + 63) >> 6) << 6);
    padded.set(bytes);
    padded[length] = 0x80;
    const view = new DataView(padded.buffer);
    view.setUint32(padded.length - 8, Math.floor(length / 0x20000000));
    view.setUint32(padded.length - 4, (length << 3) >>> 0);
    const h = Uint32Array.from(H0);
    const w = new Uint32Array(64);
    for (let offset = 0; offset < padded.length; offset += 64) {
      for (let i = 0; i < 16; i++) w[i] = view.getUint32(offset + 4 * i);
      for (let i = 16; i < 64; i++) {
        const s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >>> 3);
        const s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >>> 10);
        w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
      }
      let [a, b, c, d, e, f, g, hh] = h;
      for (let i = 0; i < 64; i++) {
        const t1 = (hh + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i]) | 0;
        const t2 = ((ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
        hh = g; g = f; f = e; e = (d + t1) | 0;
        d = c; c = b; b = a; a = (t1 + t2) | 0;
      }
      h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
    }
    const out = new Uint8Array(32);
    const outView = new DataView(out.buffer);
    h.forEach((word, i) => outView.setUint32(4 * i, word));
    return out;
  }

  function hmacSha256Fallback(keyBytes, data) {
    let key = keyBytes.length > 64 ? sha256(keyBytes) : keyBytes;
    const block = new Uint8Array(64);
    block.set(key);
    const inner = new Uint8Array(64 + data.length);
    const outer = new Uint8Array(64 + 32);
    for (let i = 0; i < 64; i++) {
      inner[i] = block[i] ^ 0x36;
      outer[i] = block[i] ^ 0x5c;
    }
    inner.set(data, 64);
    outer.set(sha256(inner), 64);
    return sha256(outer);
  }

  async function hmacSha256(keyText, message) {
    // The key is the Base64 *text* of the rule key, used as UTF-8 bytes, never decoded (spec §5.2).
    const keyBytes = encoder.encode(keyText);
    const data = encoder.encode(message);
    if (global.crypto && global.crypto.subtle) {
      const key = await global.crypto.subtle.importKey("raw", keyBytes, { name: "HMAC", hash: "SHA-256" },
        false, ["sign"]);
      return new Uint8Array(await global.crypto.subtle.sign("HMAC", key, data));
    }
    return hmacSha256Fallback(keyBytes, data);
  }

  function base64(bytes) {
    let text = "";
    for (const b of bytes) text += String.fromCharCode(b);
    return btoa(text);
  }

  /** `SharedAccessSignature sr=..&sig=..&se=..&skn=..` for audience, valid ttlSeconds from now. */
  async function buildToken(audience, keyName, key, ttlSeconds) {
    const sr = encodeURIComponent(audience);
    const se = String(Math.floor(Date.now() / 1000) + ttlSeconds);
    const sig = base64(await hmacSha256(key, sr + "\n" + se));
    return `SharedAccessSignature sr=${sr}&sig=${encodeURIComponent(sig)}&se=${se}&skn=${encodeURIComponent(keyName)}`;
  }

  /** Endpoint, key name, key and entity path of a connection string (keys case-insensitive). */
  function parseConnectionString(text) {
    const fields = {};
    for (const piece of text.trim().split(";")) {
      const at = piece.indexOf("=");
      if (at > 0) fields[piece.slice(0, at).trim().toLowerCase()] = piece.slice(at + 1).trim();
    }
    return {
      endpoint: fields.endpoint || "",
      keyName: fields.sharedaccesskeyname || "",
      key: fields.sharedaccesskey || "",
      entityPath: fields.entitypath || "",
    };
  }

  global.HyrelaySas = { buildToken, parseConnectionString, hmacSha256, hmacSha256Fallback, sha256, base64 };
})(window);
