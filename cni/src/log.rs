//! Logging: never on stdout (stdout carries the result). Lines go to the
//! optional `logFile` of the configuration; errors also go to stderr, which
//! runtimes record.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

static SINK: Mutex<Option<File>> = Mutex::new(None);
static CONTEXT: Mutex<String> = Mutex::new(String::new());

/// Open (append) the log file. A file that cannot be opened is reported on
/// stderr and otherwise ignored: logging never fails a verb.
pub fn init(path: Option<&Path>) {
    let Some(path) = path else { return };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match OpenOptions::new().create(true).append(true).open(path) {
        Ok(f) => {
            if let Ok(mut g) = SINK.lock() {
                *g = Some(f);
            }
        }
        Err(e) => eprintln!("wirehub-cni: cannot open log file {}: {e}", path.display()),
    }
}

/// Set what every line starts with (verb and container).
pub fn set_context(ctx: String) {
    if let Ok(mut g) = CONTEXT.lock() {
        *g = ctx;
    }
}

pub fn write(level: &str, msg: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let ctx = CONTEXT.lock().map(|g| g.clone()).unwrap_or_default();
    let line = format!(
        "{now:.3} wirehub-cni[{}] {level} {ctx} {msg}\n",
        std::process::id()
    );
    if let Ok(mut g) = SINK.lock()
        && let Some(f) = g.as_mut()
    {
        let _ = f.write_all(line.as_bytes());
    }
    if level == "ERROR" || level == "WARN" {
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
}

#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log::write("INFO", &format!($($t)*)) };
}

#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log::write("WARN", &format!($($t)*)) };
}

#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::log::write("ERROR", &format!($($t)*)) };
}
