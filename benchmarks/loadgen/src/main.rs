//! Echo load generator and plain-tokio reference echo server.
//!
//! Used by `benchmarks/echo_bench.py`; also usable by hand:
//!
//! ```text
//! loadgen server [--host 127.0.0.1] [--port 0] [--buf 262144]
//!     Plain tokio echo server on a current-thread runtime (one thread, like an
//!     asyncio loop).  Prints `PORT <n>` on stdout once listening.
//!
//! loadgen client --port P [--host 127.0.0.1] [--conns 10] [--size 1024]
//!                [--warmup 0.5] [--duration 3] [--requests N]
//!                [--rate R] [--server-pid PID] [--timeout 60]
//!     N connections, each doing request/response round trips of `size` bytes
//!     (write the message, read back exactly `size` bytes) in a loop.  After
//!     `warmup` seconds the measured window starts; it ends after `duration`
//!     seconds, or after `requests` round trips if given.  With `--rate R` the
//!     connections are paced to R round trips/s in total (each connection
//!     waits for its next slot, staggered; tokio timers have 1 ms resolution,
//!     so requests due in the same millisecond go out together); without it
//!     every connection sends its next request as soon as the echo is back
//!     (closed loop, as fast as the server goes).  Prints one JSON
//!     object on stdout: requests, seconds, requests/s, latency percentiles
//!     (microseconds), and, with --server-pid, the server's CPU time in the
//!     window read from /proc/<pid>/stat (utime+stime, all threads; stime
//!     alone as server_sys_cpu_s) and from
//!     /proc/<pid>/task/*/schedstat (nanosecond run time, all threads), and
//!     `cpu_busy`: each CPU's user+nice+system share of the window from
//!     /proc/stat (minus the server's and loadgen's own shares = other load).
//! ```
//!
//! loadgen udp-server [--host 127.0.0.1] [--port 0] [--count N]
//!     Plain tokio UDP echo server (one thread); prints `PORT <n>`; with
//!     --count, exits after N datagrams.
//!
//! `client --udp 1` does the same round trips over UDP: each "connection" is a
//! connected UDP socket sending one datagram of `size` bytes and waiting for
//! its echo (a datagram not echoed within 200 ms counts as lost and is sent
//! again; `lost` in the JSON).
//!
//! The client runs on a tokio current-thread runtime: pin it to one CPU and the
//! server to another.  Its own CPU use in the window is reported as
//! `client_cpu_s` / `client_util` so a saturated load generator is visible.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Notify;

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

fn usage() -> ! {
    eprintln!(
        "usage:\n  loadgen server [--host H] [--port P] [--buf BYTES]\n  \
         loadgen client --port P [--host H] [--conns N] [--size BYTES] [--warmup S] \
         [--duration S] [--requests N] [--rate R] [--server-pid PID] [--timeout S] [--udp 1]\n  \
         loadgen udp-server [--host H] [--port P]"
    );
    std::process::exit(2);
}

struct Args {
    kv: Vec<(String, String)>,
}

impl Args {
    fn parse(rest: &[String]) -> Args {
        let mut kv = Vec::new();
        let mut it = rest.iter();
        while let Some(k) = it.next() {
            let Some(name) = k.strip_prefix("--") else {
                eprintln!("unexpected argument {k:?}");
                usage();
            };
            let (name, val) = match name.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => match it.next() {
                    Some(v) => (name.to_string(), v.clone()),
                    None => {
                        eprintln!("--{name} needs a value");
                        usage();
                    }
                },
            };
            kv.push((name, val));
        }
        Args { kv }
    }

    fn get<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.kv.iter().rev().find(|(k, _)| k == name).map(|(_, v)| {
            v.parse().unwrap_or_else(|_| {
                eprintln!("bad value for --{name}: {v:?}");
                usage();
            })
        })
    }

    fn check_known(&self, known: &[&str]) {
        for (k, _) in &self.kv {
            if !known.contains(&k.as_str()) {
                eprintln!("unknown option --{k}");
                usage();
            }
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.len() < 2 {
        usage();
    }
    let args = Args::parse(&argv[2..]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match argv[1].as_str() {
        "server" => {
            args.check_known(&["host", "port", "buf"]);
            match rt.block_on(server(args)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("server error: {e}");
                    1
                }
            }
        }
        "udp-server" => {
            args.check_known(&["host", "port", "count"]);
            match rt.block_on(udp_server(args)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("server error: {e}");
                    1
                }
            }
        }
        "client" => {
            args.check_known(&[
                "host",
                "port",
                "conns",
                "size",
                "warmup",
                "duration",
                "requests",
                "rate",
                "server-pid",
                "timeout",
                "udp",
            ]);
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, client(args))
        }
        "-h" | "--help" | "help" => usage(),
        other => {
            eprintln!("unknown command {other:?}");
            usage();
        }
    };
    std::process::exit(code);
}

