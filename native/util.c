// Clocks, JSON, addresses and sockets, and the record format: the small pieces every
// other file uses.
#include "internal.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <xxhash.h>

// ---- clocks ----

int64_t mono_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

EXPORT int64_t cn_mono_ns(void) { return mono_ns(); }

uint64_t wall_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (uint64_t)t.tv_sec * 1000u + (uint64_t)t.tv_nsec / 1000000u;
}

struct timespec deadline_in(int64_t ms) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  t.tv_sec += ms / 1000;
  t.tv_nsec += (ms % 1000) * 1000000L;
  if (t.tv_nsec >= 1000000000L) {
    t.tv_sec++;
    t.tv_nsec -= 1000000000L;
  }
  return t;
}

// pthread_cond_clockwait names the clock per call: a condition variable needs no clock attribute,
// and a wrapper of pthread_cond_timedwait that assumes CLOCK_REALTIME (libfaketime's, which the
// clock-step tests preload) cannot turn a monotonic deadline into a busy loop.
bool cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, const struct timespec *until) {
  return pthread_cond_clockwait(cv, mu, CLOCK_MONOTONIC, until) != ETIMEDOUT;
}

// ---- JSON ----

void json_begin(json_t *j, char *buf, size_t cap) {
  j->buf = buf;
  j->cap = cap;
  j->len = 0;
  j->first = true;
  if (cap > 1) buf[j->len++] = '{';
  buf[j->len] = 0;
}

static void json_put(json_t *j, const char *s, size_t n) {
  if (j->len + n + 2 > j->cap) n = j->cap > j->len + 2 ? j->cap - j->len - 2 : 0;
  memcpy(j->buf + j->len, s, n);
  j->len += n;
  j->buf[j->len] = 0;
}

static void json_key(json_t *j, const char *key) {
  if (!j->first) json_put(j, ",", 1);
  j->first = false;
  json_put(j, "\"", 1);
  json_put(j, key, strlen(key));
  json_put(j, "\":", 2);
}

static void json_escaped(json_t *j, const char *s, size_t n) {
  json_put(j, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    char esc[8];
    if (c == '"' || c == '\\') {
      esc[0] = '\\';
      esc[1] = (char)c;
      json_put(j, esc, 2);
    } else if (c < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", c);
      json_put(j, esc, 6);
    } else {
      json_put(j, (const char *)&s[i], 1);
    }
  }
  json_put(j, "\"", 1);
}

void json_str(json_t *j, const char *key, const char *value) { json_strn(j, key, value, strlen(value)); }

void json_strn(json_t *j, const char *key, const char *value, size_t n) {
  json_key(j, key);
  json_escaped(j, value, n);
}

void json_int(json_t *j, const char *key, int64_t value) {
  char b[32];
  int n = snprintf(b, sizeof b, "%lld", (long long)value);
  json_key(j, key);
  json_put(j, b, (size_t)n);
}

void json_uint(json_t *j, const char *key, uint64_t value) {
  char b[32];
  int n = snprintf(b, sizeof b, "%llu", (unsigned long long)value);
  json_key(j, key);
  json_put(j, b, (size_t)n);
}

void json_bool(json_t *j, const char *key, bool value) {
  json_key(j, key);
  json_put(j, value ? "true" : "false", value ? 4 : 5);
}

void json_raw(json_t *j, const char *key, const char *value) {
  json_key(j, key);
  json_put(j, value, strlen(value));
}

const char *json_end(json_t *j) {
  if (j->len + 2 <= j->cap) {
    j->buf[j->len++] = '}';
    j->buf[j->len] = 0;
  }
  return j->buf;
}

// A reader for the few flat objects the data plane receives (Opened, Open). It finds
// "key": at the top level by scanning with string and nesting awareness.
static const char *json_find(const char *s, size_t len, const char *key) {
  size_t klen = strlen(key);
  int depth = 0;
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    if (c == '"') {
      size_t start = i + 1, k = start;
      while (k < len && s[k] != '"') k += s[k] == '\\' ? 2 : 1;
      if (k >= len) return NULL;
      size_t after = k + 1;
      while (after < len && (s[after] == ' ' || s[after] == '\t' || s[after] == '\n' || s[after] == '\r')) after++;
      if (depth == 1 && after < len && s[after] == ':' && k - start == klen && memcmp(s + start, key, klen) == 0) {
        after++;
        while (after < len && (s[after] == ' ' || s[after] == '\t' || s[after] == '\n' || s[after] == '\r')) {
          after++;
        }
        return after < len ? s + after : NULL;
      }
      i = k;
    } else if (c == '{' || c == '[') {
      depth++;
    } else if (c == '}' || c == ']') {
      depth--;
    }
  }
  return NULL;
}

