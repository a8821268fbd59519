/**
 * Copies `bytes` after the first `used` bytes of `buf`, moving those into a larger buffer first
 * when they do not fit (twice the size, but not past `doubleUpTo`, or just enough); returns the
 * buffer that holds them all. Kept buffers grown this way stop costing a fresh array per use.
 */
export function appendBytes(
  buf: Uint8Array<ArrayBuffer>,
  used: number,
  bytes: Uint8Array,
  doubleUpTo = Infinity,
): Uint8Array<ArrayBuffer> {
  const need = used + bytes.length;
  if (need > buf.length) {
    const grown = new Uint8Array(Math.max(need, Math.min(doubleUpTo, 2 * buf.length)));
    grown.set(buf.subarray(0, used));
    buf = grown;
  }
  buf.set(bytes, used);
  return buf;
}
