//! The `wh` command line.
