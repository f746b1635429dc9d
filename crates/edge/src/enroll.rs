//! Beside the request path: connector enrollment with a one-time code.
//!
//! A connection whose ClientHello offered [`proto::enroll::ENROLL_ALPN`] ends up here (see
//! `tls::Accepted::Enroll`) instead of in `serve`: one request frame in, one response frame out,
//! then the connection closes. The request proves knowledge of a code with a MAC; the code is
//! redeemed in the state dir (`pki::StateDir::redeem_code`), which signs the connector's CSR.
//! The answer is MAC'd with the same code, so the connector can tell it came from the edge
//! that minted the code.
//!
//! What this module is not: an HTTP endpoint. Nothing here reaches a site, a tunnel or a
//! connector; a certificate-less client can do nothing on this ALPN but try a code.
//!
//! Abuse: every attempt costs a token from a per-address and from a global bucket (a success
//! gives them back), so guessing is slow even from many addresses; each attempt is logged and
//! counted (`doorless_edge_enrollments_total{kind="connector"}`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use proto::enroll::{EnrollRequest, EnrollResponse, Enrolled, MAX_ENROLL_FRAME, Refusal};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tracing::{info, warn};

use crate::Shared;
use crate::limit::{HandshakeBudget, Prefixes};
use crate::metrics::EnrollLabels;

/// The whole exchange (read the request, redeem, answer) must fit in this.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(15);
/// Per address: 5 attempts at once, then one a minute.
const PER_ADDRESS_BURST: u32 = 5;
const PER_ADDRESS_RATE: f64 = 1.0 / 60.0;
/// All addresses together: 30 at once, then one every 10 s.
const GLOBAL_BURST: u32 = 30;
const GLOBAL_RATE: f64 = 0.1;
/// The global bucket's key in a [`HandshakeBudget`].
const EVERYONE: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// Every `result` label of a connector enrollment, for pre-creating the series.
pub(crate) const CODE_RESULTS: [&str; 8] = [
    "ok",
    "wrong_code",
    "used",
    "expired",
    "revoked",
    "rate_limited",
    "bad_request",
    "error",
];

/// Enrollment state shared by the edge's tasks.
#[derive(Debug)]
pub(crate) struct Enrollment {
    per_address: HandshakeBudget,
    global: HandshakeBudget,
    /// Serialises redemptions: a code must never be redeemed twice by a race.
    redeem: Arc<Mutex<()>>,
    /// The tunnel listener's port, for the addresses told to a connector when the state dir
    /// names none.
    tunnel_port: u16,
}

impl Enrollment {
    /// `prefixes` groups client addresses as every other per-address limit does (an IPv6
    /// client is its /64 by default).
    pub(crate) fn new(tunnel_port: u16, prefixes: Prefixes) -> Self {
        Self {
            per_address: HandshakeBudget::new(PER_ADDRESS_RATE, PER_ADDRESS_BURST, prefixes),
            global: HandshakeBudget::new(GLOBAL_RATE, GLOBAL_BURST, prefixes),
            redeem: Arc::new(Mutex::new(())),
            tunnel_port,
        }
    }
}

/// Serves one enrollment connection: one request, one answer.
pub(crate) async fn serve(mut tls: TlsStream<TcpStream>, addr: SocketAddr, shared: Arc<Shared>) {
    let ip = addr.ip().to_canonical();
    let exchange = async {
        let request = match read_request(&mut tls).await {
            Ok(request) => request,
            Err(reason) => {
                count(&shared, "bad_request");
                info!(client = %ip, reason, "enrollment: malformed request");
                return None;
            }
        };
        let response = answer(request, ip, &shared).await;
        let mut out = BytesMut::new();
        if let Err(e) = response.encode(&mut out) {
            warn!(error = %e, "enrollment: cannot encode the answer");
            return None;
        }
        tls.write_all(&out).await.ok()?;
        tls.shutdown().await.ok()
    };
    if tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .is_err()
    {
        info!(client = %ip, "enrollment: timed out");
    }
}

/// Reads exactly one request frame (bounded by [`MAX_ENROLL_FRAME`]).
async fn read_request(tls: &mut TlsStream<TcpStream>) -> Result<EnrollRequest, &'static str> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        match EnrollRequest::decode(&buf) {
            Ok(Some((request, _))) => return Ok(request),
            Ok(None) => {}
            Err(_) => return Err("undecodable frame"),
        }
        if buf.len() > MAX_ENROLL_FRAME + 4 {
            return Err("frame too large");
        }
        match tls.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Err("closed before a whole frame"),
            Ok(_) => {}
        }
    }
}

