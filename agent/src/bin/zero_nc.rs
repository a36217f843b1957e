//! `0nc`: zero-netcat under the name users of the original know.
//! `0nc [INVITATION] [boot KEY HOST:PORT]` is `wh nc ...`.

fn main() {
    let mut argv = vec!["nc".to_string()];
    argv.extend(std::env::args().skip(1));
    std::process::exit(wirehub::cli::main(argv));
}
