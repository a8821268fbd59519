// Internals shared by the data plane's source files (not part of the API in
// continuum.h): byte order, clocks, JSON for events and logs, the event plane,
// addresses and sockets, and the record and frame formats.
#ifndef CN_INTERNAL_H
#define CN_INTERNAL_H

#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#include "continuum.h"

#define EXPORT __attribute__((visibility("default")))

/** Names the calling thread (up to 15 characters) so top, perf and the benchmarks can tell them apart. */
static inline void thread_name(const char *name) { pthread_setname_np(pthread_self(), name); }
#define UNUSED(x) (void)(x)
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

// ---- byte order (every wire and disk format is big-endian) ----

static inline void put16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}
static inline void put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}
static inline void put64(uint8_t *p, uint64_t v) {
  put32(p, (uint32_t)(v >> 32));
  put32(p + 4, (uint32_t)v);
}
static inline uint16_t get16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t get32(const uint8_t *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t get64(const uint8_t *p) { return ((uint64_t)get32(p) << 32) | get32(p + 4); }

// ---- clocks ----

int64_t mono_ns(void);
uint64_t wall_ms(void);
/** An absolute CLOCK_MONOTONIC deadline `ms` from now, for cond_wait_until. */
struct timespec deadline_in(int64_t ms);
/** Waits on cv until the monotonic deadline (a wall-clock step moves no timeout); false on timeout. */
bool cond_wait_until(pthread_cond_t *cv, pthread_mutex_t *mu, const struct timespec *until);

// ---- JSON, for event bodies and log fields (small, flat objects) ----

typedef struct {
  char *buf;
  size_t cap, len;
  bool first;
} json_t;

void json_begin(json_t *j, char *buf, size_t cap);
void json_str(json_t *j, const char *key, const char *value);
void json_strn(json_t *j, const char *key, const char *value, size_t n);
void json_int(json_t *j, const char *key, int64_t value);
void json_uint(json_t *j, const char *key, uint64_t value);
void json_bool(json_t *j, const char *key, bool value);
/** A raw JSON value (an array or object built by the caller). */
void json_raw(json_t *j, const char *key, const char *value);
const char *json_end(json_t *j);

/** Finds a top-level key of a flat JSON object and reads its value (number, boolean, string). */
bool json_get_num(const char *json, size_t len, const char *key, double *out);
bool json_get_bool(const char *json, size_t len, const char *key, bool *out);
bool json_get_str(const char *json, size_t len, const char *key, char *out, size_t cap);

// ---- the event plane (see continuum.h) ----

enum { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

/** Posts a message. Frames wait for room (backpressure); logs are dropped when the queue is full. */
int plane_post(cn_plane *p, uint16_t type, uint32_t source, uint32_t aux, const void *a, size_t alen,
               const void *b, size_t blen, bool wait);
/** Raises state flags (coalesced: the next events call reports them once). */
void plane_flag(cn_plane *p, uint32_t bits);
bool plane_logs(cn_plane *p, int level);
/** Logs a message with fields (a JSON object or NULL). */
void plane_log(cn_plane *p, int level, const char *module, const char *msg, const char *fields);

// ---- addresses and sockets ----

typedef struct {
  bool unix_socket;
  char path[108];
  char host[256];
  int port;
} addr_t;

/** Parses "unix:/path", "/path" or "host:port" / "[v6]:port". */
int addr_parse(const char *text, addr_t *out);
void addr_format(const addr_t *a, char *out, size_t cap);
/** Connects (TCP with TCP_NODELAY); returns the fd or -errno. */
int sock_connect(const addr_t *a);
/** Listens; a stale Unix socket file is replaced, one still served is refused. Returns fd or -errno; *port gets the bound TCP port. */
int sock_listen(const addr_t *a, int *port);
/** Writes all bytes (EINTR, short writes); 0 or -errno. */
int write_full(int fd, const void *buf, size_t len);
/** Reads exactly len bytes; 1 done, 0 clean EOF before any byte, -errno on error or EOF mid-way (-EPIPE). */
int read_full(int fd, void *buf, size_t len);
/** Reads one plain frame of at most cap body bytes (the handshake's); 0, -EMSGSIZE, -EPIPE or -errno. */
int read_small_frame(int fd, uint8_t *type, uint8_t *body, uint32_t cap, uint32_t *len);
/** Whether fd is a Unix socket (its peer on this machine, the stream kept by the kernel). */
bool sock_is_unix(int fd);
/** "host:port" of a TCP peer, "unix" for a Unix socket peer (cap ≥ 64). */
void sock_peer(int fd, char *out, size_t cap);
/** Sets a receive timeout (0 clears it). */
void sock_timeout(int fd, int ms);

/** A buffered reader over a socket: headers come out of the buffer, payloads go straight to their place. */
typedef struct {
  int fd;
  uint8_t *buf;
  size_t cap, start, end;
} rbuf_t;

void rbuf_init(rbuf_t *r, int fd, uint8_t *buf, size_t cap);
/** Makes n bytes available at rbuf_peek (n ≤ cap). 1 ok, 0 EOF before any byte, <0 error/EOF inside. */
int rbuf_fill(rbuf_t *r, size_t n);
static inline uint8_t *rbuf_peek(rbuf_t *r) { return r->buf + r->start; }
static inline void rbuf_take(rbuf_t *r, size_t n) {
  r->start += n;
  if (r->start == r->end) r->start = r->end = 0;
}
/** Copies exactly n bytes into dst (from the buffer, then the socket). 1 ok, <0 error/EOF. */
int rbuf_read(rbuf_t *r, void *dst, size_t n);
/** Drops n bytes. 1 ok, <0 error/EOF. */
int rbuf_skip(rbuf_t *r, size_t n);

/**
 * Reads the link's sealed batches (a 4-byte length, then that many bytes and the tag): a batch
 * that fits the buffer is read with whatever follows it in as few recv calls as the socket
 * allows, and unsealed in place; a larger one is read into a buffer of its own.
 */
typedef struct {
  rbuf_t r;
  size_t taken; // bytes of the last batch, left in the buffer until the next call
  uint8_t *big;
  size_t big_cap;
} batch_reader_t;

#define BATCH_READ_BUFFER (64u * 1024)

/** 0 or -ENOMEM; the reader reads fd from the first byte after the handshake on. */
int batch_reader_init(batch_reader_t *b, int fd);
void batch_reader_free(batch_reader_t *b);
/**
 * The next batch: its length prefix in lp, its n bytes and tag at *data (valid until the next
 * call). 1 ok, 0 clean end before a batch, -EMSGSIZE over max, -EPIPE inside a batch, -ENOMEM,
 * or -errno.
 */
int batch_next(batch_reader_t *b, uint32_t max, uint32_t tag, uint8_t lp[4], uint8_t **data, uint32_t *n);
/** Bytes already read past the last batch: more is waiting even when the socket holds none. */
static inline size_t batch_buffered(const batch_reader_t *b) { return b->r.end - b->r.start - b->taken; }

// ---- records (src/record/record.ts describes the same format) ----

#define REC_MAGIC 0x434e5231u /* "CNR1" */
#define REC_HEADER 72
#define REC_O_KIND 4
#define REC_O_FLAGS 5
#define REC_O_VOLUME 8
#define REC_O_LENGTH 12
#define REC_O_SEQ 16
#define REC_O_OFFSET 24
#define REC_O_TIME 32
#define REC_O_POS 40
#define REC_O_SUM 48
#define REC_O_HSUM 64

enum { K_WRITE = 1, K_TRIM = 2, K_ZERO = 3, K_FLUSH = 4, K_WRAP = 5, K_SYNC_BEGIN = 6, K_SYNC_END = 7 };
enum { RF_FUA = 1, RF_MAY_TRIM = 2, RF_SYNC = 4 };

typedef struct {
  uint8_t kind, flags;
  uint32_t volume, length;
  uint64_t seq, offset, time, pos;
} rec_t;

#define MAX_PAYLOAD (32u * 1024 * 1024)

static inline uint32_t rec_payload_len(uint8_t kind, uint32_t length) { return kind == K_WRITE ? length : 0; }
/** Fills the header at b for the payload already at b+72 (its checksum is computed here). */
void rec_write_header(uint8_t *b, const rec_t *h);
/** Same, with the payload checksum already in place at b+48 (computed earlier, outside a lock). */
void rec_seal_header(uint8_t *b, const rec_t *h);
/** Rewrites the volume and position and reseals the header (the payload checksum stays). */
void rec_restamp(uint8_t *b, uint32_t volume, uint64_t pos);
/** Verifies magic, header checksum and fields; 0 or a static reason. */
const char *rec_decode(const uint8_t *b, size_t len, uint32_t max_length, rec_t *h);
/** Verifies that b is exactly one record whose payload matches its checksum. */
bool rec_payload_ok(const uint8_t *b, size_t len, const rec_t *h);
void hash128(const void *data, size_t len, uint8_t out[16]);
static inline bool rec_between(const rec_t *h) {
  return (h->flags & RF_SYNC) || h->kind == K_SYNC_BEGIN || h->kind == K_SYNC_END;
}

// ---- link frames (src/wire/frames.ts): u32 length (type + body), u8 type, body ----

#define FRAME_HEADER 5
enum {
  F_CHALLENGE = 1,
  F_HELLO = 2,
  F_WELCOME = 3,
  F_DENIED = 4,
  F_OPEN = 5,
  F_OPENED = 6,
  F_RECORD = 7,
  F_ACCEPTED = 8,
  F_DURABLE = 9,
  F_ERROR = 10,
  F_CONTROL = 11,
};
#define MAX_CONTROL_FRAME (1024u * 1024)
#define MAX_FRAME (1u + REC_HEADER + MAX_PAYLOAD)
#define MAX_HASHES_FRAME (64u * 1024 * 1024 + 17)

static inline void frame_header(uint8_t *b, uint8_t type, uint32_t body_len) {
  put32(b, 1 + body_len);
  b[4] = type;
}

// ---- the sealed link (seal.c) ----

#define SEAL_TAG 16
#define SEAL_OVERHEAD (4 + SEAL_TAG)
/** The largest sealed batch: one frame of the largest record, or many small frames. */
#define SEAL_MAX_PLAIN (FRAME_HEADER + MAX_FRAME + 64)
#define LINK_NONCE 32
#define LINK_PROOF 32
#define LINK_VERSION 2

typedef struct sealer sealer_t;
/**
 * A sealer for one direction of a session. `plain`: the link is a Unix socket, so batches
 * travel without encryption or tag (the kernel keeps the stream: nobody else can read it
 * or write into it once both ends proved the secret); the calls below then only copy.
 */
sealer_t *sealer_new(const uint8_t key[32], bool encrypt, bool plain);
/** The tag's length after each batch: SEAL_TAG, or 0 for a plain sealer. */
uint32_t seal_tag(const sealer_t *s);
void sealer_free(sealer_t *s);
/** Starts a batch of `plain_len` bytes at out+4 (the length prefix is written). */
int seal_begin(sealer_t *s, uint8_t *out, uint32_t plain_len);
/** Encrypts the next `len` bytes of the batch from `in` into `out` (may be the same). */
int seal_update(sealer_t *s, uint8_t *out, const uint8_t *in, size_t len);
/** Finishes the batch: the tag is written at `tag`. */
int seal_end(sealer_t *s, uint8_t *tag);
/** Verifies and decrypts a batch in place (buf holds plain_len bytes then the tag). */
int unseal(sealer_t *s, const uint8_t len_prefix[4], uint8_t *buf, uint32_t plain_len);
/**
 * The same in pieces, each decrypted wherever the caller wants it (a chunk into a writer's buffer):
 * begin, update for every byte of the batch in order, then end, which checks the tag (-EBADMSG).
 * Nothing decrypted may be acted on before end said the batch is authentic.
 */
int unseal_begin(sealer_t *s, const uint8_t len_prefix[4]);
int unseal_update(sealer_t *s, uint8_t *out, const uint8_t *in, size_t len);
int unseal_end(sealer_t *s, const uint8_t *tag);

/** HMAC-SHA256 over the concatenation of parts. */
void hmac256(const uint8_t *key, size_t key_len, const void *const *parts, const size_t *lens, int n,
             uint8_t out[32]);
void random_bytes(uint8_t *out, size_t n);
/** The proofs and session keys of the challenge-response (both ends compute them alike). */
void link_proof(const uint8_t *secret, size_t secret_len, bool agent_side, const char *agent,
                const uint8_t gw_nonce[32], const uint8_t agent_nonce[32], uint8_t out[32]);
void link_key(const uint8_t *secret, size_t secret_len, bool agent_to_gateway, const char *agent,
              const uint8_t gw_nonce[32], const uint8_t agent_nonce[32], uint8_t out[32]);
bool same_bytes(const uint8_t *a, const uint8_t *b, size_t n);

// ---- positional I/O (io.c) ----

int64_t io_pread(int fd, uint8_t *buf, uint64_t len, uint64_t off);
/** A new read-only descriptor of fd's file without readahead (see io.c), or -errno. */
int io_open_reader(int fd);
int64_t io_pwrite(int fd, const uint8_t *buf, uint64_t len, uint64_t off);
int64_t io_punch(int fd, uint64_t off, uint64_t len);
int64_t io_zero(int fd, uint64_t off, uint64_t len, bool may_trim);
/** Applies one record to an image: write, trim or zero; barriers and markers do nothing. */
int64_t io_apply_record(int fd, const uint8_t *rec, const rec_t *h);

#endif