async fn answer(request: EnrollRequest, ip: IpAddr, shared: &Arc<Shared>) -> EnrollResponse {
    let enrollment = &shared.enrollment;
    let now = tokio::time::Instant::now().into_std();
    if !enrollment.per_address.take(ip, now) || !enrollment.global.take(EVERYONE, now) {
        count(shared, "rate_limited");
        info!(client = %ip, "enrollment: refused, too many attempts");
        return EnrollResponse::Refused(Refusal::RateLimited);
    }
    let Some(host) = host_only(&request.host) else {
        count(shared, "bad_request");
        return EnrollResponse::Refused(Refusal::BadRequest);
    };
    let Ok(mac_input) = request.mac_input() else {
        count(shared, "bad_request");
        return EnrollResponse::Refused(Refusal::BadRequest);
    };
    let state = shared.state.clone();
    let lock = enrollment.redeem.clone();
    let redeemed = tokio::task::spawn_blocking(move || {
        let _serial = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.redeem_code(&request.code_id, &mac_input, &request.mac, &request.csr_pem)
    })
    .await;
    let redeemed = match redeemed {
        Ok(Ok(redeemed)) => redeemed,
        Ok(Err(e)) => {
            let (result, refusal) = match &e {
                pki::RedeemError::Unknown => ("wrong_code", Refusal::UnknownCode),
                pki::RedeemError::Used { .. } => ("used", Refusal::Used),
                pki::RedeemError::Expired => ("expired", Refusal::Expired),
                pki::RedeemError::Revoked => ("revoked", Refusal::Revoked),
                pki::RedeemError::BadCsr(_) => ("bad_request", Refusal::BadRequest),
                pki::RedeemError::State(_) => ("error", Refusal::Internal),
            };
            count(shared, result);
            if refusal == Refusal::Internal {
                warn!(client = %ip, error = %e, "enrollment failed");
            } else {
                info!(client = %ip, result, error = %e, "enrollment: refused");
            }
            return EnrollResponse::Refused(refusal);
        }
        Err(e) => {
            count(shared, "error");
            warn!(client = %ip, error = %e, "enrollment task failed");
            return EnrollResponse::Refused(Refusal::Internal);
        }
    };
    // Take the new state now rather than at the watcher's next tick: a renewal revoked the
    // connector's previous certificate, which must not register again meanwhile.
    let reloaded = shared.clone();
    if !matches!(
        tokio::task::spawn_blocking(move || crate::reload::reload(&reloaded)).await,
        Ok(true)
    ) {
        // Logged and counted by `reload`; the watcher tries again at its next tick.
        warn!(client = %ip, "state not reloaded after an enrollment");
    }
    // A good code: the attempt costs this address nothing.
    enrollment.per_address.refund(ip);
    enrollment.global.refund(EVERYONE);
    let edges = match shared.state.edge_addr() {
        Some(addr) => vec![addr.to_owned()],
        // The host the connector reached us at, on the tunnel's port.
        None => vec![format!("{host}:{}", enrollment.tunnel_port)],
    };
    let mut enrolled = Enrolled {
        site: redeemed.site,
        connector_id: redeemed.connector_id,
        server_name: pki::TUNNEL_SERVER_NAME.to_owned(),
        edges,
        cert_pem: redeemed.cert_pem,
        tunnel_ca_pem: redeemed.tunnel_ca_pem,
        mac: [0; 32],
    };
    let Ok(input) = enrolled.mac_input() else {
        count(shared, "error");
        return EnrollResponse::Refused(Refusal::Internal);
    };
    enrolled.mac = redeemed.keys.response_mac(&request.mac, &input);
    count(shared, "ok");
    info!(client = %ip, site = %enrolled.site, connector = %enrolled.connector_id, "connector enrolled with a code");
    EnrollResponse::Enrolled(enrolled)
}

/// The host of `host[:port]` as it goes into `host:port` (IPv6 in brackets); `None` for
/// anything that is not a plausible host.
fn host_only(host: &str) -> Option<String> {
    let host = host.trim();
    let bare = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.0,
        None => match host.rsplit_once(':') {
            Some((h, _)) if !h.contains(':') => h,
            _ => host,
        },
    };
    if bare.is_empty()
        || bare.len() > 253
        || !bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
    {
        return None;
    }
    Some(if bare.contains(':') {
        format!("[{bare}]")
    } else {
        bare.to_ascii_lowercase()
    })
}

fn count(shared: &Shared, result: &'static str) {
    shared
        .metrics
        .enrollments
        .get_or_create(&EnrollLabels {
            kind: "connector",
            result,
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(
            host_only("ha.Example.com").as_deref(),
            Some("ha.example.com")
        );
        assert_eq!(
            host_only("ha.example.com:8443").as_deref(),
            Some("ha.example.com")
        );
        assert_eq!(host_only("127.0.0.1:1").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_only("[::1]:443").as_deref(), Some("[::1]"));
        assert_eq!(host_only("::1").as_deref(), Some("[::1]"));
        assert_eq!(host_only("a b"), None);
        assert_eq!(host_only(""), None);
    }
}
