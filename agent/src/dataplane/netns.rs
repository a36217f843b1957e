//! The network namespace a data plane was created in.
//!
//! Sockets and netlink requests belong to the namespace of the thread that
//! makes them. The daemon may call `set_peer` from any thread, so work that
//! opens sockets or talks netlink after `create` runs through
//! [`Netns::run`], which moves to a helper thread inside the namespace when
//! the calling thread is elsewhere.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

pub mod lab;

const SELF_NS: &str = "/proc/thread-self/ns/net";

/// A handle on a network namespace (an open `/proc/.../ns/net`).
#[derive(Debug)]
pub struct Netns {
    file: File,
    dev: u64,
    ino: u64,
}

impl Netns {
    /// The calling thread's network namespace.
    pub fn current() -> io::Result<Netns> {
        let file = File::open(SELF_NS)?;
        let meta = file.metadata()?;
        Ok(Netns {
            dev: meta.dev(),
            ino: meta.ino(),
            file,
        })
    }

    /// Whether the calling thread is in this namespace.
    pub fn is_current(&self) -> bool {
        std::fs::metadata(SELF_NS).is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }

    /// Runs `f` inside this namespace: right here when the calling thread is
    /// already there, else on a short-lived thread that enters it first.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> io::Result<R> {
        if self.is_current() {
            return Ok(f());
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on an open namespace file; affects this
                // helper thread only.
                let rc = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace helper thread panicked")))
        })
    }
}
