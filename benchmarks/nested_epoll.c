// What tokioloop's nested epoll costs the kernel: a minimal C echo server
// (one thread, pinned to CPU 1) waits either on one flat epoll set with the
// connections in it, or, as tokioloop does, on an outer set (tokio's) that
// holds the inner set edge-triggered, then takes the events from the inner
// set with a zero timeout. A client thread on CPU 0 runs request/response
// loops over TCP loopback. Prints the server thread's CPU per request.
//
//   gcc -O2 -o /tmp/nested_epoll benchmarks/nested_epoll.c -lpthread
//   /tmp/nested_epoll 0 10 200000   # flat, 10 connections, 200,000 requests
//   /tmp/nested_epoll 1 10 200000   # nested
#define _GNU_SOURCE
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fcntl.h>
#include <time.h>
static int N = 200000, SIZE = 1024, CONNS = 1;
static int port;
static void pin(int cpu){cpu_set_t s;CPU_ZERO(&s);CPU_SET(cpu,&s);sched_setaffinity(0,sizeof s,&s);}
static void *client(void *a){
  pin(0);
  int fds[64]; char buf[65536]; memset(buf,'x',SIZE);
  for(int i=0;i<CONNS;i++){fds[i]=socket(AF_INET,SOCK_STREAM,0);struct sockaddr_in sa={.sin_family=AF_INET,.sin_port=htons(port),.sin_addr.s_addr=htonl(0x7f000001)};
    if(connect(fds[i],(void*)&sa,sizeof sa)){perror("connect");exit(1);} int one=1;setsockopt(fds[i],IPPROTO_TCP,TCP_NODELAY,&one,4);}
  for(int r=0;r<N/CONNS;r++){
    for(int i=0;i<CONNS;i++) write(fds[i],buf,SIZE);
    for(int i=0;i<CONNS;i++){int got=0;while(got<SIZE){int n=read(fds[i],buf,SIZE-got);if(n<=0)exit(2);got+=n;}}
  }
  for(int i=0;i<CONNS;i++) close(fds[i]);
  return 0;
}
int main(int argc,char**argv){
  int nested=atoi(argv[1]); if(argc>2)CONNS=atoi(argv[2]); if(argc>3)N=atoi(argv[3]);
  pin(1);
  int ls=socket(AF_INET,SOCK_STREAM,0);struct sockaddr_in sa={.sin_family=AF_INET,.sin_addr.s_addr=htonl(0x7f000001)};
  bind(ls,(void*)&sa,sizeof sa);listen(ls,128);socklen_t sl=sizeof sa;getsockname(ls,(void*)&sa,&sl);port=ntohs(sa.sin_port);
  pthread_t t;pthread_create(&t,0,client,0);
  int inner=epoll_create1(0), outer=epoll_create1(0);
  for(int i=0;i<CONNS;i++){int c=accept(ls,0,0);fcntl(c,F_SETFL,O_NONBLOCK);int one=1;setsockopt(c,IPPROTO_TCP,TCP_NODELAY,&one,4);
    struct epoll_event ev={.events=EPOLLIN,.data.fd=c};epoll_ctl(inner,EPOLL_CTL_ADD,c,&ev);}
  if(nested){struct epoll_event ev={.events=EPOLLIN|EPOLLET,.data.fd=inner};epoll_ctl(outer,EPOLL_CTL_ADD,inner,&ev);}
  struct rusage r0,r1;getrusage(RUSAGE_THREAD,&r0);
  struct timespec w0,w1;clock_gettime(CLOCK_MONOTONIC,&w0);
  char buf[65536];struct epoll_event evs[64];long done=0,waits=0;int open=CONNS;
  while(open>0){
    int n;
    if(nested){struct epoll_event o;epoll_wait(outer,&o,1,-1);waits++;n=epoll_wait(inner,evs,64,0);}
    else {n=epoll_wait(inner,evs,64,-1);}
    waits++;
    for(int i=0;i<n;i++){int fd=evs[i].data.fd;int m=read(fd,buf,sizeof buf);if(m<=0){epoll_ctl(inner,EPOLL_CTL_DEL,fd,0);close(fd);open--;continue;}
      send(fd,buf,m,MSG_NOSIGNAL);done++;}
  }
  getrusage(RUSAGE_THREAD,&r1);clock_gettime(CLOCK_MONOTONIC,&w1);
  double us=(r1.ru_utime.tv_sec-r0.ru_utime.tv_sec)*1e6+(r1.ru_utime.tv_usec-r0.ru_utime.tv_usec), sy=(r1.ru_stime.tv_sec-r0.ru_stime.tv_sec)*1e6+(r1.ru_stime.tv_usec-r0.ru_stime.tv_usec);
  printf("%s conns=%d reads=%ld user %.2f sys %.2f total %.2f us/req, epoll_wait/req %.2f, wall %.2f us/req\n",nested?"nested":"flat  ",CONNS,done,us/done,sy/done,(us+sy)/done,(double)waits/done,((w1.tv_sec-w0.tv_sec)*1e9+(w1.tv_nsec-w0.tv_nsec))/1e3/done);
  pthread_join(t,0);return 0;}
