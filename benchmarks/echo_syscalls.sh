#!/usr/bin/env bash
# Syscalls per request of each echo server, counted by the kernel (perf's
# syscall tracepoints; needs root or perf_event_paranoid <= -1), with the
# server's CPU per request from the same window. What a server does per
# request (read, write, how many epoll waits) shows here exactly, where
# echo_bench.py's CPU figures move by +-10% between runs. Counting adds its own
# cost to every syscall: the CPU figures here are higher than echo_bench.py's
# and compare only with each other.
#
#   benchmarks/echo_syscalls.sh [LOOPS] [MODE] [SIZE] [ROUNDS]
#   benchmarks/echo_syscalls.sh tokioloop,uvloop,rloop protocol 1024 3
#
# LOOPS: comma-separated, as echo_bench.py's --loops; MODE: sock, streams,
# protocol or buffered; SIZE in bytes. Each server gets a priming run first
# (as echo_bench.py does: rloop allocates through mmap per request until
# glibc's mmap threshold has adapted), then a 3 s window is counted while the
# load generator (10 connections, closed loop) runs. Server on CPU 1, load
# generator on CPU 0. Rounds alternate over the loops.
set -euo pipefail
cd "$(dirname "$0")/.."
LOOPS=${1:-tokioloop,uvloop,rloop}
MODE=${2:-protocol}
SIZE=${3:-1024}
ROUNDS=${4:-1}
PY=${PYTHON:-python3}
LG=benchmarks/loadgen/target/release/loadgen
[ -x "$LG" ] || cargo build -q --release --manifest-path benchmarks/loadgen/Cargo.toml
command -v perf >/dev/null || { echo "perf not found" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"; kill $(jobs -p) 2>/dev/null || true' EXIT
EVENTS=raw_syscalls:sys_enter
for s in read readv recvfrom recvmsg write writev sendto sendmsg epoll_wait epoll_pwait epoll_ctl futex mmap munmap; do
  EVENTS+=",syscalls:sys_enter_$s"
done
EVENTS+=",task-clock"

for round in $(seq "$ROUNDS"); do
  for loop in ${LOOPS//,/ }; do
    taskset -c 1 "$PY" benchmarks/echo_bench.py --server --server-loop "$loop" \
      --server-mode "$MODE" --host 127.0.0.1 >"$TMP/srv" 2>&1 &
    SP=$!
    for _ in $(seq 100); do grep -q '^PORT ' "$TMP/srv" && break; sleep 0.1; done
    PORT=$(sed -n 's/^PORT //p' "$TMP/srv" | head -1)
    [ -n "$PORT" ] || { echo "$loop: server did not start:" >&2; cat "$TMP/srv" >&2; exit 1; }
    # priming: connections opened, used, closed
    taskset -c 0 "$LG" client --port "$PORT" --conns 10 --size "$SIZE" --warmup 0.2 --duration 1 >/dev/null
    taskset -c 0 "$LG" client --port "$PORT" --conns 10 --size "$SIZE" --warmup 0.3 --duration 4.2 >/dev/null &
    LP=$!
    sleep 0.8
    perf stat -x, -e "$EVENTS" -p "$SP" -- sleep 3 2>"$TMP/stat" >/dev/null
    wait "$LP"
    kill "$SP"; wait "$SP" 2>/dev/null || true
    "$PY" - "$loop" "$MODE" "$SIZE" "$TMP/stat" <<'PY'
import sys
loop, mode, size, path = sys.argv[1:5]
counts = {}
for line in open(path):
    parts = line.strip().split(",")
    if len(parts) < 3 or line.startswith("#"):
        continue
    try:
        value = float(parts[0])
    except ValueError:
        continue
    counts[parts[2].split(":")[-1].replace("sys_enter_", "")] = value
sends = sum(counts.get(k, 0) for k in ("write", "writev", "sendto", "sendmsg"))
if not sends:
    sys.exit(f"{loop}: no writes counted (perf tracepoints unavailable?)")
cpu_ms = counts.pop("task-clock", 0.0)
total = counts.pop("sys_enter", 0.0)
shown = " ".join(f"{k} {v / sends:.2f}" for k, v in counts.items() if v)
print(f"{loop:10} {mode} {size} B: {sends / 3:,.0f} req/s, {cpu_ms * 1e3 / sends:.2f} us CPU/req, "
      f"{total / sends:.2f} syscalls/req ({shown})")
PY
  done
done
