//! The HTTPS client the ACME client talks through.
//!
//! Ours rather than instant-acme's default for three reasons: every request (connect, TLS,
//! headers and body) has a deadline; a response body is bounded (a certificate chain is a few
//! KiB; a CA that streams forever cannot grow our memory); and the trust store is the OS's plus
//! the configured extra roots, for private CAs and the tests' pebble.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls_pki_types::CertificateDer;

/// Largest response body accepted from the CA.
const MAX_BODY: usize = 1 << 20;

pub(crate) struct AcmeHttp {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    timeout: Duration,
}

/// Why a request to the CA failed before an answer arrived.
#[derive(Debug, thiserror::Error)]
enum HttpError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Transport(String),
    #[error("response body over {MAX_BODY} bytes or broken: {0}")]
    Body(String),
}

impl AcmeHttp {
    pub(crate) fn new(
        extra_roots: &[CertificateDer<'static>],
        timeout: Duration,
    ) -> Result<Self, crate::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(
            extra_roots.iter().cloned(),
            provider.clone(),
        )
        .map_err(|e| crate::Error::Crypto(format!("trust store: {e}")))?;
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| crate::Error::Crypto(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let response = self.client.request(req);
        let timeout = self.timeout;
        Box::pin(async move {
            let whole = async {
                let rsp = response
                    .await
                    .map_err(|e| HttpError::Transport(error_chain(&e)))?;
                let (parts, body) = rsp.into_parts();
                let body = Limited::new(body, MAX_BODY)
                    .collect()
                    .await
                    .map_err(|e| HttpError::Body(e.to_string()))?
                    .to_bytes();
                Ok::<_, HttpError>(BytesResponse {
                    parts,
                    body: Box::new(body),
                })
            };
            match tokio::time::timeout(timeout, whole).await {
                Ok(Ok(rsp)) => Ok(rsp),
                Ok(Err(e)) => Err(instant_acme::Error::Other(Box::new(e))),
                Err(_) => Err(instant_acme::Error::Other(Box::new(HttpError::Timeout(
                    timeout,
                )))),
            }
        })
    }
}

/// hyper's errors say "client error (Connect)" and hide the cause one level down.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
