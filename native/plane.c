// The event plane: one bounded queue per process through which the data plane's threads
// report to TypeScript, read by one blocking call. Messages are laid end to end in a byte
// ring (no allocation per message); state changes are coalesced flags.
#include "internal.h"

#define EV_HEADER 16
/** Room for the largest frame passed through, plus everything around it. */
#define QUEUE_BYTES (96u * 1024 * 1024)
/** A message that does not fit before the ring's end leaves this marker and starts over at 0. */
#define WRAP_MARK 0xffffffffu
/**
 * Flags wait this long for company before they are delivered: a journal committing thousands
 * of times a second then wakes TypeScript a few hundred times, not once a commit.
 */
#define FLAG_COALESCE_NS 3000000

struct cn_plane {
  pthread_mutex_t mu;
  pthread_cond_t readable, writable;
  uint8_t *ring;
  size_t cap, rd, wr, used; // byte offsets; used counts wrap gaps too
  uint32_t flags;
  int64_t flags_at; // when flags were first raised since they were last delivered
  bool woken, closing;
  int log_level;
  uint64_t dropped;
};

EXPORT cn_plane *cn_plane_new(int32_t log_level) {
  cn_plane *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->ring = malloc(QUEUE_BYTES);
  if (!p->ring) {
    free(p);
    return NULL;
  }
  p->cap = QUEUE_BYTES;
  p->log_level = log_level;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->readable, NULL);
  pthread_cond_init(&p->writable, NULL);
  return p;
}

EXPORT void cn_plane_set_log_level(cn_plane *p, int32_t level) {
  __atomic_store_n(&p->log_level, level, __ATOMIC_RELAXED);
}

bool plane_logs(cn_plane *p, int level) { return level >= __atomic_load_n(&p->log_level, __ATOMIC_RELAXED); }

/** Where a message of n bytes goes, or SIZE_MAX when it does not fit now. */
static size_t place(cn_plane *p, size_t n) {
  if (p->used == 0) {
    p->rd = p->wr = 0;
    return n <= p->cap ? 0 : SIZE_MAX;
  }
  if (p->wr > p->rd) {
    if (p->cap - p->wr >= n) return p->wr;
    return p->rd >= n ? 0 : SIZE_MAX; // the tail is skipped: the message starts over at 0
  }
  if (p->wr < p->rd && p->rd - p->wr >= n) return p->wr;
  return SIZE_MAX; // full (wr == rd with bytes queued), or not enough room before rd
}

int plane_post(cn_plane *p, uint16_t type, uint32_t source, uint32_t aux, const void *a, size_t alen,
               const void *b, size_t blen, bool wait) {
  size_t n = (EV_HEADER + alen + blen + 7) & ~(size_t)7;
  if (n > p->cap / 2) return -EMSGSIZE;
  pthread_mutex_lock(&p->mu);
  size_t at;
  while ((at = place(p, n)) == SIZE_MAX) {
    if (!wait || p->closing) {
      p->dropped++;
      pthread_mutex_unlock(&p->mu);
      return -ENOBUFS;
    }
    pthread_cond_wait(&p->writable, &p->mu);
  }
  if (at == 0 && p->wr != 0) {
    // mark the skipped tail so the reader jumps over it
    if (p->cap - p->wr >= 4) put32(p->ring + p->wr, WRAP_MARK);
    p->used += p->cap - p->wr;
  }
  uint8_t *m = p->ring + at;
  put32(m, (uint32_t)(EV_HEADER + alen + blen));
  put16(m + 4, type);
  put16(m + 6, 0);
  put32(m + 8, source);
  put32(m + 12, aux);
  if (alen) memcpy(m + EV_HEADER, a, alen);
  if (blen) memcpy(m + EV_HEADER + alen, b, blen);
  p->wr = at + n;
  p->used += n;
  pthread_cond_signal(&p->readable);
  pthread_mutex_unlock(&p->mu);
  return 0;
}

void plane_flag(cn_plane *p, uint32_t bits) {
  pthread_mutex_lock(&p->mu);
  if (p->flags == 0) {
    p->flags_at = mono_ns();
    pthread_cond_signal(&p->readable); // the reader sleeps until they are due
  }
  p->flags |= bits;
  pthread_mutex_unlock(&p->mu);
}

