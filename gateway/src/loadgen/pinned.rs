//! `kakehashi bench --pin`: the server alone. Every server runs in a process of its own
//! pinned to core 0 and this process, the load generator, to core 1, so that what a
//! server costs is its own CPU time, not a share of a machine it fights its clients
//! for. Contestants: the gateway (audited reads), the same gateway unaudited
//! (benchmark builds), nginx as a mutual-TLS proxy in front of a plain upstream
//! serving the same bytes (where nginx is installed), and the bare baseline (tokio +
//! hyper + rustls, client certificates required). Each round runs each contestant in
//! turn; each row gives requests/s, latency percentiles, the server's CPU µs per
//! request (from its processes' own CPU time) and bytes written to disk per request
//! (`/proc/PID/io`). Then the gateway at half its saturating rate (open loop, latency
//! from the moment each request was due) and with reads arriving one at a time.

use super::scenario::{self, one, GroupCommits, Spread, Workload};
use super::{run, LoadReport, LoadSpec, Mode};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Workload.
    pub workload: Workload,
    /// Concurrent keep-alive clients.
    pub connections: usize,
    /// Seconds per run.
    pub duration: Duration,
    /// Rounds (each runs every contestant).
    pub rounds: usize,
    /// A first, unreported run of every contestant, this long.
    pub warmup: Duration,
    /// Database of the gateways (default: SQLite in the temporary directory).
    pub database_url: Option<String>,
    /// The `kakehashi` executable the servers run (benchmark build for the unaudited row).
    pub exe: PathBuf,
}

/// A contestant's medians over the rounds.
#[derive(Debug, Clone)]
pub struct Summary {
    /// gateway, unaudited, nginx or baseline.
    pub name: &'static str,
    /// Requests per second.
    pub rate: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Server CPU µs per request.
    pub cpu_us: f64,
    /// Bytes the server wrote to disk per request.
    pub written: f64,
    /// Failed requests over all rounds.
    pub errors: u64,
}

/// Pin the calling thread (and the threads it starts later) to `core`.
pub fn pin_to(core: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes within it, and
    // sched_setaffinity reads exactly its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Pin this process's thread to core 1 (before its runtime starts, so that every
/// thread inherits it): the servers get core 0 to themselves.
pub fn pin_load_generator() -> Result<(), String> {
    if usable_cores() < 2 {
        return Err("--pin needs two cores: the servers on one, the load generator on the other".into());
    }
    pin_to(1).map_err(|e| format!("cannot pin the load generator to core 1: {e}"))
}

/// Cores this process may run on.
pub fn usable_cores() -> usize {
    // SAFETY: as in `pin_to`; sched_getaffinity fills the set it is given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 1;
        }
        libc::CPU_COUNT(&set) as usize
    }
}

/// A server process (and what it starts), pinned to core 0.
struct Server {
    name: &'static str,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    children: Vec<Child>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SIGTERM first: the gateway drains and closes its store.
            // SAFETY: kill(2) with a pid this process started and has not reaped.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// CPU time and bytes written to disk by a set of processes.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu: Duration,
    written: u64,
}

impl Server {
    /// Start `cmd` pinned to core 0 (the load generator holds core 1).
    fn spawn(&mut self, mut cmd: Command) -> Result<(), String> {
        use std::os::unix::process::CommandExt;
        // What a server says goes to a log beside the federation (read it when a row
        // looks wrong); the harness's own output stays a report.
        let log = std::fs::File::create(std::env::temp_dir().join(format!("kakehashi-pinned-{}.log", self.name)))
            .map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null()).stdout(log).stderr(err);
        // SAFETY: only async-signal-safe calls between fork and exec (sched_setaffinity).
        unsafe {
            cmd.pre_exec(|| pin_to(0));
        }
        let child = cmd.spawn().map_err(|e| format!("{}: {e}", self.name))?;
        self.children.push(child);
        Ok(())
    }

    /// The servers' processes and their children (nginx's worker).
    fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.children.iter().map(Child::id).collect();
        let Ok(entries) = std::fs::read_dir("/proc") else { return pids };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            let ppid =
                stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().nth(1)?.parse::<u32>().ok()).unwrap_or(0);
            if pids.contains(&ppid) && !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        pids
    }

    fn usage(&self) -> Usage {
        let mut u = Usage::default();
        for pid in self.pids() {
            if let Some(cpu) =
                std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| super::cpu_from_stat(&s))
            {
                u.cpu += cpu;
            }
            if let Ok(io) = std::fs::read_to_string(format!("/proc/{pid}/io")) {
                u.written +=
                    io.lines().find_map(|l| l.strip_prefix("write_bytes:")?.trim().parse::<u64>().ok()).unwrap_or(0);
            }
        }
        u
    }

    /// Wait until the server accepts connections.
    async fn ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            for c in &mut self.children {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!("{} exited at start: {status}", self.name));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("{} did not listen on {} within 60 s", self.name, self.addr))
    }
}

