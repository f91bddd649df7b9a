//! The PostgreSQL scenarios (issue 11): scenario 1's shape — one webhook, `--events`
//! single-event posts — on one hookd node and on `--nodes N` nodes sharing one database, in
//! the same run as sled's scenario 1, so the figures sit side by side.
//!
//! PostgreSQL 15 is started here, durable (fsync on, as in production), in a temp dir
//! (`scripts/postgres.sh`), each scenario on a fresh database. Producers are spread over the
//! nodes (one generator of `concurrency()` connections per node). Besides hookd's CPU (summed over
//! the nodes) the figures carry PostgreSQL's (the postmaster and its backends), both per
//! delivery: on 2 cores three nodes will not triple throughput, the cost per delivery is the
//! figure to watch.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use super::procs::{self, cpu_seconds, spawn_engine, vm_mib};
use super::{
    Bench, Check, Engine, Figures, Ingested, Target, check, delivery_figures, generate,
    ingest_figures,
};

/// Deliveries/s Svix OSS (PostgreSQL + Redis) measured on this kind of machine (issue 11).
const SVIX_RANGE: (f64, f64) = (386.0, 586.0);

/// A throwaway PostgreSQL server, stopped (and its directory removed) when dropped.
struct Postgres {
    dir: PathBuf,
    url: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres.sh")
}

impl Postgres {
    fn start() -> Postgres {
        let dir = std::env::temp_dir().join(format!("hookd-e2e-pg-{}", std::process::id()));
        let out = Command::new(script())
            .arg("start")
            .arg(&dir)
            .arg("durable")
            .output()
            .expect("scripts/postgres.sh runs");
        assert!(
            out.status.success(),
            "PostgreSQL did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Postgres { dir, url }
    }

    /// A fresh database; its URL.
    async fn database(&self, name: &str) -> String {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL answers");
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        let base = self
            .url
            .rsplit_once('/')
            .map_or(self.url.as_str(), |(b, _)| b);
        format!("{base}/{name}")
    }

    /// CPU seconds of the postmaster and every process it started.
    fn cpu_seconds(&self) -> f64 {
        let pid_file = self.dir.join("data/postmaster.pid");
        let Some(postmaster) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok())
        else {
            return 0.0;
        };
        let mut total = cpu_seconds(postmaster);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after = stat.rsplit_once(')')?.1;
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                });
            if parent == Some(postmaster) {
                total += cpu_seconds(pid);
            }
        }
        total
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir).status();
    }
}

/// A hookd node on the database at `url`.
async fn start_node(http: &reqwest::Client, url: &str, attempt_timeout: &str) -> Engine {
    let dir = tempfile::Builder::new()
        .prefix("hookd-e2e-")
        .tempdir()
        .expect("temp dir");
    let data = dir.path().join("data");
    let config = procs::write_config(dir.path(), &data, attempt_timeout);
    let mut text = std::fs::read_to_string(&config).expect("config");
    // A table header ends the tables above it; [store] goes before the first one.
    let store =
        format!("[store]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\npool_size = 16\n");
    let first_table = text.find("\n[").map_or(text.len(), |i| i + 1);
    text.insert_str(first_table, &store);
    std::fs::write(&config, text).expect("write config");
    let (proc, base) = spawn_engine(dir.path(), &config, &data, http).await;
    Engine {
        proc,
        base,
        data,
        config,
        dir,
    }
}

/// Events spread over the nodes' ingest (one generator per node, run together), as one.
async fn generate_over(http: &reqwest::Client, nodes: &[Engine], events: usize) -> Ingested {
    let runs = nodes.iter().enumerate().map(|(i, node)| {
        let share = events / nodes.len() + usize::from(i < events % nodes.len());
        let target = Target::Single(node.base.clone());
        async move { generate(http, &target, share, None).await }
    });
    let parts = futures::future::join_all(runs).await;
    let mut all = Ingested {
        first_send_ns: u64::MAX,
        ..Default::default()
    };
    for mut part in parts {
        all.accepted += part.accepted;
        all.refused += part.refused;
        all.first_send_ns = all.first_send_ns.min(part.first_send_ns);
        all.wall = all.wall.max(part.wall);
        all.accept_us.append(&mut part.accept_us);
        all.aborted |= part.aborted;
    }
    all
}

