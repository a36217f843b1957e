//! The `wirehub-cni` binary: environment and stdin in, result or error JSON
//! on stdout, logs elsewhere.

use std::io::{Read, Write};
use wirehub_cni::delegate::Env;

fn main() {
    let env = Env::from_process();
    let mut stdin = Vec::new();
    // VERSION may come with no stdin at all; a read error reads as empty
    // input, which the verbs that need a config reject with code 6.
    if env.get("CNI_COMMAND") != Some("VERSION") || !stdin_is_tty() {
        let _ = std::io::stdin().read_to_end(&mut stdin);
    }
    let out = wirehub_cni::dispatch(&env, &stdin);
    let mut so = std::io::stdout().lock();
    if !out.stdout.is_empty() {
        let _ = so.write_all(out.stdout.as_bytes());
        let _ = so.write_all(b"\n");
    }
    let _ = so.flush();
    std::process::exit(out.exit);
}

fn stdin_is_tty() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal()
}