void plane_log(cn_plane *p, int level, const char *module, const char *msg, const char *fields) {
  if (!plane_logs(p, level)) return;
  size_t ml = strlen(module) + 1, sl = strlen(msg) + 1;
  const char *f = fields ? fields : "{}";
  char head[256];
  if (ml + sl > sizeof head) return;
  memcpy(head, module, ml);
  memcpy(head + ml, msg, sl);
  plane_post(p, CN_EV_LOG, 0, (uint32_t)level, head, ml + sl, f, strlen(f), false);
}

EXPORT int64_t cn_plane_events(cn_plane *p, uint8_t *buf, uint64_t cap, int32_t timeout_ms) {
  pthread_mutex_lock(&p->mu);
  int64_t until_ns = mono_ns() + (int64_t)timeout_ms * 1000000;
  while (p->used == 0 && !p->woken && !p->closing) {
    int64_t now = mono_ns(), wake = until_ns;
    if (p->flags) wake = MIN(wake, p->flags_at + FLAG_COALESCE_NS);
    if (now >= wake) break;
    struct timespec until = deadline_in(0);
    int64_t ns = until.tv_nsec + (wake - now);
    until.tv_sec += ns / 1000000000;
    until.tv_nsec = ns % 1000000000;
    cond_wait_until(&p->readable, &p->mu, &until);
  }
  p->woken = false;
  uint64_t out = 0;
  if (p->flags && cap >= EV_HEADER) {
    uint8_t *m = buf;
    put32(m, EV_HEADER);
    put16(m + 4, CN_EV_FLAGS);
    put16(m + 6, 0);
    put32(m + 8, 0);
    put32(m + 12, p->flags);
    p->flags = 0;
    out = EV_HEADER;
  }
  if (p->dropped && cap - out >= EV_HEADER + 64) {
    char f[64];
    snprintf(f, sizeof f, "{\"dropped\":%llu}", (unsigned long long)p->dropped);
    static const char head[] = "native\0log messages dropped (the event queue was full)";
    size_t hl = sizeof head, fl = strlen(f);
    if (out + EV_HEADER + hl + fl <= cap) {
      uint8_t *m = buf + out;
      put32(m, (uint32_t)(EV_HEADER + hl + fl));
      put16(m + 4, CN_EV_LOG);
      put16(m + 6, 0);
      put32(m + 8, 0);
      put32(m + 12, LOG_WARN);
      memcpy(m + EV_HEADER, head, hl);
      memcpy(m + EV_HEADER + hl, f, fl);
      out += (EV_HEADER + hl + fl + 7) & ~(size_t)7;
      p->dropped = 0;
    }
  }
  bool freed = false;
  int64_t result = 0;
  while (p->used > 0) {
    if (p->cap - p->rd < 4 || get32(p->ring + p->rd) == WRAP_MARK) {
      p->used -= p->cap - p->rd;
      p->rd = 0;
      freed = true;
      continue;
    }
    uint32_t len = get32(p->ring + p->rd);
    size_t n = ((size_t)len + 7) & ~(size_t)7;
    if (out + n > cap) {
      if (out == 0) result = -(int64_t)n;
      break;
    }
    memcpy(buf + out, p->ring + p->rd, len);
    out += n;
    p->rd += n;
    p->used -= n;
    freed = true;
  }
  if (freed) pthread_cond_broadcast(&p->writable);
  pthread_mutex_unlock(&p->mu);
  return result < 0 ? result : (int64_t)out;
}

EXPORT void cn_plane_wake(cn_plane *p) {
  pthread_mutex_lock(&p->mu);
  p->woken = true;
  pthread_cond_broadcast(&p->readable);
  pthread_mutex_unlock(&p->mu);
}

EXPORT void cn_plane_free(cn_plane *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->closing = true;
  pthread_cond_broadcast(&p->writable);
  pthread_cond_broadcast(&p->readable);
  pthread_mutex_unlock(&p->mu);
  free(p->ring);
  pthread_mutex_destroy(&p->mu);
  free(p);
}
