//! `wh`, the WireHub command line and daemon.

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(wirehub::cli::main(argv));
}