/// Free loopback ports, handed out one by one: all are bound at once when the harness
/// starts, as a port let go may be handed out again by the next bind.
struct Ports(Vec<SocketAddr>);

impl Ports {
    fn new(n: usize) -> Result<Ports, String> {
        let held: Vec<std::net::TcpListener> = (0..n)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        Ok(Ports(held.iter().map(|l| l.local_addr()).collect::<Result<_, _>>().map_err(|e| e.to_string())?))
    }

    fn next(&mut self) -> Result<SocketAddr, String> {
        self.0.pop().ok_or_else(|| "out of ports".to_string())
    }
}

/// One contestant's run: the load generator's report and what the server spent.
struct Row {
    report: LoadReport,
    usage: Usage,
}

impl Row {
    fn cpu_us(&self) -> f64 {
        self.usage.cpu.as_secs_f64() * 1e6 / self.report.ok.max(1) as f64
    }

    fn written(&self) -> f64 {
        self.usage.written as f64 / self.report.ok.max(1) as f64
    }

    fn line(&self) -> String {
        let q = |p: f64| self.report.latency.value_at_quantile(p) as f64 / 1000.0;
        let errors: u64 = self.report.errors.values().sum();
        format!(
            "{:>8.0} req/s  p50 {:>5.2} ms  p99 {:>6.2} ms  server CPU {:>6.1} µs/req  written {:>7.0} B/req{}",
            self.report.rate(),
            q(0.5),
            q(0.99),
            self.cpu_us(),
            self.written(),
            if errors > 0 { format!("  errors {errors}") } else { String::new() }
        )
    }
}

async fn measure(server: &Server, spec: &LoadSpec) -> Row {
    let before = server.usage();
    let report = run(LoadSpec { addr: server.addr, ..spec.clone() }).await;
    let after = server.usage();
    Row {
        report,
        usage: Usage {
            cpu: after.cpu.saturating_sub(before.cpu),
            written: after.written.saturating_sub(before.written),
        },
    }
}

/// A gateway configuration of the federation in `dir`, listening on fresh ports.
fn gateway_config(
    dir: &Path,
    name: &str,
    database_url: &str,
    ports: &mut Ports,
) -> Result<(PathBuf, SocketAddr, SocketAddr), String> {
    let (listen, admin) = (ports.next()?, ports.next()?);
    let text = std::fs::read_to_string(dir.join("kakehashi.toml")).map_err(|e| e.to_string())?;
    let db_line = text.lines().find(|l| l.starts_with("url = ")).ok_or("no database url")?.to_string();
    let text = text
        .replace("admin_listen = \"127.0.0.1:0\"", &format!("admin_listen = \"{admin}\""))
        .replace("\nlisten = \"127.0.0.1:0\"", &format!("\nlisten = \"{listen}\""))
        .replace(&db_line, &format!("url = \"{database_url}\""))
        // Witnessed as the demo is, so that `audit verify --witness` checks what the
        // benchmark wrote.
        .replace("\n[audit]\n", &format!("\n[audit]\nwitness = \"witness/{name}.log\"\n"));
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok((path, listen, admin))
}

/// nginx as a mutual-TLS proxy (one worker) in front of `upstream`, with the
/// federation's server certificate, CA and CRL.
fn nginx_config(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> Result<PathBuf, String> {
    let root = dir.join("nginx");
    std::fs::create_dir_all(root.join("tmp")).map_err(|e| e.to_string())?;
    let pki = dir.join("pki");
    let text = format!(
        "worker_processes 1;\npid {root}/nginx.pid;\nerror_log {root}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {root}/tmp;\n  proxy_temp_path {root}/tmp;\n\
           fastcgi_temp_path {root}/tmp;\n  uwsgi_temp_path {root}/tmp;\n  scgi_temp_path {root}/tmp;\n\
           keepalive_requests 100000000;\n\
           upstream plain {{ server {upstream}; keepalive 128; }}\n\
           server {{\n    listen {listen} ssl;\n    ssl_protocols TLSv1.3;\n\
             ssl_certificate {pki}/server.pem;\n    ssl_certificate_key {pki}/server.key;\n\
             ssl_client_certificate {pki}/ca.pem;\n    ssl_crl {pki}/ca.crl;\n    ssl_verify_client on;\n\
             location / {{ proxy_pass http://plain; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n\
           }}\n}}\n",
        root = root.display(),
        pki = pki.display(),
    );
    let path = root.join("nginx.conf");
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}

/// `kakehashi audit verify --config CONFIG` (with the witness the configuration names):
/// its report, or an error when the log the benchmark wrote does not verify.
fn verify_log(exe: &Path, config: &Path) -> Result<(), String> {
    let out =
        Command::new(exe).args(["audit", "verify", "--config"]).arg(config).output().map_err(|e| e.to_string())?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(format!("audit verify failed over the benchmark's log: {text}"));
    }
    println!("\naudit verify over the benchmark's log, with its witness:\n{}", text.trim_end());
    Ok(())
}

