// Positional block I/O, durability, hole punching and XXH3-128 hashing, for the data
// plane's threads and (exported) for TypeScript's own file work: recovery, hashing,
// the standby copy. Every function returns a byte count or 0 on success and -errno on
// failure, so the TypeScript side can turn errors into clear messages.
#include "internal.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

EXPORT int64_t cn_pread(int fd, uint8_t *buf, uint64_t len, uint64_t off) {
  uint64_t done = 0;
  while (done < len) {
    ssize_t n = pread(fd, buf + done, len - done, (off_t)(off + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) break; // end of file: the caller sees a short count
    done += (uint64_t)n;
  }
  return (int64_t)done;
}

EXPORT int64_t cn_pwrite(int fd, const uint8_t *buf, uint64_t len, uint64_t off) {
  uint64_t done = 0;
  while (done < len) {
    ssize_t n = pwrite(fd, buf + done, len - done, (off_t)(off + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    done += (uint64_t)n;
  }
  return (int64_t)done;
}

EXPORT int64_t cn_fdatasync(int fd) {
  return fdatasync(fd) < 0 ? -errno : 0;
}

static int is_blockdev(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 && S_ISBLK(st.st_mode);
}

// Reserves the blocks of [off, off+len) so later writes there cannot fail for
// lack of space (the journal ring is preallocated this way).
EXPORT int64_t cn_allocate(int fd, uint64_t off, uint64_t len) {
  int r = posix_fallocate(fd, (off_t)off, (off_t)len);
  return r == 0 ? 0 : -r;
}

// Reads of what is read once (a synchronisation, a resync) go through a descriptor of their own
// without readahead: with readahead the kernel caches what they read in large folios, which
// POSIX_FADV_DONTNEED cannot drop when they straddle the range, and in ext4 every small write into
// a large folio walks all of its blocks (nbdkit at 11k instead of 100k IOPS after a file was read
// once; a remote gateway's mirror thread mostly in ext4_block_write_begin after a synchronisation
// had read its replica). Opened again, not dup'ed, so that the hint stays off fd (its other readers
// keep their readahead).
int io_open_reader(int fd) {
  char self[64];
  snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
  int rfd = open(self, O_RDONLY | O_CLOEXEC);
  if (rfd < 0) return errno == ENOENT ? -EBADF : -errno; // no such link: fd is not open
  posix_fadvise(rfd, 0, 0, POSIX_FADV_RANDOM);
  return rfd;
}

EXPORT int64_t cn_pread_once(int fd, uint8_t *buf, uint64_t len, uint64_t off) {
  int rfd = io_open_reader(fd);
  if (rfd < 0) return rfd;
  int64_t r = cn_pread(rfd, buf, len, off);
  if (r >= 0) posix_fadvise(rfd, (off_t)off, (off_t)len, POSIX_FADV_DONTNEED);
  close(rfd);
  return r;
}

EXPORT int64_t cn_size(int fd) {
  struct stat st;
  if (fstat(fd, &st) < 0) return -errno;
  if (S_ISBLK(st.st_mode)) {
    uint64_t size = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) < 0) return -errno;
    return (int64_t)size;
  }
  return (int64_t)st.st_size;
}

EXPORT int32_t cn_is_blockdev(int fd) {
  return is_blockdev(fd);
}

// Writes zeroes with plain writes, for files and devices that support nothing better.
static int64_t write_zero_buffers(int fd, uint64_t off, uint64_t len) {
  static const uint8_t zeroes[1 << 16];
  while (len > 0) {
    uint64_t n = len < sizeof zeroes ? len : sizeof zeroes;
    int64_t r = cn_pwrite(fd, zeroes, n, off);
    if (r < 0) return r;
    off += n;
    len -= n;
  }
  return 0;
}

// Discards a range. Reads of a discarded range return zeroes on files and on
// devices that report so; NBD allows TRIM to be a no-op, so EOPNOTSUPP is success.
EXPORT int64_t cn_punch_hole(int fd, uint64_t off, uint64_t len) {
  if (is_blockdev(fd)) {
    uint64_t range[2] = {off, len};
    if (ioctl(fd, BLKDISCARD, &range) < 0 && errno != EOPNOTSUPP) return -errno;
    return 0;
  }
  if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0) {
    if (errno == EOPNOTSUPP) return write_zero_buffers(fd, off, len);
    return -errno;
  }
  return 0;
}

