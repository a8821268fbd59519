// The NBD server's side of the contract with captured volumes (nbd.c ↔ capture.c), and the
// protocol's constants (NetworkBlockDevice/nbd doc/proto.md).
#ifndef CN_NBD_H
#define CN_NBD_H
#include "internal.h"

#define NBD_REQUEST_MAGIC 0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u
#define NBD_REQUEST_SIZE 28
#define NBD_REPLY_SIZE 16

enum { CMD_READ = 0, CMD_WRITE = 1, CMD_DISC = 2, CMD_FLUSH = 3, CMD_TRIM = 4, CMD_WRITE_ZEROES = 6 };
enum { CMD_FLAG_FUA = 1, CMD_FLAG_NO_HOLE = 2 };
enum { NBD_EPERM = 1, NBD_EIO = 5, NBD_ENOMEM = 12, NBD_EINVAL = 22, NBD_ENOSPC = 28, NBD_ENOTSUP = 95,
       NBD_ESHUTDOWN = 108 };

typedef struct nbd_conn nbd_conn;
typedef struct cvol cvol;

/** Answers a request of a connection (from any thread); the connection's in-flight count drops. */
void nbd_reply(nbd_conn *c, uint64_t handle, uint32_t error);
/**
 * From now on this thread's nbd_reply calls queue the replies (of up to 8 connections) until
 * nbd_release_replies writes each connection's in one send: an acknowledgement that completes
 * many writes answers them with one system call, not one each. Nothing may wait in between.
 */
void nbd_hold_replies(void);
void nbd_release_replies(void);

/**
 * Takes a WRITE / TRIM / WRITE_ZEROES / FLUSH for a captured volume. For WRITE the payload is
 * read from r into the volume's ring. Returns 0 when queued (answered later with nbd_reply),
 * an NBD error to answer now (the payload consumed), or < 0 when the client went away
 * mid-payload (nothing is written).
 */
int capture_submit(cvol *v, nbd_conn *c, uint64_t handle, int cmd, uint16_t flags, uint64_t offset, uint32_t length,
                   rbuf_t *r);
/**
 * Sends what the connection's submissions left queued for the next one to send (see
 * nbd_next_captured): its reader calls it before anything that may wait.
 */
void capture_send_owed(cvol *v);
/**
 * Whether the next request is read in whole (header and payload) and is one capture_submit
 * takes: it cannot wait for the client, so the records before it may go in its batch.
 */
bool nbd_next_captured(const rbuf_t *r);
/** Whether the volume is read-only now (the agent is fenced: its service runs at another site). */
bool capture_readonly(cvol *v);
/** Reads for a client (the volume's own disk). */
int capture_fd(cvol *v);
uint64_t capture_size(cvol *v);
/** An export holds its volume while clients use it (cn_agent_remove_volume waits for it). */
void capture_hold(cvol *v);
void capture_unhold(cvol *v);
cvol *agent_volume(cn_agent *a, uint32_t link_id);

/** The map from an NBD errno to what a client should see for a disk error. */
static inline uint32_t nbd_code_for_errno(int e) {
  return e == ENOSPC || e == EDQUOT || e == EFBIG ? NBD_ENOSPC : e == EPERM || e == EROFS ? NBD_EPERM : NBD_EIO;
}
#endif
