// What the read syscall of a stream transport costs, apart from Python: one
// process sends a message over TCP loopback and reads it back on the other
// end, N times, with one of four reads. Prints the process's CPU time per
// send+read pair (best of 5 rounds). The send is the same in every mode, so
// differences between modes are the read's.
//
//   mode 0: readv() with two pieces (a kept bytes object of the message's
//           size, then the shared buffer), tokioloop's read before 2026-12-06
//   mode 1: recv() into the shared buffer
//   mode 2: recv() into the shared buffer, then a copy of the message into
//           the kept object (tokioloop's read for kept objects <= 8 KiB)
//   mode 3: recvmsg() with the same two pieces as mode 0
//
//   gcc -O2 -o /tmp/recv_vs_readv benchmarks/recv_vs_readv.c
//   for m in 0 1 2 3; do taskset -c 1 /tmp/recv_vs_readv $m 1024; done
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define BIG (256 * 1024)

static double cpu_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s MODE SIZE [N]\n", argv[0]);
    return 2;
  }
  int mode = atoi(argv[1]), size = atoi(argv[2]);
  int n = argc > 3 ? atoi(argv[3]) : 200000;
  if (size <= 0 || size > 65536 || mode < 0 || mode > 3) {
    fprintf(stderr, "MODE 0-3, SIZE 1-65536\n");
    return 2;
  }
  int lsock = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  if (bind(lsock, (void *)&a, sizeof a) || listen(lsock, 1) ||
      getsockname(lsock, (void *)&a, &alen)) {
    perror("listen");
    return 1;
  }
  int c = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(c, (void *)&a, sizeof a)) {
    perror("connect");
    return 1;
  }
  int s = accept(lsock, 0, 0);
  int one = 1;
  setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

  static char msg[65536], spare[65536], big[BIG];
  memset(msg, 'x', size);
  struct iovec iov[2] = {{spare, size}, {big, BIG - size}};
  double best = 1e9;
  for (int round = 0; round < 5; round++) {
    double t0 = cpu_now();
    for (int i = 0; i < n; i++) {
      if (send(c, msg, size, 0) != size) {
        perror("send");
        return 1;
      }
      ssize_t k;
      if (mode == 0) {
        k = readv(s, iov, 2);
      } else if (mode == 3) {
        struct msghdr m = {0};
        m.msg_iov = iov;
        m.msg_iovlen = 2;
        k = recvmsg(s, &m, 0);
      } else {
        k = recv(s, big, BIG, 0);
        if (mode == 2 && k == size)
          memcpy(spare, big, k);
      }
      if (k != size) {
        fprintf(stderr, "short read %zd\n", k);
        return 1;
      }
    }
    double d = cpu_now() - t0;
    if (d < best)
      best = d;
  }
  printf("mode %d, %d bytes: %.1f ns per send+read\n", mode, size, best / n * 1e9);
  return 0;
}