/// One scenario: `count` nodes on a fresh database, one webhook, `events` events.
async fn scenario(bench: &Bench, pg: &Postgres, count: usize, events: usize) -> Figures {
    let name = format!("pg{count}");
    bench.rx.ctl("reset").await;
    let url = pg.database(&format!("bench_{name}")).await;
    let mut nodes = Vec::with_capacity(count);
    for _ in 0..count {
        nodes.push(start_node(&bench.http, &url, "2s").await);
    }
    nodes[0]
        .create_webhook(&bench.http, json!({"url": bench.rx.url(&name)}))
        .await;
    let engine_cpu =
        |nodes: &[Engine]| -> f64 { nodes.iter().map(|n| cpu_seconds(n.proc.pid())).sum() };
    let (e0, p0, r0, g0) = (
        engine_cpu(&nodes),
        pg.cpu_seconds(),
        cpu_seconds(bench.rx.proc.pid()),
        cpu_seconds(std::process::id()),
    );
    let mut ingest = generate_over(&bench.http, &nodes, events).await;
    let mut f = Figures {
        name: name.clone(),
        ..Default::default()
    };
    ingest_figures(&mut ingest, &mut f);
    let deadline = Instant::now() + Duration::from_secs(180);
    bench
        .rx
        .wait_for("ALL", ingest.accepted, Duration::from_secs(15), deadline)
        .await;
    delivery_figures(&bench.rx, "ALL", ingest.accepted, &ingest, &mut f).await;
    f.engine_cpu_s = engine_cpu(&nodes) - e0;
    let pg_cpu = pg.cpu_seconds() - p0;
    f.receiver_cpu_s = cpu_seconds(bench.rx.proc.pid()) - r0;
    f.generator_cpu_s = cpu_seconds(std::process::id()) - g0;
    f.engine_peak_rss_mib = nodes
        .iter()
        .map(|n| vm_mib(n.proc.pid(), "VmHWM:"))
        .fold(0.0, f64::max);
    f.extra.insert("nodes".into(), json!(count));
    cpu_per_delivery(&mut f, pg_cpu);
    f
}

/// The engine's and PostgreSQL's CPU per delivery, into `f.extra`.
fn cpu_per_delivery(f: &mut Figures, pg_cpu: f64) {
    let per_delivery = |cpu: f64| cpu / (f.deliveries.max(1) as f64) * 1e6;
    let (engine_us, pg_us) = (per_delivery(f.engine_cpu_s), per_delivery(pg_cpu));
    f.extra
        .insert("postgres_cpu_s".into(), json!(super::round2(pg_cpu)));
    f.extra.insert(
        "engine_cpu_us_per_delivery".into(),
        json!(super::round2(engine_us)),
    );
    f.extra.insert(
        "postgres_cpu_us_per_delivery".into(),
        json!(super::round2(pg_us)),
    );
}

