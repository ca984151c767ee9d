/*
 * Test-only: runs the native CPU kernels of another architecture (AArch64 NEON, under qemu-user)
 * for the test files on this machine. Built statically with the cross compiler together with
 * src/cpu/kernels/*.c (tests/cpu/emul/remote.ts), started once per test process.
 *
 *   driver --isa         prints the kernels' ISA (RA_ISA) and exits
 *   driver REQ RESP      serves calls: reads requests from the FIFO REQ, answers on RESP
 *
 * A request (little-endian) is the function's name (u32 length, bytes), the argument count (u32),
 * then each argument as a tag byte and its value:
 *   'i' int64            'f' float64
 *   'b' a buffer: int64 byte count (-1 for NULL), then the bytes
 *   'a' a list of buffers: u32 count (0xffffffff for NULL), then each as a 'b' value
 * The answer is the function's int result (int64), then every buffer again in argument order
 * (for lists, each of its buffers): the caller copies back what the kernel wrote and checks that
 * what it declared const is unchanged. EOF on REQ ends the driver.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h" /* -I src/cpu/kernels (driver-build.ts) */

int ra_forward(const float* q, const float* k, const float* v, const int32_t* qpos, const int32_t* kpos,
               const int32_t* qseg, const int32_t* kseg, int Sq, int Sk, int H, int Hk, int D, int causal, int window,
               int sinks, float scale, int blockQ, int blockK, int threads, float* o, float* lse);
int ra_backward(const float* q, const float* k, const float* v, const float* dO, const float* lse, const float* delta,
                const int32_t* qpos, const int32_t* kpos, const int32_t* qseg, const int32_t* kseg, int Sq, int Sk,
                int H, int Hk, int D, int causal, int window, int sinks, float scale, int blockQ, int blockK,
                int threads, float* dq, float* dk, float* dv);
int ra_decode(const float* q, const int32_t* qpos, const int32_t* qseg, const void** k, const void** v,
              const int32_t** kpos, const int32_t** kseg, const int64_t* len, int B, int Sq, int H, int Hk, int D,
              int dtype, int causal, int window, int sinks, float scale, int sorted, int chunk, int threads, float* o,
              float* lse);
int ra_gemm(int transA, int transB, int M, int N, int K, float alpha, const float* A, int lda, const float* B, int ldb,
            float beta, float* C, int ldc, int threads);

#define MAX_ARGS 32
#define NO_LIST 0xffffffffu

typedef struct {
  char tag;
  int64_t i;
  double f;
  void* p;       /* 'b': the buffer (NULL when absent) */
  int64_t n;     /* 'b': its byte count (-1 when absent); 'a': the list's length */
  void** list;   /* 'a': the buffers (NULL when absent) */
  int64_t* lens; /* 'a': their byte counts */
} Arg;

static FILE *in, *out;

static void die(const char* what) {
  fprintf(stderr, "emul driver: %s\n", what);
  exit(3);
}

/* 0 at a clean EOF before the first byte (end of requests), else every byte or die. */
static int get(void* p, size_t n, int eof_ok) {
  size_t got = fread(p, 1, n, in);
  if (got == 0 && eof_ok && feof(in)) return 0;
  if (got != n) die("short read");
  return 1;
}

static void put(const void* p, size_t n) {
  if (n && fwrite(p, 1, n, out) != n) die("short write");
}

static void* get_buffer(int64_t* n) {
  get(n, 8, 0);
  if (*n < 0) return NULL;
  void* p = malloc(*n > 0 ? (size_t)*n : 1); /* an empty buffer is a valid, non-NULL pointer */
  if (!p) die("out of memory");
  get(p, (size_t)*n, 0);
  return p;
}

static void put_buffer(const void* p, int64_t n) {
  put(&n, 8);
  if (p) put(p, (size_t)n);
}

#define I(x) ((int)a[x].i)
#define F(x) ((float)a[x].f)
#define P(T, x) ((T)a[x].p)
#define L(T, x) ((T)a[x].list)

