// NBD server: fixed newstyle negotiation (a pure function, fuzzed from TypeScript), then the
// transmission phase with many requests in flight per connection. Each connection has a
// reader thread (requests; payloads of captured writes go straight into the volume's ring;
// reads are answered inline) and a writer thread (replies to writes as they complete,
// coalesced, when the completing thread could not write its reply at once). Exports are plain
// files (standby and test copies) or captured volumes.
#include "nbd.h"
#include "listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define NBDMAGIC 0x4e42444d41474943ull
#define IHAVEOPT 0x49484156454f5054ull
#define REPLY_MAGIC 0x3e889045565a9ull

#define FLAG_FIXED_NEWSTYLE 1
#define FLAG_NO_ZEROES 2
#define TF_HAS_FLAGS 1
#define TF_READ_ONLY 2
#define TF_SEND_FLUSH 4
#define TF_SEND_FUA 8
#define TF_SEND_TRIM 32
#define TF_SEND_WRITE_ZEROES 64
#define TF_CAN_MULTI_CONN 256

enum { OPT_EXPORT_NAME = 1, OPT_ABORT = 2, OPT_LIST = 3, OPT_STARTTLS = 5, OPT_INFO = 6, OPT_GO = 7 };
#define REP_ACK 1u
#define REP_SERVER 2u
#define REP_INFO 3u
#define REP_ERR_UNSUP 0x80000001u
#define REP_ERR_POLICY 0x80000002u
#define REP_ERR_INVALID 0x80000003u
#define REP_ERR_UNKNOWN 0x80000006u
#define REP_ERR_SHUTDOWN 0x80000007u
enum { INFO_EXPORT = 0, INFO_NAME = 1, INFO_DESCRIPTION = 2, INFO_BLOCK_SIZE = 3 };

#define MAX_OPTION_LENGTH (16u * 1024)
#define PREFERRED_BLOCK 4096u
#define MAX_EXPORTS 256
#define NAME_MAX_LEN 4096
#define MAX_IN_FLIGHT 128u
#define WITHDRAW_GRACE_MS 2000
#define HANDSHAKE_TIMEOUT_MS 30000
#define READ_BUFFER (64u * 1024)

// ---- negotiation (pure) ----

typedef struct {
  const char *name, *description;
  uint64_t size;
  bool read_only;
} nbd_info;

typedef struct {
  uint8_t *buf;
  size_t cap, len;
  bool overflow;
} out_t;

static void out_bytes(out_t *o, const void *b, size_t n) {
  if (o->len + n > o->cap) {
    o->overflow = true;
    return;
  }
  if (n == 0) return; // an empty reply body may come as NULL, which memcpy must not see
  memcpy(o->buf + o->len, b, n);
  o->len += n;
}

static uint16_t transmission_flags(const nbd_info *e) {
  uint16_t f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_CAN_MULTI_CONN;
  if (e->read_only) f |= TF_READ_ONLY;
  else f |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES;
  return f;
}

static void option_reply(out_t *o, uint32_t option, uint32_t type, const void *data, size_t len) {
  uint8_t h[20];
  put64(h, REPLY_MAGIC);
  put32(h + 8, option);
  put32(h + 12, type);
  put32(h + 16, (uint32_t)len);
  out_bytes(o, h, 20);
  out_bytes(o, data, len);
}

static void error_reply(out_t *o, uint32_t option, uint32_t type, const char *msg) {
  option_reply(o, option, type, msg, strlen(msg));
}

static bool valid_utf8(const uint8_t *s, size_t n) {
  for (size_t i = 0; i < n;) {
    uint8_t c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t k;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) k = 1, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0) k = 2, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0) k = 3, cp = c & 0x07;
    else return false;
    if (i + k >= n) return false;
    for (size_t j = 1; j <= k; j++) {
      if ((s[i + j] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (s[i + j] & 0x3f);
    }
    // overlong forms, surrogates and values past U+10FFFF are not UTF-8
    if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff)) {
      return false;
    }
    i += k + 1;
  }
  return true;
}

static int find_export(const nbd_info *ex, size_t n, const uint8_t *name, size_t len) {
  for (size_t i = 0; i < n; i++) {
    if (strlen(ex[i].name) == len && memcmp(ex[i].name, name, len) == 0) return (int)i;
  }
  return -1;
}

enum { OUT_SELECTED = 1, OUT_CLOSE = 2 };

/** Why the client's flags end the handshake, or NULL when they are acceptable. */
static const char *client_flags_refused(uint32_t flags) {
  if (flags & ~(uint32_t)(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)) {
    return "unknown client flags (garbage before the handshake?)";
  }
  if (!(flags & FLAG_FIXED_NEWSTYLE)) return "client does not support fixed newstyle negotiation";
  return NULL;
}

/**
 * Answers one option. *outcome gets OUT_SELECTED (transmission starts on *selected once
 * the replies are sent) or OUT_CLOSE (the connection closes; *reason says why).
 */