// ---------------------------------------------------------------- server

async fn server(args: Args) -> io::Result<()> {
    let host: String = args.get("host").unwrap_or_else(|| "127.0.0.1".into());
    let port: u16 = args.get("port").unwrap_or(0);
    let buf_size: usize = args.get("buf").unwrap_or(256 * 1024);
    let listener = TcpListener::bind((host.as_str(), port)).await?;
    println!("PORT {}", listener.local_addr()?.port());
    use std::io::Write;
    std::io::stdout().flush()?;
    loop {
        let (mut sock, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = sock.set_nodelay(true);
            let mut buf = vec![0u8; buf_size];
            loop {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if sock.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
}

async fn udp_server(args: Args) -> io::Result<()> {
    let host: String = args.get("host").unwrap_or_else(|| "127.0.0.1".into());
    let port: u16 = args.get("port").unwrap_or(0);
    let sock = UdpSocket::bind((host.as_str(), port)).await?;
    println!("PORT {}", sock.local_addr()?.port());
    use std::io::Write;
    std::io::stdout().flush()?;
    // --count N: exit after N datagrams (for instruction counts).
    let mut left: u64 = args.get("count").unwrap_or(0);
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = sock.recv_from(&mut buf).await?;
        sock.send_to(&buf[..n], peer).await?;
        if left > 0 {
            left -= 1;
            if left == 0 {
                return Ok(());
            }
        }
    }
}

// ---------------------------------------------------------------- client

struct State {
    phase: Cell<u8>,
    count: Cell<u64>,
    target: Option<u64>,
    done: Notify,
    lost: Cell<u64>,
}

/// Where a round trip goes: a TCP connection or a connected UDP socket.
enum Conn {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

/// One UDP round trip: send `msg`, wait for its echo (sent again after
/// 200 ms without one, counted in `lost`).
async fn udp_round_trip(
    sock: &UdpSocket,
    msg: &[u8],
    rbuf: &mut [u8],
    state: &State,
) -> io::Result<()> {
    loop {
        sock.send(msg).await?;
        match tokio::time::timeout(Duration::from_millis(200), sock.recv(rbuf)).await {
            Ok(Ok(n)) if n == msg.len() => return Ok(()),
            Ok(Ok(n)) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("echo of {n} bytes, sent {}", msg.len()),
                ))
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                state.lost.set(state.lost.get() + 1);
                if state.phase.get() == STOP {
                    return Ok(());
                }
            }
        }
    }
}

/// One connection's loop; returns the latencies (ns) of round trips that
/// completed inside the measured window.
async fn conn_loop(
    conn: Conn,
    size: usize,
    state: Rc<State>,
    pace: Option<(Duration, Duration)>,
) -> io::Result<Vec<u64>> {
    let (mut stream, udp) = match conn {
        Conn::Tcp(s) => (Some(s), None),
        Conn::Udp(u) => (None, Some(u)),
    };
    if let Some(s) = &stream {
        s.set_nodelay(true)?;
    }
    let mut halves = stream.as_mut().map(|s| s.split());
    let msg: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let mut rbuf = vec![0u8; size];
    let mut lat = Vec::with_capacity(1 << 16);
    let mut done_any = false;
    // Paced mode: (interval between this connection's requests, first offset).
    let mut next = pace.map(|(_, offset)| tokio::time::Instant::now() + offset);
    loop {
        if state.phase.get() == STOP {
            break;
        }
        if let (Some(due), Some((interval, _))) = (next.as_mut(), pace) {
            let now = tokio::time::Instant::now();
            if *due > now {
                tokio::time::sleep_until(*due).await;
            } else if now - *due > interval * 10 {
                *due = now; // far behind (server too slow): drop the debt
            }
            *due += interval;
            if state.phase.get() == STOP {
                break;
            }
        }
        // Latency is measured from the actual send, not from the slot.
        let t = Instant::now();
        // Write and read concurrently: a 100 KiB message need not fit in the
        // socket buffers, and a server may start echoing before it has it all.
        match (&mut halves, &udp) {
            (Some((rd, wr)), _) => {
                let (w, r) = tokio::join!(wr.write_all(&msg), rd.read_exact(&mut rbuf));
                w?;
                r?;
            }
            (None, Some(u)) => udp_round_trip(u, &msg, &mut rbuf, &state).await?,
            (None, None) => break,
        }
        done_any = true;
        let ns = t.elapsed().as_nanos() as u64;
        if state.phase.get() == MEASURE {
            lat.push(ns);
            let c = state.count.get() + 1;
            state.count.set(c);
            if state.target.is_some_and(|n| c >= n) {
                state.phase.set(STOP);
                state.done.notify_one();
            }
        }
    }
    if done_any && rbuf[..] != msg[..] {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "echo mismatch"));
    }
    Ok(lat)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (utime, stime) of a process (all threads), seconds, from /proc/<pid>/stat.