static int64_t call(const char* name, Arg* a, uint32_t n) {
  if (!strcmp(name, "ra_forward") && n == 21)
    return ra_forward(P(const float*, 0), P(const float*, 1), P(const float*, 2), P(const int32_t*, 3),
                      P(const int32_t*, 4), P(const int32_t*, 5), P(const int32_t*, 6), I(7), I(8), I(9), I(10),
                      I(11), I(12), I(13), I(14), F(15), I(16), I(17), I(18), P(float*, 19), P(float*, 20));
  if (!strcmp(name, "ra_backward") && n == 25)
    return ra_backward(P(const float*, 0), P(const float*, 1), P(const float*, 2), P(const float*, 3),
                       P(const float*, 4), P(const float*, 5), P(const int32_t*, 6), P(const int32_t*, 7),
                       P(const int32_t*, 8), P(const int32_t*, 9), I(10), I(11), I(12), I(13), I(14), I(15), I(16),
                       I(17), F(18), I(19), I(20), I(21), P(float*, 22), P(float*, 23), P(float*, 24));
  if (!strcmp(name, "ra_decode") && n == 23)
    return ra_decode(P(const float*, 0), P(const int32_t*, 1), P(const int32_t*, 2), L(const void**, 3),
                     L(const void**, 4), L(const int32_t**, 5), L(const int32_t**, 6), P(const int64_t*, 7), I(8),
                     I(9), I(10), I(11), I(12), I(13), I(14), I(15), I(16), F(17), I(18), I(19), I(20), P(float*, 21),
                     P(float*, 22));
  if (!strcmp(name, "ra_gemm") && n == 14)
    return ra_gemm(I(0), I(1), I(2), I(3), I(4), F(5), P(const float*, 6), I(7), P(const float*, 8), I(9), F(10),
                   P(float*, 11), I(12), I(13));
  fprintf(stderr, "emul driver: no function %s with %u arguments\n", name, n);
  exit(3);
}

static int serve(void) {
  uint32_t len;
  if (!get(&len, 4, 1)) return 0;
  if (len == 0 || len > 64) die("bad function name");
  char name[65];
  get(name, len, 0);
  name[len] = 0;
  uint32_t n;
  get(&n, 4, 0);
  if (n > MAX_ARGS) die("too many arguments");
  Arg a[MAX_ARGS];
  memset(a, 0, sizeof a);
  for (uint32_t x = 0; x < n; x++) {
    get(&a[x].tag, 1, 0);
    switch (a[x].tag) {
      case 'i': get(&a[x].i, 8, 0); break;
      case 'f': get(&a[x].f, 8, 0); break;
      case 'b': a[x].p = get_buffer(&a[x].n); break;
      case 'a': {
        uint32_t c;
        get(&c, 4, 0);
        if (c == NO_LIST) break;
        a[x].n = c;
        a[x].list = calloc(c ? c : 1, sizeof(void*));
        a[x].lens = calloc(c ? c : 1, sizeof(int64_t));
        if (!a[x].list || !a[x].lens) die("out of memory");
        for (uint32_t e = 0; e < c; e++) a[x].list[e] = get_buffer(&a[x].lens[e]);
        break;
      }
      default: die("bad argument tag");
    }
  }
  int64_t rc = call(name, a, n);
  put(&rc, 8);
  for (uint32_t x = 0; x < n; x++) {
    if (a[x].tag == 'b') {
      put_buffer(a[x].p, a[x].n);
      free(a[x].p);
    } else if (a[x].tag == 'a' && a[x].list) {
      for (int64_t e = 0; e < a[x].n; e++) {
        put_buffer(a[x].list[e], a[x].lens[e]);
        free(a[x].list[e]);
      }
      free(a[x].list);
      free(a[x].lens);
    }
  }
  if (fflush(out)) die("short write");
  return 1;
}

int main(int argc, char** argv) {
  if (argc == 2 && !strcmp(argv[1], "--isa")) {
    puts(RA_ISA);
    return 0;
  }
  if (argc != 3) die("usage: driver --isa | driver REQ RESP");
  /* the same order as the caller opens them: each open waits for the other end */
  in = fopen(argv[1], "rb");
  if (!in) die("cannot open the request FIFO");
  out = fopen(argv[2], "wb");
  if (!out) die("cannot open the answer FIFO");
  while (serve()) {
  }
  return 0;
}
