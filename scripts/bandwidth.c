// Memory read bandwidth with N threads: the physical floor of decoding is weight bytes / this.
// Each thread sums its share of a buffer far larger than the caches, several times; the best
// pass counts. Built and run by scripts/bench_cpu.sh:  cc -O3 [-mavx2|-mavx512f] -pthread
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static size_t share;
static uint64_t *buf;
static volatile uint64_t sink;

static void *reader(void *arg) {
  uint64_t *p = buf + (size_t)arg * share;
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (size_t i = 0; i + 4 <= share; i += 4) {
    s0 += p[i]; s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3];
  }
  sink += s0 + s1 + s2 + s3;
  return NULL;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1;
  size_t bytes = (size_t)1 << 30;
  size_t words = bytes / 8;
  share = words / threads;
  buf = malloc(bytes);
  memset(buf, 1, bytes);
  double best = 0;
  for (int pass = 0; pass < 5; pass++) {
    pthread_t t[64];
    double start = now();
    for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, reader, (void *)i);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    double gbs = share * threads * 8 / (now() - start) / 1e9;
    if (gbs > best) best = gbs;
  }
  printf("%.1f\n", best);
  return 0;
}