static void nbd_option(const nbd_info *ex, size_t n, bool no_zeroes, uint32_t option, const uint8_t *data,
                       uint32_t len, out_t *o, int *outcome, int *selected, const char **reason) {
  *outcome = 0;
  switch (option) {
  case OPT_EXPORT_NAME: {
    int i = valid_utf8(data, len) ? find_export(ex, n, data, len) : -1;
    if (i < 0) {
      // NBD_OPT_EXPORT_NAME cannot carry an error: the spec requires closing
      *outcome = OUT_CLOSE;
      *reason = "unknown export";
      return;
    }
    uint8_t b[134];
    memset(b, 0, sizeof b);
    put64(b, ex[i].size);
    put16(b + 8, transmission_flags(&ex[i]));
    out_bytes(o, b, no_zeroes ? 10 : 134);
    *outcome = OUT_SELECTED;
    *selected = i;
    return;
  }
  case OPT_ABORT:
    option_reply(o, option, REP_ACK, NULL, 0);
    *outcome = OUT_CLOSE;
    *reason = "client aborted negotiation";
    return;
  case OPT_LIST:
    if (len != 0) {
      error_reply(o, option, REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
      return;
    }
    for (size_t i = 0; i < n; i++) {
      size_t nl = strlen(ex[i].name);
      uint8_t body[4 + NAME_MAX_LEN];
      put32(body, (uint32_t)nl);
      memcpy(body + 4, ex[i].name, MIN(nl, (size_t)NAME_MAX_LEN));
      option_reply(o, option, REP_SERVER, body, 4 + MIN(nl, (size_t)NAME_MAX_LEN));
    }
    option_reply(o, option, REP_ACK, NULL, 0);
    return;
  case OPT_INFO:
  case OPT_GO: {
    if (len < 6) return error_reply(o, option, REP_ERR_INVALID, "option data too short");
    uint32_t nl = get32(data);
    if ((uint64_t)4 + nl + 2 > len) return error_reply(o, option, REP_ERR_INVALID, "export name length exceeds option data");
    uint16_t count = get16(data + 4 + nl);
    if ((uint64_t)4 + nl + 2 + 2ull * count != len) {
      return error_reply(o, option, REP_ERR_INVALID, "information request count does not match option length");
    }
    if (!valid_utf8(data + 4, nl)) return error_reply(o, option, REP_ERR_INVALID, "export name is not UTF-8");
    int i = find_export(ex, n, data + 4, nl);
    if (i < 0) {
      char msg[NAME_MAX_LEN + 32];
      snprintf(msg, sizeof msg, "unknown export \"%.*s\"", (int)MIN(nl, (uint32_t)NAME_MAX_LEN), data + 4);
      return error_reply(o, option, REP_ERR_UNKNOWN, msg);
    }
    bool want_name = false, want_desc = false;
    for (uint16_t k = 0; k < count; k++) {
      uint16_t t = get16(data + 4 + nl + 2 + 2 * k);
      if (t == INFO_NAME) want_name = true;
      if (t == INFO_DESCRIPTION) want_desc = true;
    }
    uint8_t info[14];
    put16(info, INFO_EXPORT);
    put64(info + 2, ex[i].size);
    put16(info + 10, transmission_flags(&ex[i]));
    option_reply(o, option, REP_INFO, info, 12);
    // block size is always sent: clients that did not ask may still honour it
    put16(info, INFO_BLOCK_SIZE);
    put32(info + 2, 1);
    put32(info + 6, PREFERRED_BLOCK);
    put32(info + 10, MAX_PAYLOAD);
    option_reply(o, option, REP_INFO, info, 14);
    if (want_name) {
      size_t l = strlen(ex[i].name);
      uint8_t b[2 + NAME_MAX_LEN];
      put16(b, INFO_NAME);
      memcpy(b + 2, ex[i].name, MIN(l, (size_t)NAME_MAX_LEN));
      option_reply(o, option, REP_INFO, b, 2 + MIN(l, (size_t)NAME_MAX_LEN));
    }
    if (want_desc && ex[i].description && ex[i].description[0]) {
      size_t l = MIN(strlen(ex[i].description), (size_t)1024);
      uint8_t b[2 + 1024];
      put16(b, INFO_DESCRIPTION);
      memcpy(b + 2, ex[i].description, l);
      option_reply(o, option, REP_INFO, b, 2 + l);
    }
    option_reply(o, option, REP_ACK, NULL, 0);
    if (option == OPT_GO) {
      *outcome = OUT_SELECTED;
      *selected = i;
    }
    return;
  }
  case OPT_STARTTLS:
    return error_reply(o, option, REP_ERR_POLICY, "TLS is not offered on the agent's NBD socket");
  default: {
    char msg[64];
    snprintf(msg, sizeof msg, "option %u is not supported", option);
    return error_reply(o, option, REP_ERR_UNSUP, msg);
  }
  }
}

typedef struct {
  uint16_t flags, type;
  uint64_t handle, offset;
  uint32_t length;
} nbd_req;

/** The NBD error for a request on an export, 0 when it may proceed. */
static uint32_t nbd_validate(const nbd_req *r, uint64_t size, bool read_only) {
  if (r->flags & ~(CMD_FLAG_FUA | CMD_FLAG_NO_HOLE)) return NBD_EINVAL;
  uint32_t past_end = NBD_EINVAL;
  switch (r->type) {
  case CMD_READ:
    if (r->length > MAX_PAYLOAD) return NBD_EINVAL;
    break;
  case CMD_WRITE:
    if (r->length > MAX_PAYLOAD) return NBD_EINVAL;
    past_end = NBD_ENOSPC; // the spec's choice for writes beyond the end
    break;
  case CMD_WRITE_ZEROES:
    past_end = NBD_ENOSPC;
    break;
  case CMD_TRIM:
    break;
  case CMD_FLUSH:
    return r->offset == 0 && r->length == 0 ? 0 : NBD_EINVAL;
  default:
    return NBD_EINVAL;
  }
  if (r->offset > size || r->length > size - r->offset) return past_end;
  if (read_only && r->type != CMD_READ) return NBD_EPERM;
  return 0;
}

static bool decode_request(const uint8_t *b, nbd_req *r) {
  if (get32(b) != NBD_REQUEST_MAGIC) return false;
  r->flags = get16(b + 4);
  r->type = get16(b + 6);
  r->handle = get64(b + 8);
  r->offset = get64(b + 16);
  r->length = get32(b + 24);
  return true;
}

static const char *command_name(uint16_t t) {
  static const char *names[] = {"READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE", "WRITE_ZEROES", "BLOCK_STATUS"};
  return t < 8 ? names[t] : "unknown";
}

// ---- server ----

typedef struct export_s {
  struct export_s *next;
  char name[NAME_MAX_LEN + 1];
  char description[256];
  int fd;
  uint64_t size;
  bool read_only;
  cvol *vol; // a captured volume, or NULL for a plain file
  int conns;
  bool withdrawn;
} export_t;

struct nbd_conn {
  struct nbd_conn *next;
  cn_nbd *srv;
  int fd;
  char peer[64];
  export_t *exp;
  pthread_t reader, writer;
  pthread_mutex_t mu;
  pthread_cond_t wake;   // the writer: replies queued, or the end
  pthread_cond_t budget; // the reader: in-flight room
  pthread_mutex_t wmu;   // socket writes
  uint8_t *replies, *sending;
  uint32_t nreplies;
  uint32_t in_flight;
  uint32_t held; // threads holding replies of it (nbd_hold_replies): the connection stays until they let go
  bool reader_done, write_failed, withdrawn;
  uint8_t rmem[READ_BUFFER];
  uint8_t *readbuf;
  size_t readbuf_cap;
};

struct cn_nbd {
  cn_plane *plane;
  listener_t listeners[2];
  int nl;
  pthread_mutex_t mu;
  pthread_cond_t changed;
  export_t *exports;
  nbd_conn *conns;
  int nconns;
  bool closing;
  // threads of connections that ended, to be joined (a detached thread could still be inside
  // the server's mutex when the server is freed)
  pthread_t *ended;
  int nended, ended_cap;
};

/** Joins the threads of ended connections (with s->mu held; they no longer take it). */
static void reap(cn_nbd *s) {
  for (int i = 0; i < s->nended; i++) pthread_join(s->ended[i], NULL);
  s->nended = 0;
}

static void log_conn(nbd_conn *c, int level, const char *msg, const char *k1, const char *v1) {
  if (!plane_logs(c->srv->plane, level)) return;
  char f[512];
  json_t j;
  json_begin(&j, f, sizeof f);
  json_str(&j, "peer", c->peer);
  if (k1) json_str(&j, k1, v1);
  plane_log(c->srv->plane, level, "nbd", msg, json_end(&j));
}

/** Writes all of iov (with c->wmu held). */
static int conn_write_locked(nbd_conn *c, const struct iovec *iov, int n) {
  int r = 0;
  struct iovec v[4];
  memcpy(v, iov, sizeof(struct iovec) * (size_t)n);
  int i = 0;
  while (i < n && !c->write_failed) {
    struct msghdr m = {.msg_iov = v + i, .msg_iovlen = (size_t)(n - i)};
    ssize_t w = sendmsg(c->fd, &m, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      c->write_failed = true;
      r = -errno;
      break;
    }
    while (i < n && (size_t)w >= v[i].iov_len) w -= (ssize_t)v[i++].iov_len;
    if (i < n) {
      v[i].iov_base = (uint8_t *)v[i].iov_base + w;
      v[i].iov_len -= (size_t)w;
    }
  }
  if (c->write_failed && r == 0) r = -EPIPE;
  return r;
}

static int conn_write(nbd_conn *c, const struct iovec *iov, int n) {
  pthread_mutex_lock(&c->wmu);
  int r = conn_write_locked(c, iov, n);
  pthread_mutex_unlock(&c->wmu);
  return r;
}

static void simple_reply(uint8_t *b, uint32_t error, uint64_t handle) {
  put32(b, NBD_SIMPLE_REPLY_MAGIC);
  put32(b + 4, error);
  put64(b + 8, handle);
}

/** A reply written at once by the reader (errors, plain-file requests). */
static void reply_now(nbd_conn *c, uint64_t handle, uint32_t error) {
  uint8_t b[NBD_REPLY_SIZE];
  simple_reply(b, error, handle);
  struct iovec v = {b, sizeof b};
  conn_write(c, &v, 1);
}

/**
 * A reply written by the thread that completed the request, when no reply waits for the reply
 * thread and the socket takes it at once: waking the reply thread for it would cost a thread
 * switch per write (with the reader's inline writes, +12 % IOPS at queue depth 16). Never
 * blocks: with the socket busy or full it returns false and the reply thread writes it, with
 * those that pile up meanwhile.
 */
static bool reply_inline(nbd_conn *c, uint64_t handle, uint32_t error) {
  if (c->nreplies != 0 || pthread_mutex_trylock(&c->wmu) != 0) return false;
  bool done = false;
  if (!c->write_failed) {
    uint8_t b[NBD_REPLY_SIZE];
    simple_reply(b, error, handle);
    ssize_t w;
    do {
      w = send(c->fd, b, sizeof b, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (w < 0 && errno == EINTR);
    if (w > 0 && w < (ssize_t)sizeof b) {
      // a socket that took part of 16 bytes takes the rest: the reply must not be torn
      struct iovec rest = {b + w, sizeof b - (size_t)w};
      conn_write_locked(c, &rest, 1);
      w = sizeof b;
    }
    if (w == (ssize_t)sizeof b) done = true;
    else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) c->write_failed = true;
  }
  pthread_mutex_unlock(&c->wmu);
  if (done) {
    c->in_flight--;
    pthread_cond_signal(&c->budget);
    if (c->reader_done && c->in_flight == 0) pthread_cond_signal(&c->wake);
  }
  return done;
}

// replies this thread holds back to write each connection's together (nbd_hold_replies)
#define HOLD_CONNS 8
static _Thread_local struct {
  bool on;
  int n;
  nbd_conn *conns[HOLD_CONNS];
} tl_hold;

/** Whether this thread holds c's replies now (with c->mu held). */
static bool holding(nbd_conn *c) {
  if (!tl_hold.on) return false;
  for (int i = 0; i < tl_hold.n; i++) {
    if (tl_hold.conns[i] == c) return true;
  }
  if (tl_hold.n == HOLD_CONNS) return false;
  tl_hold.conns[tl_hold.n++] = c;
  c->held++;
  return true;
}

void nbd_hold_replies(void) { tl_hold.on = true; }

/** Writes c's queued replies in one send when the socket takes them at once, else leaves them to the reply thread. */
static void write_held(nbd_conn *c) {
  pthread_mutex_lock(&c->mu);
  c->held--;
  uint32_t n = c->nreplies, sent = 0;
  if (n > 0 && pthread_mutex_trylock(&c->wmu) == 0) {
    if (!c->write_failed) {
      ssize_t w;
      do {
        w = send(c->fd, c->replies, (size_t)n * NBD_REPLY_SIZE, MSG_NOSIGNAL | MSG_DONTWAIT);
      } while (w < 0 && errno == EINTR);
      if (w > 0) {
        size_t part = (size_t)w % NBD_REPLY_SIZE;
        if (part) {
          // a reply is never torn: the socket took part of it, so it takes the rest
          struct iovec rest = {c->replies + w, NBD_REPLY_SIZE - part};
          conn_write_locked(c, &rest, 1);
          w += (ssize_t)rest.iov_len;
        }
        sent = (uint32_t)((size_t)w / NBD_REPLY_SIZE);
      } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        c->write_failed = true;
      }
    }
    pthread_mutex_unlock(&c->wmu);
  }
  if (sent > 0) {
    memmove(c->replies, c->replies + (size_t)sent * NBD_REPLY_SIZE, (size_t)(n - sent) * NBD_REPLY_SIZE);
    c->nreplies -= sent;
    c->in_flight -= sent;
    pthread_cond_signal(&c->budget);
  }
  if (c->nreplies > 0 || (c->reader_done && c->in_flight == 0 && c->held == 0)) pthread_cond_signal(&c->wake);
  pthread_mutex_unlock(&c->mu);
}

void nbd_release_replies(void) {
  tl_hold.on = false;
  for (int i = 0; i < tl_hold.n; i++) write_held(tl_hold.conns[i]);
  tl_hold.n = 0;
}

void nbd_reply(nbd_conn *c, uint64_t handle, uint32_t error) {
  pthread_mutex_lock(&c->mu);
  if (holding(c)) {
    simple_reply(c->replies + (size_t)c->nreplies * NBD_REPLY_SIZE, error, handle);
    c->nreplies++;
    pthread_mutex_unlock(&c->mu);
    return;
  }
  if (reply_inline(c, handle, error)) {
    pthread_mutex_unlock(&c->mu);
    return;
  }
  simple_reply(c->replies + (size_t)c->nreplies * NBD_REPLY_SIZE, error, handle);
  c->nreplies++;
  pthread_cond_signal(&c->wake);
  pthread_mutex_unlock(&c->mu);
}

static void *writer_main(void *arg) {
  thread_name("cn-nbd-reply");
  nbd_conn *c = arg;
  pthread_mutex_lock(&c->mu);
  for (;;) {
    while (c->nreplies == 0 && !(c->reader_done && c->in_flight == 0 && c->held == 0)) {
      pthread_cond_wait(&c->wake, &c->mu);
    }
    if (c->nreplies == 0) break;
    uint32_t n = c->nreplies;
    uint8_t *b = c->replies;
    c->replies = c->sending;
    c->sending = b;
    c->nreplies = 0;
    // the requests answered here leave room for more
    c->in_flight -= n;
    pthread_cond_signal(&c->budget);
    pthread_mutex_unlock(&c->mu);
    struct iovec v = {b, (size_t)n * NBD_REPLY_SIZE};
    conn_write(c, &v, 1);
    pthread_mutex_lock(&c->mu);
  }
  pthread_mutex_unlock(&c->mu);
  return NULL;
}

static int snapshot_exports(cn_nbd *s, nbd_info *out, export_t **refs) {
  int n = 0;
  for (export_t *e = s->exports; e && n < MAX_EXPORTS; e = e->next) {
    if (e->withdrawn) continue;
    out[n].name = e->name;
    out[n].description = e->description;
    out[n].size = e->size;
    out[n].read_only = e->read_only || (e->vol && capture_readonly(e->vol));
    refs[n++] = e;
  }
  return n;
}

/** Fixed newstyle negotiation; returns the export chosen (held) or NULL. */
static export_t *negotiate(nbd_conn *c, rbuf_t *r) {
  uint8_t greet[18];
  put64(greet, NBDMAGIC);
  put64(greet + 8, IHAVEOPT);
  put16(greet + 16, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
  struct iovec v = {greet, sizeof greet};
  if (conn_write(c, &v, 1) < 0) return NULL;
  if (rbuf_fill(r, 4) <= 0) return NULL;
  uint32_t cflags = get32(rbuf_peek(r));
  rbuf_take(r, 4);
  const char *refused = client_flags_refused(cflags);
  if (refused) {
    log_conn(c, LOG_WARN, "NBD handshake refused", "reason", refused);
    return NULL;
  }
  bool no_zeroes = (cflags & FLAG_NO_ZEROES) != 0;
  uint8_t *data = malloc(MAX_OPTION_LENGTH);
  uint8_t *reply = malloc(1 << 20);
  nbd_info *infos = malloc(sizeof(nbd_info) * MAX_EXPORTS);
  export_t **refs = malloc(sizeof(export_t *) * MAX_EXPORTS);
  export_t *chosen = NULL;
  if (!data || !reply || !infos || !refs) goto done;
  for (;;) {
    if (rbuf_fill(r, 16) <= 0) goto done;
    uint8_t *h = rbuf_peek(r);
    if (get64(h) != IHAVEOPT) {
      log_conn(c, LOG_WARN, "NBD handshake refused", "reason", "bad option magic");
      goto done;
    }
    uint32_t option = get32(h + 8), length = get32(h + 12);
    rbuf_take(r, 16);
    if (length > MAX_OPTION_LENGTH) {
      log_conn(c, LOG_WARN, "NBD handshake refused", "reason", "option length too large");
      goto done;
    }
    if (length && rbuf_read(r, data, length) < 0) goto done;
    out_t o = {reply, 1 << 20, 0, false};
    pthread_mutex_lock(&c->srv->mu);
    if (c->srv->closing) {
      pthread_mutex_unlock(&c->srv->mu);
      error_reply(&o, option, REP_ERR_SHUTDOWN, "server is shutting down");
      struct iovec rv = {o.buf, o.len};
      if (conn_write(c, &rv, 1) < 0) goto done;
      continue;
    }
    int n = snapshot_exports(c->srv, infos, refs);
    int outcome = 0, selected = -1;
    const char *reason = NULL;
    nbd_option(infos, (size_t)n, no_zeroes, option, data, length, &o, &outcome, &selected, &reason);
    if (outcome & OUT_SELECTED) {
      chosen = refs[selected];
      chosen->conns++;
    }
    pthread_mutex_unlock(&c->srv->mu);
    struct iovec rv = {o.buf, o.len};
    if (o.len && conn_write(c, &rv, 1) < 0) {
      if (chosen) {
        pthread_mutex_lock(&c->srv->mu);
        chosen->conns--;
        pthread_cond_broadcast(&c->srv->changed);
        pthread_mutex_unlock(&c->srv->mu);
        chosen = NULL;
      }
      goto done;
    }
    if (outcome & OUT_CLOSE) {
      log_conn(c, LOG_INFO, "NBD negotiation ended", "reason", reason);
      goto done;
    }
    if (chosen) goto done;
  }
done:
  free(data);
  free(reply);
  free(infos);
  free(refs);
  return chosen;
}

/** Sends what the reader's submissions still owe the gateway (before it may wait). */
static void send_owed(nbd_conn *c) {
  if (c->exp->vol) capture_send_owed(c->exp->vol);
}

bool nbd_next_captured(const rbuf_t *r) {
  size_t have = r->end - r->start;
  nbd_req q;
  if (have < NBD_REQUEST_SIZE || !decode_request(r->buf + r->start, &q)) return false;
  if (q.type == CMD_WRITE) return have - NBD_REQUEST_SIZE >= q.length;
  return q.type == CMD_FLUSH || q.type == CMD_TRIM || q.type == CMD_WRITE_ZEROES;
}

/** Waits for room for one more request in flight (payload bytes are bounded by the volume's ring). */
static void take_budget(nbd_conn *c) {
  pthread_mutex_lock(&c->mu);
  if (c->in_flight >= MAX_IN_FLIGHT) {
    // the replies that give room back may wait for what this reader has not sent yet
    pthread_mutex_unlock(&c->mu);
    send_owed(c);
    pthread_mutex_lock(&c->mu);
  }
  while (c->in_flight >= MAX_IN_FLIGHT) pthread_cond_wait(&c->budget, &c->mu);
  c->in_flight++;
  pthread_mutex_unlock(&c->mu);
}

static void give_back(nbd_conn *c) {
  pthread_mutex_lock(&c->mu);
  c->in_flight--;
  pthread_cond_signal(&c->wake);
  pthread_mutex_unlock(&c->mu);
}

static int serve_read(nbd_conn *c, const nbd_req *q, int fd) {
  if (q->length + (size_t)NBD_REPLY_SIZE > c->readbuf_cap) {
    uint8_t *b = realloc(c->readbuf, q->length + (size_t)NBD_REPLY_SIZE);
    if (!b) {
      reply_now(c, q->handle, NBD_ENOMEM);
      return 0;
    }
    c->readbuf = b;
    c->readbuf_cap = q->length + (size_t)NBD_REPLY_SIZE;
  }
  int64_t got = io_pread(fd, c->readbuf + NBD_REPLY_SIZE, q->length, q->offset);
  if (got < 0) {
    log_conn(c, LOG_ERROR, "NBD request failed", "error", strerror((int)-got));
    reply_now(c, q->handle, nbd_code_for_errno((int)-got));
    return 0;
  }
  if ((uint64_t)got < q->length) memset(c->readbuf + NBD_REPLY_SIZE + got, 0, q->length - (uint64_t)got);
  simple_reply(c->readbuf, 0, q->handle);
  struct iovec v = {c->readbuf, NBD_REPLY_SIZE + (size_t)q->length};
  return conn_write(c, &v, 1);
}

/** A request on a plain-file export, done at once. */
static int serve_file(nbd_conn *c, rbuf_t *r, const nbd_req *q) {
  export_t *e = c->exp;
  int64_t res = 0;
  bool fua = (q->flags & CMD_FLAG_FUA) != 0;
  switch (q->type) {
  case CMD_WRITE: {
    if (q->length + (size_t)NBD_REPLY_SIZE > c->readbuf_cap) {
      uint8_t *b = realloc(c->readbuf, q->length + (size_t)NBD_REPLY_SIZE);
      if (!b) return rbuf_skip(r, q->length) < 0 ? -EPIPE : (reply_now(c, q->handle, NBD_ENOMEM), 0);
      c->readbuf = b;
      c->readbuf_cap = q->length + (size_t)NBD_REPLY_SIZE;
    }
    // nothing is written for a request whose payload never fully arrived
    if (rbuf_read(r, c->readbuf, q->length) < 0) return -EPIPE;
    res = io_pwrite(e->fd, c->readbuf, q->length, q->offset);
    break;
  }
  case CMD_FLUSH:
    fua = true;
    break;
  case CMD_TRIM:
    res = io_punch(e->fd, q->offset, q->length);
    break;
  case CMD_WRITE_ZEROES:
    res = io_zero(e->fd, q->offset, q->length, (q->flags & CMD_FLAG_NO_HOLE) == 0);
    break;
  }
  if (res >= 0 && fua && fdatasync(e->fd) < 0) res = -errno;
  if (res < 0) log_conn(c, LOG_ERROR, "NBD request failed", "error", strerror((int)-res));
  reply_now(c, q->handle, res < 0 ? nbd_code_for_errno((int)-res) : 0);
  return 0;
}

static void transmission(nbd_conn *c, rbuf_t *r) {
  export_t *e = c->exp;
  int64_t grace_until = 0;
  for (;;) {
    // a submission leaves its records for the next request when that one is read already
    // (nbd_next_captured); anything else, a wait for the client above all, sends them first
    if (!nbd_next_captured(r)) send_owed(c);
    int f = rbuf_fill(r, NBD_REQUEST_SIZE);
    if (f <= 0) {
      if (f < 0 && !c->withdrawn && !c->srv->closing && f != -ECONNRESET && f != -EPIPE) {
        log_conn(c, LOG_WARN, "NBD connection failed", "error", strerror(-f));
      }
      break;
    }
    nbd_req q;
    if (!decode_request(rbuf_peek(r), &q)) {
      log_conn(c, LOG_WARN, "NBD request with bad magic: disconnecting", NULL, NULL);
      break;
    }
    rbuf_take(r, NBD_REQUEST_SIZE);
    if (q.type == CMD_DISC) break;
    pthread_mutex_lock(&c->mu);
    bool withdrawn = c->withdrawn;
    pthread_mutex_unlock(&c->mu);
    bool ro = e->read_only || (e->vol && capture_readonly(e->vol));
    uint32_t err = withdrawn ? 0 : nbd_validate(&q, e->size, ro);
    // records are still owed here only for a request of a kind capture_submit takes: refused, it sends none
    if (withdrawn || err) send_owed(c);
    if (withdrawn) {
      // the export is withdrawn: the spec's "server shutting down", so the client leaves cleanly
      if (!grace_until) grace_until = mono_ns() + (int64_t)WITHDRAW_GRACE_MS * 1000000;
      if (q.type == CMD_WRITE && rbuf_skip(r, q.length) < 0) break;
      reply_now(c, q.handle, NBD_ESHUTDOWN);
      if (mono_ns() > grace_until) break;
      continue;
    }
    if (err) {
      if (plane_logs(c->srv->plane, LOG_DEBUG)) {
        char fl[256];
        json_t j;
        json_begin(&j, fl, sizeof fl);
        json_str(&j, "peer", c->peer);
        json_str(&j, "op", command_name(q.type));
        json_uint(&j, "offset", q.offset);
        json_uint(&j, "length", q.length);
        json_uint(&j, "code", err);
        plane_log(c->srv->plane, LOG_DEBUG, "nbd", "NBD request refused", json_end(&j));
      }
      if (q.type == CMD_WRITE && rbuf_skip(r, q.length) < 0) {
        log_conn(c, LOG_WARN, "NBD client disconnected mid-payload", NULL, NULL);
        break;
      }
      reply_now(c, q.handle, err);
      continue;
    }
    if (q.type == CMD_READ) {
      if (serve_read(c, &q, e->vol ? capture_fd(e->vol) : e->fd) < 0) break;
      continue;
    }
    if (!e->vol) {
      if (serve_file(c, r, &q) < 0) {
        log_conn(c, LOG_WARN, "NBD client disconnected mid-payload", NULL, NULL);
        break;
      }
      continue;
    }
    take_budget(c);
    int s = capture_submit(e->vol, c, q.handle, q.type, q.flags, q.offset, q.length, r);
    if (s != 0) give_back(c);
    if (s < 0) {
      log_conn(c, LOG_WARN, "NBD client disconnected mid-payload", NULL, NULL);
      break;
    }
    if (s > 0) reply_now(c, q.handle, (uint32_t)s);
  }
}

static void *reader_main(void *arg) {
  thread_name("cn-nbd-read");
  nbd_conn *c = arg;
  cn_nbd *s = c->srv;
  rbuf_t r;
  rbuf_init(&r, c->fd, c->rmem, sizeof c->rmem);
  sock_timeout(c->fd, HANDSHAKE_TIMEOUT_MS);
  c->exp = negotiate(c, &r);
  sock_timeout(c->fd, 0);
  int tr = c->exp ? pthread_create(&c->writer, NULL, writer_main, c) : 0;
  if (tr != 0) log_conn(c, LOG_ERROR, "cannot serve an NBD client: no thread for its replies", "error", strerror(tr));
  if (c->exp && tr == 0) {
    if (c->exp->vol) capture_hold(c->exp->vol);
    transmission(c, &r);
    send_owed(c);
    // NBD_CMD_DISC or end of stream: what is in flight is answered before closing
    pthread_mutex_lock(&c->mu);
    c->reader_done = true;
    pthread_cond_signal(&c->wake);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->writer, NULL);
    if (c->exp->vol) capture_unhold(c->exp->vol);
  }
  close(c->fd);
  pthread_mutex_lock(&s->mu);
  if (c->exp) c->exp->conns--;
  for (nbd_conn **p = &s->conns; *p; p = &(*p)->next) {
    if (*p == c) {
      *p = c->next;
      break;
    }
  }
  s->nconns--;
  if (s->nended == s->ended_cap) {
    int cap = s->ended_cap ? s->ended_cap * 2 : 16;
    pthread_t *n = realloc(s->ended, sizeof(pthread_t) * (size_t)cap);
    if (n) {
      s->ended = n;
      s->ended_cap = cap;
    }
  }
  if (s->nended < s->ended_cap) s->ended[s->nended++] = pthread_self();
  else pthread_detach(pthread_self());
  pthread_cond_broadcast(&s->changed);
  pthread_mutex_unlock(&s->mu);
  free(c->replies);
  free(c->sending);
  free(c->readbuf);
  pthread_mutex_destroy(&c->mu);
  pthread_mutex_destroy(&c->wmu);
  pthread_cond_destroy(&c->wake);
  pthread_cond_destroy(&c->budget);
  free(c);
  return NULL;
}


static bool nbd_closing(void *owner) {
  cn_nbd *s = owner;
  pthread_mutex_lock(&s->mu);
  bool closing = s->closing;
  pthread_mutex_unlock(&s->mu);
  return closing;
}

/** A new client: its reader thread negotiates, then serves it. */
static void nbd_accepted(void *owner, int fd) {
  cn_nbd *s = owner;
  nbd_conn *c = calloc(1, sizeof *c);
  if (c) {
    c->replies = malloc((size_t)MAX_IN_FLIGHT * NBD_REPLY_SIZE);
    c->sending = malloc((size_t)MAX_IN_FLIGHT * NBD_REPLY_SIZE);
  }
  if (!c || !c->replies || !c->sending) {
    if (c) {
      free(c->replies);
      free(c->sending);
    }
    free(c);
    close(fd);
    return;
  }
  c->srv = s;
  c->fd = fd;
  sock_peer(fd, c->peer, sizeof c->peer);
  pthread_mutex_init(&c->mu, NULL);
  pthread_mutex_init(&c->wmu, NULL);
  pthread_cond_init(&c->wake, NULL);
  pthread_cond_init(&c->budget, NULL);
  pthread_mutex_lock(&s->mu);
  reap(s);
  if (!s->closing) {
    c->next = s->conns;
    s->conns = c;
    s->nconns++;
    // created with the lock held: the thread's first use of the lock waits for this to be done
    if (pthread_create(&c->reader, NULL, reader_main, c) == 0) {
      pthread_mutex_unlock(&s->mu);
      return;
    }
    s->conns = c->next;
    s->nconns--;
  }
  pthread_mutex_unlock(&s->mu);
  close(fd);
  free(c->replies);
  free(c->sending);
  free(c);
}

static int start_listener(cn_nbd *s, const char *text, int32_t *port, char *err, uint64_t errcap) {
  int r = listener_start(&s->listeners[s->nl], text, "cn-nbd-accept", nbd_accepted, nbd_closing, s, s->plane, "nbd",
                         port, err, errcap);
  if (r == 0) s->nl++;
  return r;
}

EXPORT cn_nbd *cn_nbd_new(cn_plane *p, const char *unix_path, const char *tcp_addr, int32_t *tcp_port, char *err,
                          uint64_t errcap) {
  cn_nbd *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->plane = p;
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->changed, NULL);
  if (unix_path && unix_path[0]) {
    char text[120];
    snprintf(text, sizeof text, "unix:%s", unix_path);
    if (start_listener(s, text, NULL, err, errcap) < 0) {
      cn_nbd_close(s);
      return NULL;
    }
  }
  if (tcp_addr && tcp_addr[0] && start_listener(s, tcp_addr, tcp_port, err, errcap) < 0) {
    cn_nbd_close(s);
    return NULL;
  }
  if (s->nl == 0) {
    snprintf(err, errcap, "NBD server needs a Unix socket path or a TCP address");
    cn_nbd_close(s);
    return NULL;
  }
  return s;
}

