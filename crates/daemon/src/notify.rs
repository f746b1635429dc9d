//! systemd's readiness protocol (`sd_notify(3)`): one datagram per state change to the socket
//! named by `NOTIFY_SOCKET`. With `Type=notify`, `systemctl start` returns once the service
//! says `READY=1`, and `systemctl stop` shows `STOPPING=1` while it drains.
//!
//! A few lines over a Unix datagram socket instead of a crate: the protocol is one `sendto`
//! of `KEY=VALUE` lines, and the only subtlety is the abstract-namespace address (`@…`).
//! Not the watchdog protocol (`WATCHDOG=1`): nothing here would know when to stop sending it.
//! Without `NOTIFY_SOCKET` (not under systemd, or `Type=simple`) every call does nothing.

use std::os::unix::net::UnixDatagram;

/// The service is up: listeners bound, state loaded.
pub fn ready() {
    notify("READY=1");
}

/// The service began its graceful shutdown.
pub fn stopping() {
    notify("STOPPING=1");
}

/// A one-line status shown by `systemctl status`.
pub fn status(text: &str) {
    // A newline would start another KEY=VALUE line.
    notify(&format!("STATUS={}", text.replace('\n', " ")));
}

/// Sends `state`; a failure is logged once per call at debug and otherwise ignored: the
/// service runs the same whether or not systemd listens.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&socket, state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

fn send(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = socket.as_bytes();
    let sender = UnixDatagram::unbound()?;
    if let Some(name) = path.strip_prefix(b"@") {
        // Linux abstract namespace: '@' stands for the leading NUL byte.
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sender.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sender.send_to(state.as_bytes(), std::ffi::OsStr::from_bytes(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

    #[test]
    fn sends_to_a_path_socket_and_to_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver.set_read_timeout(Some(TIMEOUT)).unwrap();
        send(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("doorless-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        receiver.set_read_timeout(Some(TIMEOUT)).unwrap();
        send(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").unwrap();
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        assert!(send(dir.path().join("absent").as_os_str(), "READY=1").is_err());
    }
}