fn proc_stat_cpu(pid: u32) -> Option<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // after ')' field 0 is `state` (field 3 of stat); utime is field 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime as f64 / clk_tck(), stime as f64 / clk_tck()))
}

/// Sum of run time (ns resolution) of all threads of a process, seconds,
/// from /proc/<pid>/task/*/schedstat (first field).
fn proc_sched_cpu(pid: u32) -> Option<f64> {
    let mut total: u64 = 0;
    for ent in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let p = ent.ok()?.path().join("schedstat");
        if let Ok(s) = std::fs::read_to_string(p) {
            total += s.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(total as f64 / 1e9)
}

/// Per-CPU busy time in process context (user+nice+system, clock ticks
/// converted to seconds; irq/softirq/idle/iowait/steal excluded), from /proc/stat.
fn cpus_busy() -> Vec<f64> {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    let tck = clk_tck();
    let mut out = Vec::new();
    for line in s.lines() {
        let mut f = line.split_whitespace();
        let Some(name) = f.next() else { continue };
        if name.len() <= 3 || !name.starts_with("cpu") {
            continue;
        }
        let Ok(idx) = name[3..].parse::<usize>() else {
            continue;
        };
        let v: Vec<u64> = f.take(3).filter_map(|x| x.parse().ok()).collect();
        if v.len() == 3 {
            if out.len() <= idx {
                out.resize(idx + 1, 0.0);
            }
            out[idx] = (v[0] + v[1] + v[2]) as f64 / tck;
        }
    }
    out
}

fn self_cpu() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn fail(msg: &str) -> i32 {
    println!("{{\"error\": {}}}", json_str(msg));
    1
}

fn opt_num(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => "null".into(),
    }
}