static int add_export(cn_nbd *s, export_t *e) {
  pthread_mutex_lock(&s->mu);
  for (export_t *x = s->exports; x; x = x->next) {
    if (!x->withdrawn && strcmp(x->name, e->name) == 0) {
      pthread_mutex_unlock(&s->mu);
      free(e);
      return -EEXIST;
    }
  }
  e->next = s->exports;
  s->exports = e;
  pthread_mutex_unlock(&s->mu);
  return 0;
}

static export_t *new_export(const char *name, const char *description) {
  if (!name || !name[0] || strlen(name) > NAME_MAX_LEN) return NULL;
  export_t *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  strcpy(e->name, name);
  snprintf(e->description, sizeof e->description, "%s", description ? description : "");
  e->fd = -1;
  return e;
}

EXPORT int32_t cn_nbd_export_file(cn_nbd *s, const char *name, int32_t fd, uint64_t size, int32_t read_only,
                                  const char *description) {
  export_t *e = new_export(name, description);
  if (!e) return -EINVAL;
  e->fd = fd;
  e->size = size;
  e->read_only = read_only != 0;
  return add_export(s, e);
}

EXPORT int32_t cn_nbd_export_volume(cn_nbd *s, const char *name, cn_agent *a, uint32_t link_id,
                                    const char *description) {
  cvol *v = agent_volume(a, link_id);
  if (!v) return -ENOENT;
  export_t *e = new_export(name, description);
  if (!e) return -EINVAL;
  e->vol = v;
  e->fd = capture_fd(v);
  e->size = capture_size(v);
  return add_export(s, e);
}

