/*
 * Test-only stand-in for libnvrtc (tests/cuda/precompile.test.ts), loaded through
 * RINGATTN_LIBNVRTC on machines without CUDA. "Compiling" a program makes a cubin that names
 * the program and a hash of its source and options, after FAKE_NVRTC_MS milliseconds. A source
 * containing the text in FAKE_NVRTC_FAIL fails to compile (with a log); one containing
 * FAKE_NVRTC_CRASH kills the process (SIGKILL, as the OOM killer would; no core file).
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  char* src;
  char* name;
  char cubin[160];
  char log[160];
} Prog;

int nvrtcVersion(int* major, int* minor) {
  *major = 13;
  *minor = 0;
  return 0;
}

int nvrtcCreateProgram(void** out, const char* src, const char* name, int numHeaders, const char** headers, const char** includeNames) {
  (void)numHeaders, (void)headers, (void)includeNames;
  Prog* p = calloc(1, sizeof(Prog));
  p->src = strdup(src);
  p->name = strdup(name);
  *out = p;
  return 0;
}

static uint64_t fnv(uint64_t h, const char* s) {
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

int nvrtcCompileProgram(void* prog, int numOptions, const char** options) {
  Prog* p = prog;
  const char* ms = getenv("FAKE_NVRTC_MS");
  if (ms) {
    long n = atol(ms);
    struct timespec t = {n / 1000, (n % 1000) * 1000000L};
    nanosleep(&t, NULL);
  }
  const char* crash = getenv("FAKE_NVRTC_CRASH");
  if (crash && *crash && strstr(p->src, crash)) raise(SIGKILL);
  const char* fail = getenv("FAKE_NVRTC_FAIL");
  if (fail && *fail && strstr(p->src, fail)) {
    snprintf(p->log, sizeof p->log, "%s(1): error: fake compile error", p->name);
    return 6; /* NVRTC_ERROR_COMPILATION */
  }
  uint64_t h = fnv(1469598103934665603ull, p->src);
  for (int i = 0; i < numOptions; i++) h = fnv(h, options[i]);
  snprintf(p->cubin, sizeof p->cubin, "FAKECUBIN %s %016llx", p->name, (unsigned long long)h);
  snprintf(p->log, sizeof p->log, "ptxas info    : fake");
  return 0;
}

int nvrtcGetProgramLogSize(void* prog, size_t* size) {
  *size = strlen(((Prog*)prog)->log) + 1;
  return 0;
}

int nvrtcGetProgramLog(void* prog, void* log) {
  strcpy(log, ((Prog*)prog)->log);
  return 0;
}

int nvrtcGetCUBINSize(void* prog, size_t* size) {
  *size = strlen(((Prog*)prog)->cubin);
  return 0;
}

int nvrtcGetCUBIN(void* prog, void* cubin) {
  memcpy(cubin, ((Prog*)prog)->cubin, strlen(((Prog*)prog)->cubin));
  return 0;
}

int nvrtcDestroyProgram(void** prog) {
  Prog* p = *prog;
  free(p->src);
  free(p->name);
  free(p);
  *prog = NULL;
  return 0;
}

const char* nvrtcGetErrorString(int code) {
  return code == 6 ? "NVRTC_ERROR_COMPILATION" : code ? "NVRTC_ERROR" : "NVRTC_SUCCESS";
}