bool json_get_num(const char *json, size_t len, const char *key, double *out) {
  const char *v = json_find(json, len, key);
  if (!v) return false;
  char tmp[64];
  size_t n = 0, avail = len - (size_t)(v - json);
  while (n < avail && n < sizeof tmp - 1 && (strchr("0123456789+-.eE", v[n]) != NULL)) {
    tmp[n] = v[n];
    n++;
  }
  if (n == 0) return false;
  tmp[n] = 0;
  char *end;
  *out = strtod(tmp, &end);
  return end == tmp + n;
}

bool json_get_bool(const char *json, size_t len, const char *key, bool *out) {
  const char *v = json_find(json, len, key);
  if (!v) return false;
  size_t avail = len - (size_t)(v - json);
  if (avail >= 4 && memcmp(v, "true", 4) == 0) return *out = true, true;
  if (avail >= 5 && memcmp(v, "false", 5) == 0) return *out = false, true;
  return false;
}

bool json_get_str(const char *json, size_t len, const char *key, char *out, size_t cap) {
  const char *v = json_find(json, len, key);
  if (!v || *v != '"' || cap == 0) return false;
  size_t avail = len - (size_t)(v - json), n = 0;
  for (size_t i = 1; i < avail; i++) {
    char c = v[i];
    if (c == '"') {
      out[n] = 0;
      return true;
    }
    if (c == '\\') {
      if (++i >= avail) return false;
      c = v[i];
      if (c == 'n') c = '\n';
      else if (c == 't') c = '\t';
      else if (c == 'u') { // keep the escape as it is: the values read here are names and messages
        if (n + 1 < cap) out[n++] = '?';
        i += 4;
        continue;
      }
    }
    if (n + 1 < cap) out[n++] = c;
  }
  return false;
}

// ---- addresses and sockets ----

int addr_parse(const char *text, addr_t *out) {
  memset(out, 0, sizeof *out);
  const char *path = NULL;
  if (strncmp(text, "unix:", 5) == 0) path = text + 5;
  else if (text[0] == '/') path = text;
  if (path) {
    if (strlen(path) == 0 || strlen(path) >= sizeof out->path) return -ENAMETOOLONG;
    out->unix_socket = true;
    strcpy(out->path, path);
    return 0;
  }
  const char *colon = strrchr(text, ':');
  if (!colon) return -EINVAL;
  size_t hl = (size_t)(colon - text);
  const char *h = text;
  if (hl >= 2 && text[0] == '[' && text[hl - 1] == ']') {
    h++;
    hl -= 2;
  }
  if (hl >= sizeof out->host) return -EINVAL;
  memcpy(out->host, h, hl);
  out->host[hl] = 0;
  if (hl == 0) strcpy(out->host, "127.0.0.1");
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end || end == colon + 1 || port < 0 || port > 65535) return -EINVAL;
  out->port = (int)port;
  return 0;
}

void addr_format(const addr_t *a, char *out, size_t cap) {
  if (a->unix_socket) snprintf(out, cap, "unix:%s", a->path);
  else if (strchr(a->host, ':')) snprintf(out, cap, "[%s]:%d", a->host, a->port);
  else snprintf(out, cap, "%s:%d", a->host, a->port);
}

static int unix_sockaddr(const char *path, struct sockaddr_un *sa) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  if (strlen(path) >= sizeof sa->sun_path) return -ENAMETOOLONG;
  strcpy(sa->sun_path, path);
  return 0;
}

int sock_connect(const addr_t *a) {
  if (a->unix_socket) {
    struct sockaddr_un sa;
    int r = unix_sockaddr(a->path, &sa);
    if (r < 0) return r;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
      int e = errno;
      close(fd);
      return -e;
    }
    return fd;
  }
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_socktype = SOCK_STREAM;
  char port[8];
  snprintf(port, sizeof port, "%d", a->port);
  int g = getaddrinfo(a->host, port, &hints, &res);
  if (g != 0) return -EHOSTUNREACH;
  int err = -ECONNREFUSED;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      err = -errno;
      continue;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      freeaddrinfo(res);
      return fd;
    }
    err = -errno;
    close(fd);
  }
  freeaddrinfo(res);
  return err;
}