EXPORT int32_t cn_nbd_withdraw(cn_nbd *s, const char *name) {
  pthread_mutex_lock(&s->mu);
  export_t *e = NULL;
  for (export_t *x = s->exports; x; x = x->next) {
    if (!x->withdrawn && strcmp(x->name, name) == 0) e = x;
  }
  if (!e) {
    pthread_mutex_unlock(&s->mu);
    return -ENOENT;
  }
  e->withdrawn = true;
  for (nbd_conn *c = s->conns; c; c = c->next) {
    if (c->exp != e) continue;
    pthread_mutex_lock(&c->mu);
    c->withdrawn = true;
    pthread_mutex_unlock(&c->mu);
  }
  // clients get ESHUTDOWN for what they send now and leave; those that stay are cut after the grace
  struct timespec until = deadline_in(WITHDRAW_GRACE_MS);
  while (e->conns > 0 && cond_wait_until(&s->changed, &s->mu, &until)) {
  }
  for (nbd_conn *c = s->conns; c; c = c->next) {
    if (c->exp == e) shutdown(c->fd, SHUT_RD);
  }
  while (e->conns > 0) pthread_cond_wait(&s->changed, &s->mu);
  for (export_t **p = &s->exports; *p; p = &(*p)->next) {
    if (*p == e) {
      *p = e->next;
      break;
    }
  }
  pthread_mutex_unlock(&s->mu);
  free(e);
  return 0;
}