async fn client(args: Args) -> i32 {
    let host: String = args.get("host").unwrap_or_else(|| "127.0.0.1".into());
    let Some(port) = args.get::<u16>("port") else {
        eprintln!("client needs --port");
        usage();
    };
    let conns: usize = args.get("conns").unwrap_or(10).max(1);
    let size: usize = args.get("size").unwrap_or(1024).max(1);
    let warmup: f64 = args.get("warmup").unwrap_or(0.5);
    let duration: f64 = args.get("duration").unwrap_or(3.0);
    let requests: Option<u64> = args.get("requests");
    let server_pid: Option<u32> = args.get("server-pid");
    let timeout: f64 = args.get("timeout").unwrap_or(60.0);
    let rate: Option<f64> = args.get::<f64>("rate").filter(|r| *r > 0.0);

    let state = Rc::new(State {
        phase: Cell::new(WARMUP),
        count: Cell::new(0),
        target: requests,
        done: Notify::new(),
        lost: Cell::new(0),
    });
    let udp = args.get::<u8>("udp").unwrap_or(0) != 0;

    // Connect everything first.
    let mut streams = Vec::with_capacity(conns);
    for _ in 0..conns {
        let c = tokio::time::timeout(Duration::from_secs(10), async {
            if udp {
                let u = UdpSocket::bind((host.as_str(), 0)).await?;
                u.connect((host.as_str(), port)).await?;
                Ok(Conn::Udp(u))
            } else {
                TcpStream::connect((host.as_str(), port))
                    .await
                    .map(Conn::Tcp)
            }
        })
        .await;
        match c {
            Ok(Ok(s)) => streams.push(s),
            Ok(Err(e)) => return fail(&format!("connect to {host}:{port}: {e}")),
            Err(_) => return fail(&format!("connect to {host}:{port}: timed out")),
        }
    }
    let errors: Rc<RefCell<Vec<String>>> = Rc::new(RefCell::new(Vec::new()));
    let mut handles = Vec::with_capacity(conns);
    for (i, s) in streams.into_iter().enumerate() {
        let st = state.clone();
        let errs = errors.clone();
        let pace = rate.map(|r| {
            let interval = Duration::from_secs_f64(conns as f64 / r);
            (interval, interval.mul_f64(i as f64 / conns as f64))
        });
        handles.push(tokio::task::spawn_local(async move {
            match conn_loop(s, size, st.clone(), pace).await {
                Ok(l) => l,
                Err(e) => {
                    errs.borrow_mut().push(e.to_string());
                    // One broken connection ends the run.
                    st.phase.set(STOP);
                    st.done.notify_one();
                    Vec::new()
                }
            }
        }));
    }

    // Warm-up, then the measured window.
    let deadline = Instant::now() + Duration::from_secs_f64(warmup + duration.max(0.0) + timeout);
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    if state.phase.get() == STOP {
        let e = errors.borrow().first().cloned().unwrap_or_default();
        return fail(&format!("connection failed during warm-up: {e}"));
    }
    let srv0 = server_pid.and_then(proc_stat_cpu);
    let sch0 = server_pid.and_then(proc_sched_cpu);
    let me0 = self_cpu();
    let busy0 = cpus_busy();
    let t0 = Instant::now();
    state.phase.set(MEASURE);
    let mut timed_out = false;
    match requests {
        Some(_) => {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(remaining, state.done.notified())
                .await
                .is_err()
            {
                timed_out = true;
            }
        }
        None => {
            let end = tokio::time::sleep(Duration::from_secs_f64(duration));
            tokio::select! {
                _ = end => {}
                _ = state.done.notified() => {}
            }
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let srv1 = server_pid.and_then(proc_stat_cpu);
    let sch1 = server_pid.and_then(proc_sched_cpu);
    let me1 = self_cpu();
    let busy1 = cpus_busy();
    let count = state.count.get();
    state.phase.set(STOP);

    // Let the connections finish their round trip in flight.
    let mut lat: Vec<u64> = Vec::with_capacity(count as usize);
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(5));
    let joined = tokio::time::timeout(remaining, async {
        for h in handles {
            if let Ok(v) = h.await {
                lat.extend(v);
            }
        }
    })
    .await;
    if joined.is_err() {
        timed_out = true;
    }
    if let Some(e) = errors.borrow().first() {
        return fail(&format!(
            "connection error: {e} ({} connection(s) failed)",
            errors.borrow().len()
        ));
    }
    if timed_out {
        return fail(&format!(
            "timed out (server stalled?) after {count} measured requests"
        ));
    }
    if count == 0 {
        return fail("no request completed in the measured window");
    }

    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        let i = ((p / 100.0) * (lat.len() as f64 - 1.0)).round() as usize;
        lat[i.min(lat.len() - 1)] as f64 / 1000.0
    };
    let mean = lat.iter().map(|&x| x as f64).sum::<f64>() / lat.len() as f64 / 1000.0;
    let (srv_cpu, srv_sys) = match (srv0, srv1) {
        (Some(a), Some(b)) => (Some(b.0 + b.1 - a.0 - a.1), Some(b.1 - a.1)),
        _ => (None, None),
    };
    let sch_cpu = match (sch0, sch1) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let me = me1 - me0;
    let cpu_busy: Vec<String> = busy0
        .iter()
        .zip(busy1.iter())
        .map(|(a, b)| format!("{}", ((b - a) / elapsed * 1000.0).round() / 1000.0))
        .collect();
    let rps = count as f64 / elapsed;
    println!(
        "{{\"requests\": {count}, \"seconds\": {elapsed}, \"rps\": {rps}, \
         \"conns\": {conns}, \"size\": {size}, \"target_rps\": {trps}, \
         \"mbytes_per_s\": {mb}, \
         \"latency_us\": {{\"mean\": {mean}, \"p50\": {p50}, \"p90\": {p90}, \"p99\": {p99}, \
         \"p999\": {p999}, \"max\": {max}}}, \
         \"server_cpu_s\": {scpu}, \"server_sys_cpu_s\": {ssys}, \"server_sched_cpu_s\": {ssch}, \
         \"server_cpu_us_per_req\": {scpr}, \"server_sched_cpu_us_per_req\": {sschr}, \
         \"server_util\": {sutil}, \
         \"client_cpu_s\": {me}, \"client_util\": {cutil}, \
         \"client_cpu_us_per_req\": {cpr}, \
         \"lost\": {lost}, \"cpu_busy\": [{busy}]}}",
        mb = rps * size as f64 * 2.0 / 1e6,
        trps = opt_num(rate),
        p50 = pct(50.0),
        p90 = pct(90.0),
        p99 = pct(99.0),
        p999 = pct(99.9),
        max = *lat.last().unwrap() as f64 / 1000.0,
        scpu = opt_num(srv_cpu),
        ssys = opt_num(srv_sys),
        ssch = opt_num(sch_cpu),
        scpr = opt_num(srv_cpu.map(|c| c * 1e6 / count as f64)),
        sschr = opt_num(sch_cpu.map(|c| c * 1e6 / count as f64)),
        sutil = opt_num(srv_cpu.map(|c| c / elapsed)),
        cutil = me / elapsed,
        busy = cpu_busy.join(", "),
        lost = state.lost.get(),
        cpr = me * 1e6 / count as f64,
    );
    0
}