int sock_listen(const addr_t *a, int *port) {
  if (a->unix_socket) {
    struct sockaddr_un sa;
    int r = unix_sockaddr(a->path, &sa);
    if (r < 0) return r;
    // a socket file left by a killed process is replaced; one still served is not
    int probe = sock_connect(a);
    if (probe >= 0) {
      close(probe);
      return -EADDRINUSE;
    }
    unlink(a->path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 128) < 0) {
      int e = errno;
      close(fd);
      return -e;
    }
    if (port) *port = 0;
    return fd;
  }
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  char ps[8];
  snprintf(ps, sizeof ps, "%d", a->port);
  if (getaddrinfo(a->host, ps, &hints, &res) != 0) return -EADDRNOTAVAIL;
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    freeaddrinfo(res);
    return -errno;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, 128) < 0) {
    int e = errno;
    close(fd);
    freeaddrinfo(res);
    return -e;
  }
  freeaddrinfo(res);
  if (port) {
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    *port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                     : ntohs(((struct sockaddr_in *)&ss)->sin_port);
  }
  return fd;
}

int write_full(int fd, const void *buf, size_t len) {
  const uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

int read_full(int fd, void *buf, size_t len) {
  uint8_t *p = buf;
  size_t got = 0;
  while (got < len) {
    ssize_t n = recv(fd, p + got, len - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return got == 0 ? 0 : -EPIPE;
    got += (size_t)n;
  }
  return 1;
}

bool sock_is_unix(int fd) {
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  return getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 && ss.ss_family == AF_UNIX;
}

void sock_peer(int fd, char *out, size_t cap) {
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  if (getpeername(fd, (struct sockaddr *)&ss, &sl) < 0 || ss.ss_family == AF_UNIX) {
    snprintf(out, cap, "unix");
    return;
  }
  char host[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (ss.ss_family == AF_INET) {
    inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof host);
    port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host, sizeof host);
    port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  }
  snprintf(out, cap, "%.46s:%u", host, port & 0xffff);
}

void sock_timeout(int fd, int ms) {
  struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

void rbuf_init(rbuf_t *r, int fd, uint8_t *buf, size_t cap) {
  r->fd = fd;
  r->buf = buf;
  r->cap = cap;
  r->start = r->end = 0;
}

int rbuf_fill(rbuf_t *r, size_t n) {
  if (n > r->cap) return -EMSGSIZE;
  while (r->end - r->start < n) {
    if (r->start > 0 && r->cap - r->start < n) {
      memmove(r->buf, r->buf + r->start, r->end - r->start);
      r->end -= r->start;
      r->start = 0;
    }
    ssize_t got = recv(r->fd, r->buf + r->end, r->cap - r->end, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (got == 0) return r->end == r->start ? 0 : -EPIPE;
    r->end += (size_t)got;
  }
  return 1;
}

int rbuf_read(rbuf_t *r, void *dst, size_t n) {
  size_t from = MIN(n, r->end - r->start);
  memcpy(dst, r->buf + r->start, from);
  rbuf_take(r, from);
  if (from == n) return 1;
  int got = read_full(r->fd, (uint8_t *)dst + from, n - from);
  return got == 1 ? 1 : got == 0 ? -EPIPE : got;
}

int batch_reader_init(batch_reader_t *b, int fd) {
  memset(b, 0, sizeof *b);
  uint8_t *buf = malloc(BATCH_READ_BUFFER);
  if (!buf) return -ENOMEM;
  rbuf_init(&b->r, fd, buf, BATCH_READ_BUFFER);
  return 0;
}

void batch_reader_free(batch_reader_t *b) {
  free(b->r.buf);
  free(b->big);
  memset(b, 0, sizeof *b);
}

int batch_next(batch_reader_t *b, uint32_t max, uint32_t tag, uint8_t lp[4], uint8_t **data, uint32_t *n) {
  rbuf_take(&b->r, b->taken);
  b->taken = 0;
  int f = rbuf_fill(&b->r, 4);
  if (f <= 0) return f;
  memcpy(lp, rbuf_peek(&b->r), 4);
  uint32_t len = get32(lp);
  if (len > max) return -EMSGSIZE;
  *n = len;
  size_t whole = 4 + (size_t)len + tag;
  if (whole <= b->r.cap) {
    f = rbuf_fill(&b->r, whole);
    if (f <= 0) return f == 0 ? -EPIPE : f;
    *data = rbuf_peek(&b->r) + 4;
    b->taken = whole;
    return 1;
  }
  // larger than the buffer: only what was read ahead of it is copied
  rbuf_take(&b->r, 4);
  if (len + tag > b->big_cap) {
    uint8_t *nb = realloc(b->big, len + tag);
    if (!nb) return -ENOMEM;
    b->big = nb;
    b->big_cap = len + tag;
  }
  f = rbuf_read(&b->r, b->big, len + tag);
  if (f < 0) return f;
  *data = b->big;
  return 1;
}

int rbuf_skip(rbuf_t *r, size_t n) {
  while (n > 0) {
    if (r->end == r->start) {
      int f = rbuf_fill(r, 1);
      if (f <= 0) return f == 0 ? -EPIPE : f;
    }
    size_t k = MIN(n, r->end - r->start);
    rbuf_take(r, k);
    n -= k;
  }
  return 1;
}

// ---- records ----

void hash128(const void *data, size_t len, uint8_t out[16]) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits(data, len));
  memcpy(out, c.digest, 16);
}

static uint64_t header_sum(const uint8_t *b) {
  uint8_t h[16];
  hash128(b, REC_O_HSUM, h);
  return get64(h);
}

void rec_seal_header(uint8_t *b, const rec_t *h) {
  put32(b, REC_MAGIC);
  b[REC_O_KIND] = h->kind;
  b[REC_O_FLAGS] = h->flags;
  b[6] = b[7] = 0;
  put32(b + REC_O_VOLUME, h->volume);
  put32(b + REC_O_LENGTH, h->length);
  put64(b + REC_O_SEQ, h->seq);
  put64(b + REC_O_OFFSET, h->offset);
  put64(b + REC_O_TIME, h->time);
  put64(b + REC_O_POS, h->pos);
  put64(b + REC_O_HSUM, header_sum(b));
}

void rec_write_header(uint8_t *b, const rec_t *h) {
  hash128(b + REC_HEADER, rec_payload_len(h->kind, h->length), b + REC_O_SUM);
  rec_seal_header(b, h);
}

void rec_restamp(uint8_t *b, uint32_t volume, uint64_t pos) {
  put32(b + REC_O_VOLUME, volume);
  put64(b + REC_O_POS, pos);
  put64(b + REC_O_HSUM, header_sum(b));
}

const char *rec_decode(const uint8_t *b, size_t len, uint32_t max_length, rec_t *h) {
  if (len < REC_HEADER) return "record header truncated";
  if (get32(b) != REC_MAGIC) return "bad record magic";
  if (get64(b + REC_O_HSUM) != header_sum(b)) return "record header checksum mismatch";
  h->kind = b[REC_O_KIND];
  if (h->kind < K_WRITE || h->kind > K_SYNC_END) return "unknown record kind";
  h->flags = b[REC_O_FLAGS];
  h->volume = get32(b + REC_O_VOLUME);
  h->length = get32(b + REC_O_LENGTH);
  h->seq = get64(b + REC_O_SEQ);
  h->offset = get64(b + REC_O_OFFSET);
  h->time = get64(b + REC_O_TIME);
  h->pos = get64(b + REC_O_POS);
  if (h->kind == K_WRITE && h->length > max_length) return "record length too large";
  return NULL;
}

bool rec_payload_ok(const uint8_t *b, size_t len, const rec_t *h) {
  uint32_t plen = rec_payload_len(h->kind, h->length);
  if (len != REC_HEADER + (size_t)plen) return false;
  uint8_t sum[16];
  hash128(b + REC_HEADER, plen, sum);
  return memcmp(sum, b + REC_O_SUM, 16) == 0;
}

EXPORT int32_t cn_record_check(const uint8_t *b, uint64_t len, uint32_t max_length, uint64_t *out) {
  rec_t h;
  if (rec_decode(b, len, max_length, &h)) return -1;
  out[0] = h.kind;
  out[1] = h.flags;
  out[2] = h.volume;
  out[3] = h.length;
  out[4] = h.seq;
  out[5] = h.offset;
  out[6] = h.time;
  out[7] = h.pos;
  return rec_payload_ok(b, len, &h) ? 0 : -2;
}

int read_small_frame(int fd, uint8_t *type, uint8_t *body, uint32_t cap, uint32_t *len) {
  uint8_t h[FRAME_HEADER];
  int r = read_full(fd, h, sizeof h);
  if (r <= 0) return r == 0 ? -EPIPE : r;
  uint32_t n = get32(h);
  if (n < 1 || n - 1 > cap) return -EMSGSIZE;
  *type = h[4];
  *len = n - 1;
  r = *len ? read_full(fd, body, *len) : 1;
  return r == 1 ? 0 : r == 0 ? -EPIPE : r;
}
