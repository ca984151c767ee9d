/*
 * Asynchronous pulls between shared buffers of CPU ranks, so that a ring transfer is really in
 * flight while the rank computes: a pthread waits until the sending rank has posted its block
 * (an int32 flag in shared memory reaches `want`), copies the byte ranges, and records when.
 *
 *   ra_pull_start(dst, src, ranges[nseg*3] = {dstOff, srcOff, bytes}, nseg, flags, readyIdx, want, abortIdx)
 *   ra_pull_wait(handle, times[2]) -> 0 ok, 1 aborted; times = {copy start ns, copy end ns}
 *   ra_now_ns()  CLOCK_MONOTONIC, to relate the pull's times to the caller's clock
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RA_MAX_SEG 16

typedef struct {
  pthread_t thread;
  uint8_t* dst;
  const uint8_t* src;
  int64_t ranges[RA_MAX_SEG * 3];
  int nseg;
  int32_t* flags;
  int ready_idx, want, abort_idx;
  int status;
  int64_t t0, t1;
} ra_pull;

int64_t ra_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void* pull_main(void* arg) {
  ra_pull* p = (ra_pull*)arg;
  /* Spin briefly, then sleep in short naps: the sender posts within one compute step. */
  int spins = 0;
  for (;;) {
    if (__atomic_load_n(&p->flags[p->abort_idx], __ATOMIC_ACQUIRE) != 0) { p->status = 1; return NULL; }
    if (__atomic_load_n(&p->flags[p->ready_idx], __ATOMIC_ACQUIRE) >= p->want) break;
    if (++spins > 200) {
      struct timespec nap = {0, 20000};
      nanosleep(&nap, NULL);
    }
  }
  p->t0 = ra_now_ns();
  for (int s = 0; s < p->nseg; s++) {
    memcpy(p->dst + p->ranges[3 * s], p->src + p->ranges[3 * s + 1], (size_t)p->ranges[3 * s + 2]);
  }
  __atomic_thread_fence(__ATOMIC_RELEASE);
  p->t1 = ra_now_ns();
  p->status = 0;
  return NULL;
}

void* ra_pull_start(uint8_t* dst, const uint8_t* src, const int64_t* ranges, int nseg, int32_t* flags, int ready_idx, int want, int abort_idx) {
  if (nseg < 0 || nseg > RA_MAX_SEG) return NULL;
  ra_pull* p = (ra_pull*)calloc(1, sizeof(ra_pull));
  if (!p) return NULL;
  p->dst = dst;
  p->src = src;
  memcpy(p->ranges, ranges, sizeof(int64_t) * 3 * (size_t)nseg);
  p->nseg = nseg;
  p->flags = flags;
  p->ready_idx = ready_idx;
  p->want = want;
  p->abort_idx = abort_idx;
  p->status = -1;
  if (pthread_create(&p->thread, NULL, pull_main, p) != 0) { free(p); return NULL; }
  return p;
}

int ra_pull_wait(void* handle, int64_t* times) {
  ra_pull* p = (ra_pull*)handle;
  pthread_join(p->thread, NULL);
  int status = p->status;
  times[0] = p->t0;
  times[1] = p->t1;
  free(p);
  return status;
}
