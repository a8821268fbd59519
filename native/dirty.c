// A persistent bitmap of volume chunks that may differ between two copies (an activity
// log, as DRBD keeps). On the agent, a chunk's bit is durable before any write to it leaves
// the agent, so after a crash, a gateway crash, or writes made while the gateway was away,
// exactly the set chunks are resent. A site's sender keeps one of the chunks it skipped.
// File: a 64-byte text header "CNDM1 <volume size> <chunk>\n", then one bit per chunk.
#include "dirty.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEADER 64
#define PAGE 4096

static void set_range(uint8_t *bits, uint64_t first, uint64_t last) {
  for (uint64_t c = first; c <= last; c++) bits[c >> 3] |= (uint8_t)(1u << (c & 7));
}

static void page_touched(cn_dirty *d, uint64_t byte) {
  uint64_t page = (HEADER + byte) / PAGE;
  d->pages[page >> 3] |= (uint8_t)(1u << (page & 7));
}

int dirty_open(const char *path, uint64_t volume_size, uint64_t chunk, cn_dirty **out, bool *fresh, char *err,
               size_t errcap) {
  if (chunk == 0 || volume_size == 0) {
    snprintf(err, errcap, "dirty map %s: empty volume or chunk", path);
    return -EINVAL;
  }
  cn_dirty *d = calloc(1, sizeof *d);
  if (!d) return -ENOMEM;
  d->chunk = chunk;
  d->volume_size = volume_size;
  d->chunks = (volume_size + chunk - 1) / chunk;
  d->bytes = (d->chunks + 7) / 8;
  uint64_t npages = (HEADER + d->bytes + PAGE - 1) / PAGE;
  d->bits = calloc(1, d->bytes);
  d->durable = calloc(1, d->bytes);
  d->snapshot = calloc(1, d->bytes);
  d->pages = calloc(1, (npages + 7) / 8);
  d->pages_snap = calloc(1, (npages + 7) / 8);
  d->fd = -1;
  pthread_mutex_init(&d->mu, NULL);
  pthread_mutex_init(&d->persist_mu, NULL);
  if (!d->bits || !d->durable || !d->snapshot || !d->pages || !d->pages_snap) {
    dirty_free(d);
    return -ENOMEM;
  }
  char header[HEADER];
  memset(header, 0, sizeof header);
  snprintf(header, sizeof header, "CNDM1 %llu %llu\n", (unsigned long long)volume_size, (unsigned long long)chunk);
  size_t hlen = strlen(header);
  d->fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (d->fd < 0) {
    int e = errno;
    snprintf(err, errcap, "dirty map %s: %s", path, strerror(e));
    dirty_free(d);
    return -e;
  }
  struct stat st;
  fstat(d->fd, &st);
  bool matches = false;
  if ((uint64_t)st.st_size == HEADER + d->bytes) {
    char have[HEADER];
    if (io_pread(d->fd, (uint8_t *)have, HEADER, 0) == HEADER && memcmp(have, header, hlen) == 0 &&
        io_pread(d->fd, d->bits, d->bytes, HEADER) == (int64_t)d->bytes) {
      matches = true;
    }
  }
  if (!matches) {
    // missing, unreadable, or made for another volume: nothing proves the copies agree
    memset(d->bits, 0, d->bytes);
    set_range(d->bits, 0, d->chunks - 1);
    int64_t r = ftruncate(d->fd, (off_t)(HEADER + d->bytes)) < 0 ? -errno : 0;
    if (r == 0) r = io_pwrite(d->fd, (const uint8_t *)header, HEADER, 0);
    if (r >= 0) r = io_pwrite(d->fd, d->bits, d->bytes, HEADER);
    if (r >= 0 && fdatasync(d->fd) < 0) r = -errno;
    if (r < 0) {
      snprintf(err, errcap, "dirty map %s: %s", path, strerror((int)-r));
      dirty_free(d);
      return (int)r;
    }
  }
  memcpy(d->durable, d->bits, d->bytes);
  *fresh = !matches;
  *out = d;
  return 0;
}