/// Where nginx is, if it is installed.
fn nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"].iter().map(PathBuf::from).find(|p| p.exists())
}

/// Set up, measure, print (this process already pinned with [`pin_load_generator`]).
pub async fn bench(opts: Options) -> Result<Vec<Summary>, String> {
    let exe = opts.exe.clone();
    let dir = std::env::temp_dir().join(format!("kakehashi-pinned-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _cleanup = scenario::Federation { dir: dir.clone() };
    let sqlite = |name: &str| format!("sqlite://{}/{name}.db", dir.display());
    let db = opts.database_url.clone().unwrap_or_else(|| sqlite("bench"));
    let (pki, _) = scenario::federation(&dir, &db, opts.workload)?;
    let mut ports = Ports::new(8)?;

    // The gateway, audited; then the same gateway unaudited on a store of its own (on
    // SQLite: two processes on one file would wait on each other's locks).
    let (config, listen, admin) = gateway_config(&dir, "audited", &db, &mut ports)?;
    let mut gateway = Server { name: "gateway", addr: listen, admin: Some(admin), children: vec![] };
    let mut cmd = Command::new(&exe);
    cmd.arg("serve").arg("--config").arg(&config).env("RUST_LOG", "warn");
    gateway.spawn(cmd)?;
    gateway.ready().await?;
    let (request, tls) = scenario::prepare(&pki, opts.workload, Mode::H1, gateway.addr).await?;
    let spec = LoadSpec {
        addr: gateway.addr,
        also: vec![],
        mode: Mode::H1,
        connections: opts.connections,
        duration: opts.duration,
        request,
        tls,
        rate_per_client: 0.0,
    };
    let (status, reference) = one(&spec).await?;
    if status != spec.request.expect {
        return Err(format!("the workload's request failed: {}", String::from_utf8_lossy(&reference)));
    }

    let mut servers = vec![gateway];
    if cfg!(feature = "bench") {
        let db = if db.starts_with("sqlite:") { sqlite("unaudited") } else { db.clone() };
        let (config, listen, _) = gateway_config(&dir, "unaudited", &db, &mut ports)?;
        let mut s = Server { name: "unaudited", addr: listen, admin: None, children: vec![] };
        let mut cmd = Command::new(&exe);
        cmd.arg("serve").arg("--config").arg(&config).arg("--danger-unaudited-for-benchmark").env("RUST_LOG", "warn");
        s.spawn(cmd)?;
        s.ready().await?;
        scenario::prepare(&pki, opts.workload, Mode::H1, s.addr).await?;
        servers.push(s);
    }
    let body = dir.join("reference.body");
    std::fs::write(&body, &reference).map_err(|e| e.to_string())?;
    let peer = |listen: SocketAddr, tls: bool| {
        let mut cmd = Command::new(&exe);
        cmd.arg("bench-peer").arg("--listen").arg(listen.to_string()).arg("--body").arg(&body);
        cmd.arg("--status").arg(spec.request.expect.to_string());
        if tls {
            cmd.arg("--tls").arg(dir.join("pki"));
        }
        cmd
    };
    match nginx() {
        Some(nginx) => {
            let (listen, upstream) = (ports.next()?, ports.next()?);
            let conf = nginx_config(&dir, listen, upstream)?;
            let mut s = Server { name: "nginx", addr: listen, admin: None, children: vec![] };
            s.spawn(peer(upstream, false))?;
            let mut cmd = Command::new(nginx);
            cmd.arg("-c").arg(&conf).arg("-g").arg("daemon off;");
            s.spawn(cmd)?;
            s.ready().await?;
            servers.push(s);
        }
        None => println!("nginx is not installed (Debian: apt-get install nginx-light): no nginx row"),
    }
    let mut baseline = Server { name: "baseline", addr: ports.next()?, admin: None, children: vec![] };
    baseline.spawn(peer(baseline.addr, true))?;
    baseline.ready().await?;
    servers.push(baseline);
    for s in &servers[1..] {
        let (status, body) = one(&LoadSpec { addr: s.addr, ..spec.clone() }).await?;
        if status != spec.request.expect || body.len() != reference.len() {
            return Err(format!("{} answered {status} with {} bytes, not the gateway's answer", s.name, body.len()));
        }
    }

    println!(
        "pinned: servers on core 0, this load generator on core 1; workload {:?}, {} keep-alive clients, {:?} per run, \
         response {} bytes, store {}",
        opts.workload,
        opts.connections,
        opts.duration,
        reference.len(),
        if db.starts_with("postgres") { "PostgreSQL" } else { "SQLite" }
    );
    if !opts.warmup.is_zero() {
        for s in &servers {
            run(LoadSpec { addr: s.addr, duration: opts.warmup, ..spec.clone() }).await;
        }
    }
    let mut rows: Vec<Vec<Row>> = servers.iter().map(|_| Vec::new()).collect();
    let mut half_p99 = Vec::new();
    for round in 1..=opts.rounds.max(1) {
        for (i, s) in servers.iter().enumerate() {
            let commits = match s.admin {
                Some(a) => GroupCommits::read(&[a]).await,
                None => None,
            };
            let row = measure(s, &spec).await;
            println!("round {round} {:<9} {}", s.name, row.line());
            if let (Some(before), Some(after)) =
                (commits, GroupCommits::read(&s.admin.into_iter().collect::<Vec<_>>()).await)
            {
                println!("          audit writer {}", after.since(&before));
            }
            rows[i].push(row);
        }
        // The gateway at half the rate it just saturated at, requests due at fixed times.
        let rate = rows[0].last().map_or(0.0, |r| r.report.rate()) / 2.0;
        let open = LoadSpec { rate_per_client: rate / opts.connections as f64, ..spec.clone() };
        let row = measure(&servers[0], &open).await;
        println!("round {round} gateway at half rate ({rate:.0} req/s offered) {}", row.line());
        half_p99.push(row.report.latency.value_at_quantile(0.99) as f64 / 1000.0);
    }
    let one_by_one = measure(&servers[0], &LoadSpec { connections: 1, ..spec.clone() }).await;
    println!("gateway, reads one at a time     {}", one_by_one.line());

    // The summary: medians over rounds, and the ranges of the ratios.
    let median = |v: Vec<f64>| Spread::of(&v).map_or(f64::NAN, |s| s.median);
    let index = |name: &str| servers.iter().position(|s| s.name == name);
    let summaries: Vec<Summary> = servers
        .iter()
        .zip(&rows)
        .map(|(s, r)| Summary {
            name: s.name,
            rate: median(r.iter().map(|x| x.report.rate()).collect()),
            p99_ms: median(r.iter().map(|x| x.report.latency.value_at_quantile(0.99) as f64 / 1000.0).collect()),
            cpu_us: median(r.iter().map(Row::cpu_us).collect()),
            written: median(r.iter().map(Row::written).collect()),
            errors: r.iter().map(|x| x.report.errors.values().sum::<u64>()).sum(),
        })
        .collect();
    println!("\n| server | req/s (median) | p99 ms (median) | server CPU µs/req (median) | written B/req (median) |");
    println!("|---|---|---|---|---|");
    for s in &summaries {
        println!("| {} | {:.0} | {:.2} | {:.1} | {:.0} |", s.name, s.rate, s.p99_ms, s.cpu_us, s.written);
    }
    let ratio = |a: usize, b: usize, f: &dyn Fn(&Row) -> f64| {
        Spread::of(&rows[a].iter().zip(&rows[b]).map(|(x, y)| f(x) / f(y)).collect::<Vec<_>>())
    };
    let show = |what: &str, target: &str, s: Option<Spread>| {
        if let Some(s) = s {
            println!("{what}: {s} (target {target})");
        }
    };
    if let Some(b) = index("baseline") {
        show("server CPU per read, gateway / bare baseline", "≤ 2", ratio(0, b, &Row::cpu_us));
    }
    if let Some(u) = index("unaudited") {
        show("server CPU per read, audited / unaudited", "≤ 1.25", ratio(0, u, &Row::cpu_us));
    }
    if let Some(n) = index("nginx") {
        show("throughput, gateway / nginx mTLS proxy", "≥ 1.3", ratio(0, n, &|r: &Row| r.report.rate()));
    }
    println!(
        "written to disk per audited read: {:.0} B at {} clients (target ≤ 1,024), {:.0} B one at a time (target ≤ 4,096)",
        median(rows[0].iter().map(Row::written).collect()),
        opts.connections,
        one_by_one.written()
    );
    println!(
        "p99 at half the saturating rate, each round: {} ms (target < 5 in every round)",
        half_p99.iter().map(|p| format!("{p:.2}")).collect::<Vec<_>>().join(", ")
    );
    // The servers stop (the gateway signs its head and witnesses the stop); then the
    // log the benchmark wrote is verified against its witness, as an auditor would.
    drop(servers);
    verify_log(&exe, &config)?;
    Ok(summaries)
}
