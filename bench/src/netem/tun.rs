//! Opening a Linux TUN device (layer 3, no packet-info header) without any crate beyond libc:
//! the one place in the benchmark with `unsafe` (one ioctl, one poll, one sched_setscheduler).
//!
//! Not a general TUN library: no offloads, no multi-queue, no persistence. The device exists
//! as long as the returned file is open, so it disappears with the driver however it ends.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags at the start of the union
/// (the union is 24 bytes on 64-bit Linux).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates TUN device `name` in the caller's network namespace, non-blocking.
pub(crate) fn open(name: &str) -> Result<File> {
    ensure!(
        !name.is_empty() && name.len() < libc::IFNAMSIZ,
        "TUN name {name:?} must be 1..15 bytes"
    );
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun (needs root or CAP_NET_ADMIN)")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TUN | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `req` is a valid, initialised `struct ifreq`-compatible buffer that outlives the
    // call; TUNSETIFF reads the name and flags and may write the name back, within its size.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("TUNSETIFF {name}"));
    }
    Ok(file)
}

/// Waits until `file` is readable or `timeout` passes; Ok(true) when readable.
pub(crate) fn wait_readable(file: &File, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(rc > 0 && pfd.revents & libc::POLLIN != 0)
}

/// Puts the calling thread in the real-time FIFO class (priority 10), so that on a loaded
/// machine the forwarder still releases packets on time (the impairment must not depend on
/// what else runs). The threads block in poll/sleep between packets. Best effort: returns the
/// error if not permitted.
pub(crate) fn realtime_this_thread() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: pid 0 = the calling thread; `param` is valid for the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