void dirty_free(cn_dirty *d) {
  if (!d) return;
  if (d->fd >= 0) close(d->fd);
  free(d->bits);
  free(d->durable);
  free(d->snapshot);
  free(d->pages);
  free(d->pages_snap);
  pthread_mutex_destroy(&d->mu);
  pthread_mutex_destroy(&d->persist_mu);
  free(d);
}

void dirty_range(const cn_dirty *d, uint64_t offset, uint64_t length, uint64_t *first, uint64_t *last) {
  *first = offset / d->chunk;
  *last = length == 0 ? *first : (offset + length - 1) / d->chunk;
  if (*last >= d->chunks) *last = d->chunks - 1;
  if (*first > *last) *first = *last;
}

/** With d->mu held: sets a chunk; returns whether it still has to be made durable. */
static bool set_chunk_locked(cn_dirty *d, uint64_t c) {
  uint64_t i = c >> 3;
  uint8_t m = (uint8_t)(1u << (c & 7));
  if (!(d->bits[i] & m)) {
    d->bits[i] |= m;
    page_touched(d, i);
  }
  return !(d->durable[i] & m);
}

uint64_t dirty_mark(cn_dirty *d, uint64_t offset, uint64_t length) {
  uint64_t first, last;
  dirty_range(d, offset, length, &first, &last);
  pthread_mutex_lock(&d->mu);
  bool needed = false;
  for (uint64_t c = first; c <= last; c++) needed |= set_chunk_locked(d, c);
  uint64_t gen = 0;
  if (needed) gen = ++d->changes;
  pthread_mutex_unlock(&d->mu);
  return gen;
}

uint64_t dirty_mark_all(cn_dirty *d) {
  pthread_mutex_lock(&d->mu);
  set_range(d->bits, 0, d->chunks - 1);
  for (uint64_t i = 0; i < d->bytes; i += PAGE) page_touched(d, i);
  page_touched(d, d->bytes - 1);
  uint64_t gen = ++d->changes;
  pthread_mutex_unlock(&d->mu);
  return gen;
}

void dirty_clear_chunk_locked(cn_dirty *d, uint64_t c) {
  uint64_t i = c >> 3;
  uint8_t m = (uint8_t)(1u << (c & 7));
  if (d->bits[i] & m) {
    d->bits[i] &= (uint8_t)~m;
    page_touched(d, i);
    d->cleared = true;
  }
  // from now on a write to c must wait for a persist that sets it again
  d->durable[i] &= (uint8_t)~m;
}

uint64_t dirty_clear_done(cn_dirty *d) {
  if (!d->cleared) return 0;
  d->cleared = false;
  return ++d->changes;
}

bool dirty_is_set(const cn_dirty *d, uint64_t c) { return (d->bits[c >> 3] >> (c & 7)) & 1; }

uint64_t dirty_count(cn_dirty *d) {
  pthread_mutex_lock(&d->mu);
  uint64_t n = 0;
  for (uint64_t i = 0; i < d->bytes; i++) n += (uint64_t)__builtin_popcount(d->bits[i]);
  pthread_mutex_unlock(&d->mu);
  return n;
}

uint64_t dirty_next_set(cn_dirty *d, uint64_t from) {
  pthread_mutex_lock(&d->mu);
  uint64_t c = from;
  while (c < d->chunks) {
    if ((c & 7) == 0 && d->bits[c >> 3] == 0) {
      c += 8;
      continue;
    }
    if (dirty_is_set(d, c)) break;
    c++;
  }
  pthread_mutex_unlock(&d->mu);
  return c < d->chunks ? c : UINT64_MAX;
}

static int persist_locked(cn_dirty *d);

int dirty_persist(cn_dirty *d) {
  pthread_mutex_lock(&d->persist_mu);
  int r = persist_locked(d);
  pthread_mutex_unlock(&d->persist_mu);
  return r;
}