// Makes a range read as zeroes. may_trim allows deallocating it (NBD_CMD_FLAG_NO_HOLE unset).
EXPORT int64_t cn_write_zeroes(int fd, uint64_t off, uint64_t len, uint32_t may_trim) {
  if (is_blockdev(fd)) {
    uint64_t range[2] = {off, len};
    if (ioctl(fd, BLKZEROOUT, &range) == 0) return 0;
    return write_zero_buffers(fd, off, len);
  }
  int mode = may_trim ? (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) : FALLOC_FL_ZERO_RANGE;
  if (fallocate(fd, mode, (off_t)off, (off_t)len) == 0) return 0;
  if (errno != EOPNOTSUPP && errno != EINVAL) return -errno;
  return write_zero_buffers(fd, off, len);
}

// Applies many operations with one call, in the order given, so overlapping
// operations land in sequence order. desc holds (pointer, length, offset, op)
// quadruples; op 0 writes the buffer, 1 discards, 2 writes zeroes, 3 writes zeroes
// allowing deallocation, 4 reads into the buffer. flags bit 0: fdatasync at the end.
EXPORT int64_t cn_apply_batch(int fd, const uint64_t *desc, uint32_t n, uint32_t flags) {
  int64_t total = 0;
  for (uint32_t i = 0; i < n; i++) {
    uint8_t *p = (uint8_t *)(uintptr_t)desc[4 * i];
    uint64_t len = desc[4 * i + 1], off = desc[4 * i + 2];
    int64_t r;
    switch (desc[4 * i + 3]) {
    case 0: r = cn_pwrite(fd, p, len, off); break;
    case 1: r = cn_punch_hole(fd, off, len); break;
    case 2: r = cn_write_zeroes(fd, off, len, 0); break;
    case 3: r = cn_write_zeroes(fd, off, len, 1); break;
    case 4:
      r = cn_pread(fd, p, len, off);
      if (r >= 0 && (uint64_t)r < len) memset(p + r, 0, len - (uint64_t)r);
      break;
    default: return -EINVAL;
    }
    if (r < 0) return r;
    total += r;
  }
  if ((flags & 1) && fdatasync(fd) < 0) return -errno;
  return total;
}

static void put_hash(const void *data, size_t len, uint8_t *out) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits(data, len));
  memcpy(out, c.digest, 16);
}

// XXH3-128 of a memory buffer, big-endian canonical form.
EXPORT void cn_xxh3_128(const uint8_t *buf, uint64_t len, uint8_t *out16) {
  put_hash(buf, len, out16);
}

// Hashes [off, off+len) of a file chunk by chunk into out (16 bytes a chunk).
// The last chunk may be short. Returns the number of chunks hashed.
EXPORT int64_t cn_hash_range(int fd, uint64_t off, uint64_t len, uint64_t chunk, uint8_t *out) {
  if (chunk == 0) return -EINVAL;
  uint8_t *buf = malloc(chunk);
  if (!buf) return -ENOMEM;
  posix_fadvise(fd, (off_t)off, (off_t)len, POSIX_FADV_SEQUENTIAL);
  int64_t count = 0;
  for (uint64_t pos = 0; pos < len; pos += chunk, count++) {
    uint64_t n = len - pos < chunk ? len - pos : chunk;
    int64_t r = cn_pread(fd, buf, n, off + pos);
    if (r < 0) {
      free(buf);
      return r;
    }
    if ((uint64_t)r < n) memset(buf + r, 0, n - (uint64_t)r); // past the end reads as zeroes
    put_hash(buf, n, out + 16 * count);
    posix_fadvise(fd, (off_t)(off + pos), (off_t)n, POSIX_FADV_DONTNEED);
  }
  free(buf);
  return count;
}

int64_t io_pread(int fd, uint8_t *buf, uint64_t len, uint64_t off) { return cn_pread(fd, buf, len, off); }
int64_t io_pwrite(int fd, const uint8_t *buf, uint64_t len, uint64_t off) { return cn_pwrite(fd, buf, len, off); }
int64_t io_punch(int fd, uint64_t off, uint64_t len) { return len == 0 ? 0 : cn_punch_hole(fd, off, len); }
int64_t io_zero(int fd, uint64_t off, uint64_t len, bool may_trim) {
  return len == 0 ? 0 : cn_write_zeroes(fd, off, len, may_trim ? 1 : 0);
}

int64_t io_apply_record(int fd, const uint8_t *rec, const rec_t *h) {
  switch (h->kind) {
  case K_WRITE: return io_pwrite(fd, rec + REC_HEADER, h->length, h->offset);
  case K_TRIM: return io_punch(fd, h->offset, h->length);
  case K_ZERO: return io_zero(fd, h->offset, h->length, (h->flags & RF_MAY_TRIM) != 0);
  default: return 0;
  }
}
