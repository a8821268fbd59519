// Just enough DER (X.690) to write a self-signed certificate and to walk one back
// to its SubjectPublicKeyInfo and subject name. Only low tag numbers (< 31) and
// definite lengths occur in certificates, so nothing else is supported.

/** Bytes backed by a plain ArrayBuffer, as WebCrypto requires. */
export type Bytes = Uint8Array<ArrayBuffer>;

function concat(parts: readonly Uint8Array[]): Bytes {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function encodeLength(n: number): Bytes {
  if (n < 0x80) return Uint8Array.of(n);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return Uint8Array.of(0x80 | bytes.length, ...bytes);
}

/** One element: tag byte, length, contents. */
export function tlv(tag: number, ...contents: Uint8Array[]): Bytes {
  const body = concat(contents);
  return concat([Uint8Array.of(tag), encodeLength(body.length), body]);
}

export const sequence = (...items: Uint8Array[]): Bytes => tlv(0x30, ...items);
export const set = (...items: Uint8Array[]): Bytes => tlv(0x31, ...items);
/** Context-specific, constructed `[n]` (EXPLICIT tagging). */
export const explicit = (n: number, ...items: Uint8Array[]): Bytes => tlv(0xa0 | n, ...items);
export const boolean = (v: boolean): Bytes => tlv(0x01, Uint8Array.of(v ? 0xff : 0x00));
export const octetString = (bytes: Uint8Array): Bytes => tlv(0x04, bytes);
export const utf8String = (s: string): Bytes => tlv(0x0c, new TextEncoder().encode(s));

/** A BIT STRING whose last byte has `unusedBits` padding bits. */
export function bitString(bytes: Uint8Array, unusedBits = 0): Bytes {
  return tlv(0x03, Uint8Array.of(unusedBits), bytes);
}

/** A non-negative INTEGER from its big-endian magnitude (minimal form, sign byte when needed). */
export function unsignedInteger(magnitude: Uint8Array): Bytes {
  let start = 0;
  while (start < magnitude.length - 1 && magnitude[start] === 0) start++;
  const trimmed = magnitude.subarray(start);
  if (trimmed.length === 0) return tlv(0x02, Uint8Array.of(0));
  return trimmed[0] & 0x80 ? tlv(0x02, Uint8Array.of(0), trimmed) : tlv(0x02, trimmed);
}

export function smallInteger(n: number): Bytes {
  if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`not a small non-negative integer: ${n}`);
  const bytes: number[] = [];
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff);
  return unsignedInteger(Uint8Array.from(bytes));
}

export function objectIdentifier(dotted: string): Bytes {
  const arcs = dotted.split(".").map(Number);
  if (arcs.length < 2 || arcs.some((a) => !Number.isSafeInteger(a) || a < 0)) {
    throw new RangeError(`not an object identifier: ${dotted}`);
  }
  const out = [arcs[0] * 40 + arcs[1]];
  for (const arc of arcs.slice(2)) {
    const base128: number[] = [arc & 0x7f];
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) base128.unshift(0x80 | (v & 0x7f));
    out.push(...base128);
  }
  return tlv(0x06, Uint8Array.from(out));
}

/** RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050 on; whole seconds, UTC. */
export function time(date: Date): Bytes {
  const iso = date.toISOString(); // YYYY-MM-DDTHH:MM:SS.sssZ
  const digits = iso.slice(0, 19).replace(/[-T:]/g, "") + "Z";
  const year = date.getUTCFullYear();
  return year < 2050
    ? tlv(0x17, new TextEncoder().encode(digits.slice(2)))
    : tlv(0x18, new TextEncoder().encode(digits));
}

/** A decoded element: `[start, end)` covers the whole element, `[bodyStart, end)` its contents. */
export interface Element {
  tag: number;
  start: number;
  bodyStart: number;
  end: number;
}

export function readElement(buf: Uint8Array, at: number, limit = buf.length): Element {
  if (at + 2 > limit) throw new Error("DER: truncated element");
  const tag = buf[at];
  if ((tag & 0x1f) === 0x1f) throw new Error("DER: high tag numbers are not supported");
  let length = buf[at + 1];
  let bodyStart = at + 2;
  if (length & 0x80) {
    const count = length & 0x7f;
    if (count === 0 || count > 4) throw new Error("DER: unsupported length encoding");
    if (bodyStart + count > limit) throw new Error("DER: truncated length");
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + buf[bodyStart + i];
    bodyStart += count;
  }
  const end = bodyStart + length;
  if (end > limit) throw new Error("DER: element runs past its container");
  return { tag, start: at, bodyStart, end };
}

/** The elements directly inside a constructed element. */
export function children(buf: Uint8Array, parent: Element): Element[] {
  const out: Element[] = [];
  for (let at = parent.bodyStart; at < parent.end;) {
    const e = readElement(buf, at, parent.end);
    out.push(e);
    at = e.end;
  }
  return out;
}

/** A whole buffer that must be exactly one element of the given tag. */
export function readOnly(buf: Uint8Array, tag: number): Element {
  const e = readElement(buf, 0);
  if (e.tag !== tag || e.end !== buf.length) throw new Error("DER: unexpected structure");
  return e;
}