static int persist_locked(cn_dirty *d) {
  pthread_mutex_lock(&d->mu);
  if (d->persisted >= d->changes) {
    pthread_mutex_unlock(&d->mu);
    return 0;
  }
  if (d->failure) {
    pthread_mutex_unlock(&d->mu);
    return d->failure;
  }
  uint64_t gen = d->changes;
  memcpy(d->snapshot, d->bits, d->bytes);
  uint64_t npages = (HEADER + d->bytes + PAGE - 1) / PAGE;
  uint8_t *pages = d->pages_snap;
  memcpy(pages, d->pages, (npages + 7) / 8);
  memset(d->pages, 0, (npages + 7) / 8);
  pthread_mutex_unlock(&d->mu);
  int64_t r = 0;
  for (uint64_t p = 0; p < npages && r >= 0; p++) {
    if (!((pages[p >> 3] >> (p & 7)) & 1)) continue;
    // the page's bytes of the bitmap (the first page starts after the header)
    uint64_t from = p == 0 ? 0 : p * PAGE - HEADER;
    uint64_t to = MIN(d->bytes, (p + 1) * PAGE - HEADER);
    r = io_pwrite(d->fd, d->snapshot + from, to - from, HEADER + from);
  }
  if (r >= 0 && fdatasync(d->fd) < 0) r = -errno;
  pthread_mutex_lock(&d->mu);
  if (r < 0) {
    // pages not written stay to be written; the failure is reported to every later mark
    for (uint64_t i = 0; i < (npages + 7) / 8; i++) d->pages[i] |= pages[i];
    d->failure = (int)r;
  } else {
    for (uint64_t i = 0; i < d->bytes; i++) d->durable[i] |= d->snapshot[i] & d->bits[i];
    d->persisted = gen;
  }
  pthread_mutex_unlock(&d->mu);
  return (int)MIN(r, 0);
}

// ---- the blocking API for TypeScript (a site's missed chunks) ----

EXPORT cn_dirty *cn_dirty_open(const char *path, uint64_t volume_size, uint64_t chunk, int32_t *fresh, char *err,
                               uint64_t errcap) {
  cn_dirty *d = NULL;
  bool f = false;
  if (dirty_open(path, volume_size, chunk, &d, &f, err, errcap) < 0) return NULL;
  *fresh = f;
  return d;
}

EXPORT int32_t cn_dirty_mark(cn_dirty *d, uint64_t offset, uint64_t length) {
  if (dirty_mark(d, offset, length) == 0) return 0; // set and durable already
  int r = dirty_persist(d);
  return r < 0 ? r : 1;
}

EXPORT int32_t cn_dirty_mark_all(cn_dirty *d) {
  dirty_mark_all(d);
  int r = dirty_persist(d);
  return r < 0 ? r : 1;
}

EXPORT int32_t cn_dirty_mark_chunks(cn_dirty *d, const uint32_t *chunks, uint32_t count) {
  pthread_mutex_lock(&d->mu);
  bool needed = false;
  for (uint32_t k = 0; k < count; k++) {
    if (chunks[k] < d->chunks) needed |= set_chunk_locked(d, chunks[k]);
  }
  if (needed) ++d->changes;
  pthread_mutex_unlock(&d->mu);
  if (!needed) return 0;
  // one write for the whole list: a snapshot of thousands of chunks costs one fdatasync
  int r = dirty_persist(d);
  return r < 0 ? r : 1;
}

EXPORT int32_t cn_dirty_clear(cn_dirty *d, const uint32_t *chunks, uint32_t count) {
  pthread_mutex_lock(&d->mu);
  for (uint32_t i = 0; i < count; i++) {
    if (chunks[i] < d->chunks) dirty_clear_chunk_locked(d, chunks[i]);
  }
  dirty_clear_done(d);
  pthread_mutex_unlock(&d->mu);
  return dirty_persist(d);
}

EXPORT int64_t cn_dirty_bits(cn_dirty *d, uint8_t *out, uint64_t cap) {
  pthread_mutex_lock(&d->mu);
  memcpy(out, d->bits, MIN(cap, d->bytes));
  pthread_mutex_unlock(&d->mu);
  return (int64_t)dirty_count(d);
}

EXPORT void cn_dirty_close(cn_dirty *d) { dirty_free(d); }
