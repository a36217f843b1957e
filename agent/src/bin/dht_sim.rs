//! `dht-sim`: runs the real DHT and wire code for many nodes in one process
//! over a simulated network. See docs/dht.md.
//!
//! ```text
//! dht-sim --nodes 10000 --churn 0.2 --loss 0.01 --lookups 2000
//!         [--alpha N] [--mode kademlia|all-at-once] [--seed S]
//!         [--seal-fraction F] [--join-refresh BUCKETS]
//!         [--clock-skew-ms MS] [--skewed-fraction F]
//!         [--first-contact clock|challenge]
//!         [--join-interval MS] [--settle MS] [--single-boot 0|1]
//!         [--busy F] [--busy-max MS]
//!         [--service-us US] [--queue N] [--shed-late 0|1] [--stall-after MS]
//! ```
//!
//! `--clock-skew-ms 86400000` gives every node (or `--skewed-fraction` of
//! them) a random clock offset up to a day either way, and seals every pair.

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use wirehub::dht::sim::{SimConfig, run};
use wirehub::proto::FirstContact;

/// Counts the bytes allocated, to measure memory per node.
struct Counting;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = ALLOCATED.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + new_size
                    - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                ALLOCATED.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const USAGE: &str = "usage: dht-sim [--nodes N] [--churn F] [--loss F] [--lookups N] [--alpha N] \
[--k N] [--mode kademlia|all-at-once] [--seed S] [--seal-fraction F] [--join-refresh BUCKETS] \
[--clock-skew-ms MS] [--skewed-fraction F] [--first-contact clock|challenge] \
[--join-interval MS] [--settle MS] [--single-boot 0|1] [--busy F] [--busy-max MS] \
[--service-us US] [--queue N] [--shed-late 0|1] [--stall-after MS]";

fn parse(args: &[String]) -> Result<SimConfig, String> {
    let mut cfg = SimConfig {
        nodes: 10_000,
        lookups: 2000,
        ..SimConfig::default()
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_string());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--nodes" => cfg.nodes = value.parse().map_err(|e| bad(&e))?,
            "--churn" => cfg.churn = value.parse().map_err(|e| bad(&e))?,
            "--loss" => cfg.loss = value.parse().map_err(|e| bad(&e))?,
            "--lookups" => cfg.lookups = value.parse().map_err(|e| bad(&e))?,
            "--alpha" => cfg.alpha = value.parse().map_err(|e| bad(&e))?,
            "--k" => cfg.k = value.parse().map_err(|e| bad(&e))?,
            "--seed" => cfg.seed = value.parse().map_err(|e| bad(&e))?,
            "--join-refresh" => cfg.join_refresh_buckets = value.parse().map_err(|e| bad(&e))?,
            "--seal-fraction" => cfg.seal_fraction = value.parse().map_err(|e| bad(&e))?,
            "--clock-skew-ms" => cfg.clock_skew_ms = value.parse().map_err(|e| bad(&e))?,
            "--skewed-fraction" => cfg.skewed_fraction = value.parse().map_err(|e| bad(&e))?,
            "--first-contact" => {
                cfg.first_contact = match value.as_str() {
                    "clock" => FirstContact::ClockWindow,
                    "challenge" => FirstContact::Challenge,
                    other => return Err(format!("unknown first-contact rule {other}\n{USAGE}")),
                }
            }
            "--join-interval" => cfg.join_interval_ms = value.parse().map_err(|e| bad(&e))?,
            "--settle" => cfg.settle_ms = value.parse().map_err(|e| bad(&e))?,
            "--single-boot" => cfg.single_boot = value == "1",
            "--busy" => cfg.busy_fraction = value.parse().map_err(|e| bad(&e))?,
            "--busy-max" => cfg.busy_max_ms = value.parse().map_err(|e| bad(&e))?,
            "--service-us" => cfg.service_us = value.parse().map_err(|e| bad(&e))?,
            "--queue" => cfg.queue_cap = value.parse().map_err(|e| bad(&e))?,
            "--shed-late" => cfg.shed_late = value == "1",
            "--stall-after" => cfg.stall_after_ms = value.parse().map_err(|e| bad(&e))?,
            "--mode" => {
                cfg.all_at_once = match value.as_str() {
                    "kademlia" => false,
                    "all-at-once" => true,
                    other => return Err(format!("unknown mode {other}\n{USAGE}")),
                }
            }
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    if !(0.0..1.0).contains(&cfg.churn) || !(0.0..1.0).contains(&cfg.loss) {
        return Err("--churn and --loss are fractions in [0, 1)".into());
    }
    if !(0.0..=1.0).contains(&cfg.skewed_fraction) {
        return Err("--skewed-fraction is a fraction in [0, 1]".into());
    }
    Ok(cfg)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    println!(
        "config: nodes {} churn {} loss {} lookups {} k {} alpha {} mode {} seed {} seal-fraction {} join-refresh {} clock-skew-ms {} skewed-fraction {} first-contact {:?}",
        cfg.nodes,
        cfg.churn,
        cfg.loss,
        cfg.lookups,
        cfg.k,
        if cfg.all_at_once { cfg.k } else { cfg.alpha },
        if cfg.all_at_once {
            "all-at-once"
        } else {
            "kademlia"
        },
        cfg.seed,
        if cfg.clock_skew_ms > 0 {
            1.0
        } else {
            cfg.seal_fraction
        },
        cfg.join_refresh_buckets,
        cfg.clock_skew_ms,
        cfg.skewed_fraction,
        cfg.first_contact
    );
    println!(
        "start: join-interval {} ms settle {} ms single-boot {} busy {} (up to {} ms)",
        cfg.join_interval_ms,
        cfg.settle_ms,
        u8::from(cfg.single_boot),
        cfg.busy_fraction,
        cfg.busy_max_ms
    );
    println!(
        "receive queues: service {} us (busy x{}) capacity {} shed late {}; lookups stall after {} ms (0: never)",
        cfg.service_us,
        wirehub::dht::sim::BUSY_SLOWDOWN,
        cfg.queue_cap,
        u8::from(cfg.shed_late),
        cfg.stall_after_ms
    );
    let before = ALLOCATED.load(Ordering::Relaxed);
    let report = run(&cfg);
    println!("{report}");
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    println!(
        "heap peak per node: {:.1} KiB (whole simulator, queue included)",
        peak as f64 / cfg.nodes.max(1) as f64 / 1024.0
    );
    ExitCode::SUCCESS
}
