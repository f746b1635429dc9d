//! The measurements, one module per scenario of the report (and iperf3 for the ceiling).

pub(crate) mod bulk;
pub(crate) mod flood;
pub(crate) mod handshakes;
pub(crate) mod iperf;
pub(crate) mod liveupdate;
pub(crate) mod netbulk;
pub(crate) mod oha;
pub(crate) mod pageload;
pub(crate) mod ws;