/// A backlog on PostgreSQL: `pending` events ingested through the batch route while the
/// receiver holds every request, then drained by one node at the webhook's default cap (8 in
/// flight). What a claim costs as the queue holds more shows here (scenario 5 on sled).
async fn backlog(bench: &Bench, pg: &Postgres, pending: usize) -> Figures {
    let name = "pg-backlog";
    bench.rx.ctl("reset").await;
    bench.rx.ctl("down").await;
    let url = pg.database("bench_pg_backlog").await;
    // Held requests must not time out into retries: the drain is what is measured.
    let node = start_node(&bench.http, &url, "5m").await;
    node.create_webhook(&bench.http, json!({"url": bench.rx.url(name)}))
        .await;
    let target = Target::Batch(node.base.clone(), 1000);
    let mut ingest = generate(&bench.http, &target, pending, None).await;
    let mut f = Figures {
        name: name.into(),
        ..Default::default()
    };
    ingest_figures(&mut ingest, &mut f);
    let (e0, p0) = (cpu_seconds(node.proc.pid()), pg.cpu_seconds());
    let up = Instant::now();
    bench.rx.ctl("up").await;
    bench
        .rx
        .wait_for(
            "ALL",
            ingest.accepted,
            Duration::from_secs(30),
            Instant::now() + Duration::from_secs(600),
        )
        .await;
    let drain_s = up.elapsed().as_secs_f64();
    let counts = bench.rx.get("counts").await;
    let (distinct, total) = (
        counts["ALL"]["distinct"].as_u64().unwrap_or(0),
        counts["ALL"]["total"].as_u64().unwrap_or(0),
    );
    f.deliveries = distinct;
    f.duplicates = total.saturating_sub(distinct);
    f.lost = ingest.accepted as i64 - distinct as i64;
    f.complete = distinct as usize >= ingest.accepted;
    f.deliveries_per_s = distinct as f64 / drain_s.max(1e-9);
    f.engine_cpu_s = cpu_seconds(node.proc.pid()) - e0;
    f.engine_peak_rss_mib = vm_mib(node.proc.pid(), "VmHWM:");
    f.extra.insert("nodes".into(), json!(1));
    f.extra.insert("pending".into(), json!(ingest.accepted));
    cpu_per_delivery(&mut f, pg.cpu_seconds() - p0);
    f
}

/// The PostgreSQL scenarios on 1 and `nodes` nodes; their figures and checks (compared with
/// sled's scenario 1 of the same run).
pub async fn run(
    bench: &Bench,
    nodes: usize,
    events: usize,
    pending: usize,
    sled: &Figures,
) -> Vec<Figures> {
    let pg = Postgres::start();
    let mut counts = vec![1];
    if nodes > 1 {
        counts.push(nodes);
    }
    let mut figures = Vec::new();
    for count in counts {
        figures.push(scenario(bench, &pg, count, events).await);
    }
    println!("  PostgreSQL: a backlog of {pending} events, drained by one node...");
    figures.push(backlog(bench, &pg, pending).await);
    let sled_us = sled.engine_cpu_s / (sled.deliveries.max(1) as f64) * 1e6;
    println!(
        "  PostgreSQL backend (same run; Svix OSS on PostgreSQL + Redis: {:.0}-{:.0} deliveries/s here):",
        SVIX_RANGE.0, SVIX_RANGE.1
    );
    println!(
        "    sled 1 node: {:>6.0} deliveries/s, engine CPU {:>5.0} µs/delivery",
        sled.deliveries_per_s, sled_us
    );
    for f in &figures {
        let what = match f.extra.get("pending") {
            Some(pending) => format!("pg backlog of {pending}, drained by 1 node:"),
            None => format!(
                "pg {} node{}:",
                f.extra["nodes"],
                if f.extra["nodes"] == 1 { " " } else { "s" }
            ),
        };
        println!(
            "    {what} {:>6.0} deliveries/s ({:.2}x sled), engine CPU {:>5.0} µs/delivery, PostgreSQL CPU {:>5.0} µs/delivery, lost {}, duplicates {}",
            f.deliveries_per_s,
            f.deliveries_per_s / sled.deliveries_per_s.max(1e-9),
            f.extra["engine_cpu_us_per_delivery"]
                .as_f64()
                .unwrap_or(0.0),
            f.extra["postgres_cpu_us_per_delivery"]
                .as_f64()
                .unwrap_or(0.0),
            f.lost,
            f.duplicates,
        );
    }
    figures
}

/// PASS/FAIL lines for the PostgreSQL scenarios.
pub fn checks(checks: &mut Vec<Check>, figures: &[Figures]) {
    for f in figures {
        check(
            checks,
            format!(
                "{} lost {} of {} events, deliveries/s {:.0} >= Svix OSS's low end {:.0}",
                f.name, f.lost, f.events, f.deliveries_per_s, SVIX_RANGE.0
            ),
            f.lost == 0 && f.complete && f.deliveries_per_s >= SVIX_RANGE.0,
        );
    }
}
