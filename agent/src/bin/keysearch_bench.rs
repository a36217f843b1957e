//! Key searches per second on this machine, one thread and all threads.
//! `cargo run --release --bin keysearch-bench [-- SECONDS]`

use std::time::Duration;
use wirehub::keys::search::measure_rate;

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let d = Duration::from_secs_f64(secs);
    let one = measure_rate("public", 1, d);
    let all = measure_rate("public", threads, d);
    println!("key searches per second, 1 thread: {one:.0}");
    println!("key searches per second, {threads} threads: {all:.0}");
    println!("speed-up: {:.2}x", all / one);
    for bits in [8u8, 16, 20, 24] {
        println!(
            "expected time for {bits} workbits on {threads} threads: {:.2} s",
            wirehub::keys::search::expected_tries(bits) / all
        );
    }
}
