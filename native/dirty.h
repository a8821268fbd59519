// The persistent chunk bitmap (dirty.c), as the agent's capture uses it.
#ifndef CN_DIRTY_H
#define CN_DIRTY_H
#include "internal.h"

struct cn_dirty {
  pthread_mutex_t mu;
  pthread_mutex_t persist_mu; // one persist at a time
  int fd;
  uint64_t chunk, volume_size, chunks, bytes;
  uint8_t *bits;     // what is set now
  uint8_t *durable;  // set and on disk (a cleared bit counts as not durable)
  uint8_t *snapshot; // what the persist in progress writes
  uint8_t *pages, *pages_snap; // file pages changed since the last persist
  uint64_t changes;   // bumped by every change a persist must carry
  uint64_t persisted; // the changes the file holds
  bool cleared;
  int failure;
};

int dirty_open(const char *path, uint64_t volume_size, uint64_t chunk, cn_dirty **out, bool *fresh, char *err,
               size_t errcap);
void dirty_free(cn_dirty *d);
void dirty_range(const cn_dirty *d, uint64_t offset, uint64_t length, uint64_t *first, uint64_t *last);
/** Sets the chunks of a range; returns the change generation to persist before they are durable (0: they are). */
uint64_t dirty_mark(cn_dirty *d, uint64_t offset, uint64_t length);
uint64_t dirty_mark_all(cn_dirty *d);
/** With d->mu held: clears a chunk. dirty_clear_done then returns the generation that carries the clears. */
void dirty_clear_chunk_locked(cn_dirty *d, uint64_t c);
uint64_t dirty_clear_done(cn_dirty *d);
bool dirty_is_set(const cn_dirty *d, uint64_t c);
uint64_t dirty_count(cn_dirty *d);
/** The first set chunk at or after `from`, or UINT64_MAX. */
uint64_t dirty_next_set(cn_dirty *d, uint64_t from);
/** Writes the changed pages and syncs; 0 or the (sticky) error. */
int dirty_persist(cn_dirty *d);
#endif
