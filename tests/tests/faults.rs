//! The short fault run of `make test`: under light load (three users
//! chatting, 50 inference events/s), billing-bridge, billing-host, Apache Kafka and
//! redis-server are each SIGKILLed once at a random moment and started
//! again, then all four together; the system drains and every view of the
//! money — the generator's own records, the SQLite line items, the Redis
//! aggregates the dashboard reads, draft invoices — must agree to the
//! nano-USD, with every turn and event counted exactly once.
//! The seed comes from FAULT_SEED when set (to repeat a run), else the clock;
//! it is printed.

use billing_e2e::cluster::{fault_run, schedule, Rng};
use billing_e2e::load::Plan;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_process_killed_under_load_loses_and_doubles_nothing() {
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("fault seed {seed} (FAULT_SEED={seed} repeats this schedule)");
    let steps = schedule(&mut Rng::new(seed), 1);
    assert_eq!(
        steps.len(),
        5,
        "each of the four processes, then all together"
    );
    let dir = tempfile::tempdir().unwrap();
    let plan = Plan {
        users: 3,
        events_per_s: 50,
        batch: 10,
        duration: Duration::from_secs(10),
        give_up: Duration::from_secs(120),
        drain_timeout: Duration::from_secs(120),
        ..Plan::default()
    };
    let (report, log) = match fault_run(dir.path(), plan, steps).await {
        Ok(r) => r,
        Err(e) => panic!("{e}\nrun directory kept: {}", dir.keep().display()),
    };
    for line in &log {
        println!("{line}");
    }
    println!("{report}");
    let injected = log.iter().filter(|l| l.starts_with("t=")).count();
    assert_eq!(injected, 5, "every fault was injected");
    assert!(
        report.expected.turns > 20 && report.expected.events > 200,
        "the load ran: {report}"
    );
    assert!(report.retries > 0, "the kills were felt by the clients");
    if !report.reconciled() {
        panic!(
            "{report}\nrun directory kept (database, every process's log): {}",
            dir.keep().display()
        );
    }
}
