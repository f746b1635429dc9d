//! The global allocator of both binaries, and how it gives memory back to the OS.
//!
//! mimalloc, because allocation was ~13% of the request path's CPU with glibc malloc (see
//! docs/benchmarks.md). Out of the box it keeps what a burst used: memory freed after, say,
//! 2,000 WebSockets close is purged only when the allocator runs its collection, which happens
//! as a side effect of later allocations and frees, so an idle process stays at its peak
//! (issue 13 item 9). [`on_thread_park`] closes that gap: wired into tokio's runtime, it lets
//! each worker thread, when it runs out of work, free its empty pages and purge the memory
//! whose purge delay (mimalloc's default, 1 s) has passed — at most once per
//! [`COLLECT_INTERVAL`] per thread, so a busy server pays for a clock read per park and
//! nothing else.
//!
//! Transparent huge pages are off for mimalloc's memory (the `no_thp` feature of the
//! workspace's `mimalloc` dependency): a 2 MiB huge page is resident as soon as one byte of it
//! is touched and cannot be partly given back, which made RSS grow in 2 MiB steps around a
//! working set of a few MiB. An operator can still tune mimalloc with its `MIMALLOC_*`
//! environment variables (for example `MIMALLOC_PURGE_DELAY`).
//!
//! This is the workspace's only crate with `unsafe` code: one `extern` declaration.

use std::cell::Cell;
use std::time::{Duration, Instant};

pub use mimalloc::MiMalloc;

/// How often one thread may run mimalloc's collection. Once a second keeps memory coming back
/// within a few seconds of a burst (freed pages wait out the 1 s purge delay, then the next
/// collection returns them), at a cost that does not show in any benchmark.
pub const COLLECT_INTERVAL: Duration = Duration::from_secs(1);

#[allow(unsafe_code)]
mod ffi {
    // SAFETY: `mi_collect` is part of mimalloc's public API (mimalloc.h), linked into every
    // binary through the `mimalloc` crate. It takes a plain bool, has no preconditions, may be
    // called from any thread at any time, and only affects the calling thread's heap and
    // memory mimalloc already considers free; hence `safe fn`.
    unsafe extern "C" {
        pub(crate) safe fn mi_collect(force: bool);
    }
}

thread_local! {
    /// When this thread last ran the collection.
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// For `tokio::runtime::Builder::on_thread_park`: a worker with nothing to do frees the pages
/// its heap no longer uses and lets mimalloc purge freed memory whose delay is over, at most
/// once per [`COLLECT_INTERVAL`] on this thread. Not forced: memory freed less than the purge
/// delay ago stays for a fast reuse, so a server between two requests does not give back
/// pages it is about to fault in again.
pub fn on_thread_park() {
    let now = Instant::now();
    let due = LAST_COLLECT.with(|last| match last.get() {
        Some(at) if now.saturating_duration_since(at) < COLLECT_INTERVAL => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        ffi::mi_collect(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOCATOR: MiMalloc = MiMalloc;

    #[test]
    fn collecting_is_harmless_and_rate_limited() {
        // Allocate and free something big so there is something to collect, then park twice:
        // the first runs the collection, the second (within the interval) only reads the clock.
        drop(std::hint::black_box(vec![1u8; 8 << 20]));
        on_thread_park();
        let first = LAST_COLLECT.with(Cell::get);
        assert!(first.is_some());
        on_thread_park();
        assert_eq!(LAST_COLLECT.with(Cell::get), first);
    }
}