EXPORT void cn_nbd_close(cn_nbd *s) {
  if (!s) return;
  pthread_mutex_lock(&s->mu);
  s->closing = true;
  pthread_mutex_unlock(&s->mu);
  for (int i = 0; i < s->nl; i++) listener_stop(&s->listeners[i]);
  pthread_mutex_lock(&s->mu);
  // stop reading new requests; what is in flight is answered, then each connection closes
  for (nbd_conn *c = s->conns; c; c = c->next) shutdown(c->fd, SHUT_RD);
  struct timespec until = deadline_in(10000);
  while (s->nconns > 0 && cond_wait_until(&s->changed, &s->mu, &until)) {
  }
  for (nbd_conn *c = s->conns; c; c = c->next) shutdown(c->fd, SHUT_RDWR);
  while (s->nconns > 0) pthread_cond_wait(&s->changed, &s->mu);
  reap(s);
  pthread_mutex_unlock(&s->mu);
  free(s->ended);
  while (s->exports) {
    export_t *e = s->exports;
    s->exports = e->next;
    free(e);
  }
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->changed);
  free(s);
}

// ---- the pure functions, for the fuzzers ----

EXPORT int64_t cn_nbd_option_probe(const uint8_t *exports, uint64_t exports_len, int32_t no_zeroes, uint32_t option,
                                   const uint8_t *data, uint64_t len, uint8_t *out, uint64_t cap, int32_t *outcome) {
  nbd_info infos[16];
  size_t n = 0, i = 0;
  // "name\0size\0ro\0description\0" repeated
  while (i < exports_len && n < 16) {
    const char *field[4];
    int f = 0;
    for (; f < 4 && i < exports_len; f++) {
      field[f] = (const char *)exports + i;
      i += strnlen(field[f], exports_len - i) + 1;
    }
    if (f < 4 || i > exports_len) break;
    infos[n].name = field[0];
    infos[n].size = strtoull(field[1], NULL, 10);
    infos[n].read_only = field[2][0] == '1';
    infos[n].description = field[3];
    n++;
  }
  if (len > MAX_OPTION_LENGTH) return -EMSGSIZE;
  out_t o = {out, cap, 0, false};
  int oc = 0, selected = -1;
  const char *reason = NULL;
  nbd_option(infos, n, no_zeroes != 0, option, data, (uint32_t)len, &o, &oc, &selected, &reason);
  // bits 0-1: selected, close; from bit 8: which export was selected
  *outcome = oc | (selected >= 0 ? selected << 8 : 0);
  return o.overflow ? -ENOBUFS : (int64_t)o.len;
}

EXPORT int32_t cn_nbd_client_flags(uint32_t flags) {
  const char *r = client_flags_refused(flags);
  return r == NULL ? 0 : (flags & FLAG_FIXED_NEWSTYLE) ? 1 : 2;
}

EXPORT int32_t cn_nbd_request_check(const uint8_t *header, uint64_t size, int32_t read_only) {
  nbd_req q;
  if (!decode_request(header, &q)) return -1;
  return (int32_t)nbd_validate(&q, size, read_only != 0);
}
