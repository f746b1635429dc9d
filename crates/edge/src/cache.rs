//! Step 6 of the request path, for what Home Assistant marks public: the edge's response cache.
//!
//! Home Assistant serves its frontend (`/frontend_latest/…`, `/static/…`: some 70 files, a
//! megabyte, on every cold page load) with `Cache-Control: public, max-age=…`. Every one of
//! those requests otherwise crosses the tunnel, so on a phone network the page waits a tunnel
//! round trip per wave of script imports. The edge keeps such responses in memory and answers
//! the next device's requests for them itself — after that request passed the site's policy
//! like any other (certificate, revocation, address rules); the cache only replaces the trip
//! through the tunnel, never the decision.
//!
//! What is stored fails closed: only a `200` to a plain `GET` — no credentials of its own (no
//! `Authorization`, no cookie that would reach Home Assistant), no range or conditional
//! headers, no body — whose response says `public` with a positive `max-age` / `s-maxage` and
//! says nothing against it (`private`, `no-store`, `no-cache`, a `Set-Cookie`, a `Vary` on
//! anything but `Accept-Encoding`, a `Content-Range`), no bigger than `cache.max_object`. The
//! key is the site, the request target as sent, and the request's `Accept-Encoding` (so a
//! client that asked for no compression never gets gzip). An entry lives for what the
//! response allowed, at most `cache.max_ttl`; a client's `Cache-Control: no-cache` (a hard
//! reload) goes to Home Assistant and refreshes the entry; any other method on the same
//! target drops it. Memory is bounded by `cache.max_bytes`, least recently used first out, and
//! responses being recorded on their way through by the same amount again.
//!
//! [`Store`] is the bookkeeping without I/O or clocks of its own; [`Cache`] wraps it for the
//! request path.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::metrics::gauge::Gauge;

use crate::body::ResponseBody;
use crate::cookie;

/// Longest request target kept as a key; longer ones are not cached.
const MAX_TARGET: usize = 2048;
/// Bytes counted per entry on top of its body and headers (key, map and order slots).
const ENTRY_OVERHEAD: usize = 256;

/// `[cache]` limits, checked by the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CacheLimits {
    /// Bytes all entries may hold together; 0 turns the cache off.
    pub(crate) max_bytes: usize,
    /// Largest response body stored.
    pub(crate) max_object: usize,
    /// Longest an entry lives, whatever the response allowed.
    pub(crate) max_ttl: Duration,
}

/// What a request is to the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Not cacheable: forward it, store nothing.
    Bypass,
    /// Cacheable: answer from the cache if an entry is fresh, else forward and store.
    Find(Key),
    /// The client asked for a fresh copy (`no-cache`): forward it, store the answer.
    Refresh(Key),
}

/// Identifies an entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    site: String,
    target: Bytes,
    accept_encoding: Bytes,
}

/// A stored response.
#[derive(Debug)]
pub(crate) struct Entry {
    headers: HeaderMap,
    body: Bytes,
    stored: Instant,
    expires: Instant,
}

impl Entry {
    fn size(&self, key: &Key) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        self.body.len() + headers + key.target.len() + key.accept_encoding.len() + ENTRY_OVERHEAD
    }

    /// The response for a client, `now`: the stored one with its `Age`.
    pub(crate) fn response(&self, now: Instant) -> Response<ResponseBody> {
        let mut response = Response::new(
            Full::new(self.body.clone())
                .map_err(|never| match never {})
                .boxed_unsync(),
        );
        *response.headers_mut() = self.headers.clone();
        let age = now.saturating_duration_since(self.stored).as_secs();
        response
            .headers_mut()
            .insert(header::AGE, HeaderValue::from(age));
        response
    }
}

/// Entries, their recency, and the bytes they hold; no I/O, no clock of its own.
#[derive(Debug, Default)]
pub(crate) struct Store {
    entries: HashMap<Key, (Arc<Entry>, u64)>,
    /// Last use → key, oldest first.
    order: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
}

impl Store {
    /// The fresh entry for `key`, marked as just used; an expired one is dropped.
    pub(crate) fn get(&mut self, key: &Key, now: Instant) -> Option<Arc<Entry>> {
        let (entry, used) = self.entries.get(key)?;
        if now >= entry.expires {
            self.remove(key);
            return None;
        }
        let (entry, used) = (entry.clone(), *used);
        self.order.remove(&used);
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        if let Some(slot) = self.entries.get_mut(key) {
            slot.1 = self.tick;
        }
        Some(entry)
    }

    /// Stores `entry` under `key` (replacing any), evicting the least recently used until
    /// everything fits in `max_bytes`. Returns whether it was stored.
    pub(crate) fn insert(&mut self, key: Key, entry: Entry, max_bytes: usize) -> bool {
        let size = entry.size(&key);
        self.remove(&key);
        if size > max_bytes {
            return false;
        }
        while self.bytes + size > max_bytes {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((old, _)) = self.entries.remove(&oldest) {
                self.bytes -= old.size(&oldest);
            }
        }
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        self.entries.insert(key, (Arc::new(entry), self.tick));
        self.bytes += size;
        true
    }

    /// Drops every entry of `site` for `target`, whatever its encoding.
    pub(crate) fn invalidate(&mut self, site: &str, target: &[u8]) {
        let doomed: Vec<Key> = self
            .entries
            .keys()
            .filter(|k| k.site == site && k.target == target)
            .cloned()
            .collect();
        for key in doomed {
            self.remove(&key);
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some((entry, used)) = self.entries.remove(key) {
            self.order.remove(&used);
            self.bytes -= entry.size(key);
        }
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes held, as counted against `max_bytes`.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The edge's cache: a [`Store`] behind a lock (held only for map operations, never across
/// an await), and the bytes being recorded.
#[derive(Debug)]
pub(crate) struct Cache {
    limits: CacheLimits,
    store: Mutex<Store>,
    /// Body bytes buffered by [`Recording`]s in flight, bounded by `max_bytes`.
    recording: AtomicUsize,
    bytes: Gauge,
    entries: Gauge,
}

impl Cache {
    /// A cache with these limits, reporting its size on the two gauges.
    pub(crate) fn new(limits: CacheLimits, bytes: Gauge, entries: Gauge) -> Self {
        Self {
            limits,
            store: Mutex::new(Store::default()),
            recording: AtomicUsize::new(0),
            bytes,
            entries,
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A panic while holding the lock left the maps consistent (no await, no partial
        // update that matters): keep going.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self, store: &Store) {
        self.bytes
            .set(i64::try_from(store.bytes()).unwrap_or(i64::MAX));
        self.entries
            .set(i64::try_from(store.len()).unwrap_or(i64::MAX));
    }

    /// What `req` for `site` is to the cache. `upgrade`: a WebSocket handshake (never cached).
    /// A request with a method that may change something (POST, PUT, DELETE, …) drops the
    /// target's entries.
    pub(crate) fn lookup<B>(&self, req: &Request<B>, site: &str, upgrade: bool) -> Lookup {
        if self.limits.max_bytes == 0 {
            return Lookup::Bypass;
        }
        let target = target(req);
        if req.method() != Method::GET {
            let safe = [Method::HEAD, Method::OPTIONS, Method::TRACE].contains(req.method());
            if !safe {
                let mut store = self.store();
                store.invalidate(site, &target);
                self.report(&store);
            }
            return Lookup::Bypass;
        }
        let headers = req.headers();
        if upgrade || target.len() > MAX_TARGET || !plain_request(headers) {
            return Lookup::Bypass;
        }
        let key = Key {
            site: site.to_owned(),
            target,
            accept_encoding: headers
                .get_all(header::ACCEPT_ENCODING)
                .iter()
                .map(HeaderValue::as_bytes)
                .collect::<Vec<_>>()
                .join(&b","[..])
                .into(),
        };
        let no_cache = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .chain(headers.get_all(header::PRAGMA))
            .flat_map(directives)
            .any(|(name, _)| name == "no-cache" || name == "no-store");
        if no_cache {
            Lookup::Refresh(key)
        } else {
            Lookup::Find(key)
        }
    }

    /// The fresh entry for `key`, if any.
    pub(crate) fn get(&self, key: &Key, now: Instant) -> Option<Arc<Entry>> {
        let mut store = self.store();
        let found = store.get(key, now);
        self.report(&store);
        found
    }

    /// When `response` may be stored under `key`, returns it with its body recorded on the
    /// way to the client and stored once complete; otherwise returns it as it was.
    pub(crate) fn record(
        self: &Arc<Self>,
        key: Key,
        response: Response<ResponseBody>,
        now: Instant,
    ) -> Response<ResponseBody> {
        let Some(ttl) = storable(response.status(), response.headers(), self.limits) else {
            return response;
        };
        let length = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if length.is_some_and(|n| n > self.limits.max_object) {
            return response;
        }
        let (parts, body) = response.into_parts();
        let recording = Recording {
            inner: body,
            cache: self.clone(),
            pending: Some(Pending {
                key,
                headers: parts.headers.clone(),
                // Grown as bytes come, never reserved on a length's say-so: a response that
                // declares 2 MiB and stalls holds nothing.
                body: BytesMut::new(),
                length,
                stored: now,
                expires: now + ttl,
            }),
        };
        Response::from_parts(parts, recording.boxed_unsync())
    }

    fn finish(&self, pending: Pending) {
        let key = pending.key;
        let entry = Entry {
            headers: pending.headers,
            // Exactly its size: what `max_bytes` counts is what is held.
            body: Bytes::copy_from_slice(&pending.body),
            stored: pending.stored,
            expires: pending.expires,
        };
        let mut store = self.store();
        store.insert(key, entry, self.limits.max_bytes);
        self.report(&store);
    }
}

/// The request target as the client sent it (path and query).
fn target<B>(req: &Request<B>) -> Bytes {
    Bytes::copy_from_slice(
        req.uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .as_bytes(),
    )
}

/// A request that carries nothing making its answer personal or partial: no credentials that
/// reach Home Assistant, no range, no conditions, no body.
fn plain_request(headers: &HeaderMap) -> bool {
    let personal = headers.contains_key(header::AUTHORIZATION)
        || cookie::strip(
            headers
                .get_all(header::COOKIE)
                .iter()
                .map(HeaderValue::as_bytes),
        )
        .is_some();
    let partial_or_conditional = [
        header::RANGE,
        header::IF_RANGE,
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
    ]
    .iter()
    .any(|h| headers.contains_key(h));
    let body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    !personal && !partial_or_conditional && !body
}

/// How long a response with this status and these headers may be kept, or `None` when it may
/// not be (see the module's rules).
pub(crate) fn storable(
    status: StatusCode,
    headers: &HeaderMap,
    limits: CacheLimits,
) -> Option<Duration> {
    if status != StatusCode::OK
        || headers.contains_key(header::SET_COOKIE)
        || headers.contains_key(header::CONTENT_RANGE)
    {
        return None;
    }
    let vary_ok = headers
        .get_all(header::VARY)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .all(|name| name.is_empty() || name.eq_ignore_ascii_case(b"accept-encoding"));
    if !vary_ok {
        return None;
    }
    let (mut public, mut max_age, mut s_maxage) = (false, None, None);
    for (name, value) in headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .flat_map(directives)
    {
        match name.as_str() {
            "public" => public = true,
            "private" | "no-store" | "no-cache" | "must-understand" => {
                return None;
            }
            // A malformed age is a doubt: store nothing.
            "max-age" => max_age = Some(seconds(value?)?),
            "s-maxage" => s_maxage = Some(seconds(value?)?),
            _ => {}
        }
    }
    let ttl = s_maxage.or(max_age)?;
    // Already aged in a cache upstream of us.
    let age = match headers.get(header::AGE) {
        Some(v) => seconds(v.to_str().ok()?)?,
        None => 0,
    };
    let ttl = Duration::from_secs(ttl.saturating_sub(age)).min(limits.max_ttl);
    (public && !ttl.is_zero()).then_some(ttl)
}

/// `Cache-Control` directives of one header line: lower-cased names, raw values.
fn directives(value: &HeaderValue) -> impl Iterator<Item = (String, Option<&str>)> {
    value
        .to_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| match d.split_once('=') {
            Some((name, value)) => (
                name.trim().to_ascii_lowercase(),
                Some(value.trim().trim_matches('"')),
            ),
            None => (d.to_ascii_lowercase(), None),
        })
}

/// A delta-seconds value (RFC 9111 §1.2.2), or `None` if it is not one.
fn seconds(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Larger than fits is "a very long time", as RFC 9111 says.
    Some(value.parse().unwrap_or(u64::MAX))
}

/// A response on its way to be stored.
struct Pending {
    key: Key,
    headers: HeaderMap,
    body: BytesMut,
    length: Option<usize>,
    stored: Instant,
    expires: Instant,
}

/// A response body passed through to the client and copied, stored once it is complete. It
/// gives up (and passes the rest through) at an error, trailers, more than `max_object`
/// bytes, or when recordings in flight already hold `max_bytes`.
struct Recording {
    inner: ResponseBody,
    cache: Arc<Cache>,
    pending: Option<Pending>,
}

impl Recording {
    fn give_up(&mut self) {
        if let Some(p) = self.pending.take() {
            self.cache
                .recording
                .fetch_sub(p.body.len(), Ordering::Relaxed);
        }
    }

    fn complete(&mut self) {
        if let Some(p) = self.pending.take() {
            self.cache
                .recording
                .fetch_sub(p.body.len(), Ordering::Relaxed);
            if p.length.is_none_or(|n| n == p.body.len()) {
                self.cache.finish(p);
            }
        }
    }

    fn take(&mut self, data: &Bytes) {
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        let limits = self.cache.limits;
        let n = data.len();
        let budget_left = self
            .cache
            .recording
            .fetch_add(n, Ordering::Relaxed)
            .saturating_add(n)
            <= limits.max_bytes;
        let too_big =
            p.body.len() + n > limits.max_object || p.length.is_some_and(|l| p.body.len() + n > l);
        if !budget_left || too_big {
            self.cache.recording.fetch_sub(n, Ordering::Relaxed);
            self.give_up();
            return;
        }
        p.body.extend_from_slice(data);
        // hyper stops polling at the declared length, so the end of stream may never come.
        if p.length == Some(p.body.len()) {
            self.complete();
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.give_up();
    }
}

impl Body for Recording {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                Some(data) => self.take(data),
                None => self.give_up(),
            },
            Poll::Ready(Some(Err(_))) => self.give_up(),
            Poll::Ready(None) => self.complete(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use crate::body::test_body;

    use super::*;

    const LIMITS: CacheLimits = CacheLimits {
        max_bytes: 64 * 1024,
        max_object: 8 * 1024,
        max_ttl: Duration::from_secs(3600),
    };

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                http::HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        h
    }

    fn ttl(pairs: &[(&'static str, &'static str)]) -> Option<u64> {
        storable(StatusCode::OK, &headers(pairs), LIMITS).map(|d| d.as_secs())
    }

    fn cache() -> Arc<Cache> {
        Arc::new(Cache::new(LIMITS, Gauge::default(), Gauge::default()))
    }

    fn get(target: &str, pairs: &[(&'static str, &'static str)]) -> Request<()> {
        let mut req = Request::get(target)
            .body(())
            .unwrap_or_else(|e| panic!("request: {e}"));
        *req.headers_mut() = headers(pairs);
        req
    }

    fn key(target: &'static str) -> Key {
        Key {
            site: "home".into(),
            target: Bytes::from_static(target.as_bytes()),
            accept_encoding: Bytes::from_static(b"gzip"),
        }
    }

    fn entry(body: usize, now: Instant, ttl: u64) -> Entry {
        Entry {
            headers: HeaderMap::new(),
            body: Bytes::from(vec![b'x'; body]),
            stored: now,
            expires: now + Duration::from_secs(ttl),
        }
    }

    #[test]
    fn only_what_the_response_marks_public_is_stored() {
        // What Home Assistant sends for its frontend files.
        assert_eq!(
            ttl(&[("cache-control", "public, max-age=2678400")]),
            Some(3600)
        );
        assert_eq!(ttl(&[("cache-control", "public, max-age=60")]), Some(60));
        assert_eq!(
            ttl(&[("cache-control", "max-age=600, PUBLIC, s-maxage=30")]),
            Some(30)
        );
        assert_eq!(
            ttl(&[("cache-control", "public"), ("cache-control", "max-age=60")]),
            Some(60)
        );
        assert_eq!(
            ttl(&[("cache-control", "public, max-age=60"), ("age", "50")]),
            Some(10)
        );
        assert_eq!(
            ttl(&[
                ("cache-control", "public, max-age=60"),
                ("vary", "Accept-Encoding")
            ]),
            Some(60)
        );
        // Not public, or not said how long, or already stale.
        assert_eq!(ttl(&[]), None);
        assert_eq!(ttl(&[("cache-control", "max-age=60")]), None);
        assert_eq!(ttl(&[("cache-control", "public")]), None);
        assert_eq!(ttl(&[("cache-control", "public, max-age=0")]), None);
        assert_eq!(
            ttl(&[("cache-control", "public, max-age=60"), ("age", "60")]),
            None
        );
        // Anything against it, or a doubt.
        for against in [
            "public, max-age=60, private",
            "public, max-age=60, no-store",
            "public, max-age=60, no-cache",
            "public, max-age=-1",
            "public, max-age=1e3",
            "public, max-age",
        ] {
            let h = HeaderValue::from_static(against);
            assert_eq!(
                storable(
                    StatusCode::OK,
                    &HeaderMap::from_iter([(header::CACHE_CONTROL, h)]),
                    LIMITS
                ),
                None,
                "{against}"
            );
        }
        let public = ("cache-control", "public, max-age=60");
        assert_eq!(ttl(&[public, ("set-cookie", "a=1")]), None);
        assert_eq!(ttl(&[public, ("vary", "accept-encoding, cookie")]), None);
        assert_eq!(ttl(&[public, ("vary", "*")]), None);
        assert_eq!(ttl(&[public, ("content-range", "bytes 0-1/2")]), None);
        assert_eq!(ttl(&[public, ("age", "soon")]), None);
        for status in [
            StatusCode::NOT_FOUND,
            StatusCode::PARTIAL_CONTENT,
            StatusCode::FOUND,
        ] {
            assert_eq!(storable(status, &headers(&[public]), LIMITS), None);
        }
    }

    #[test]
    fn only_plain_gets_are_looked_up() {
        let cache = cache();
        let gz = ("accept-encoding", "gzip, deflate, br");
        let Lookup::Find(k) =
            cache.lookup(&get("/frontend_latest/app.js?v=1", &[gz]), "home", false)
        else {
            panic!("a plain GET is cacheable");
        };
        assert_eq!(&k.target[..], b"/frontend_latest/app.js?v=1");
        assert_eq!(&k.accept_encoding[..], b"gzip, deflate, br");
        // Our own session cookie never reaches Home Assistant, so it changes nothing.
        let ours = format!("{}=abc", cookie::COOKIE_NAME);
        let mut req = get("/a.js", &[gz]);
        req.headers_mut().insert(
            header::COOKIE,
            HeaderValue::from_str(&ours).unwrap_or_else(|e| panic!("{e}")),
        );
        assert!(matches!(cache.lookup(&req, "home", false), Lookup::Find(_)));
        assert!(matches!(
            cache.lookup(
                &get("/a.js", &[("cache-control", "no-cache")]),
                "home",
                false
            ),
            Lookup::Refresh(_)
        ));
        assert!(matches!(
            cache.lookup(&get("/a.js", &[("pragma", "no-cache")]), "home", false),
            Lookup::Refresh(_)
        ));
        for personal in [
            ("authorization", "Bearer x"),
            ("cookie", "session=1"),
            ("range", "bytes=0-1"),
            ("if-none-match", "\"x\""),
            ("if-modified-since", "Tue, 01 Dec 2026 00:00:00 GMT"),
            ("content-length", "3"),
            ("transfer-encoding", "chunked"),
        ] {
            assert_eq!(
                cache.lookup(&get("/a.js", &[personal]), "home", false),
                Lookup::Bypass,
                "{personal:?}"
            );
        }
        assert_eq!(
            cache.lookup(&get("/a.js", &[]), "home", true),
            Lookup::Bypass
        );
        let mut head = get("/a.js", &[]);
        *head.method_mut() = Method::HEAD;
        assert_eq!(cache.lookup(&head, "home", false), Lookup::Bypass);
        let long = format!("/{}", "a".repeat(MAX_TARGET));
        assert_eq!(
            cache.lookup(&get(&long, &[]), "home", false),
            Lookup::Bypass
        );
        let off = Cache::new(
            CacheLimits {
                max_bytes: 0,
                ..LIMITS
            },
            Gauge::default(),
            Gauge::default(),
        );
        assert_eq!(
            off.lookup(&get("/a.js", &[]), "home", false),
            Lookup::Bypass
        );
    }

    #[test]
    fn entries_expire_and_the_least_recently_used_go_first() {
        let now = Instant::now();
        let mut store = Store::default();
        let size = entry(10_000, now, 60).size(&key("/a"));
        let max = 3 * size;
        assert!(store.insert(key("/a"), entry(10_000, now, 60), max));
        assert!(store.insert(key("/b"), entry(10_000, now, 60), max));
        assert!(store.insert(key("/c"), entry(10_000, now, 60), max));
        assert_eq!(store.bytes(), max);
        // /a used: /b is now the oldest and goes when /d comes.
        assert!(store.get(&key("/a"), now).is_some());
        assert!(store.insert(key("/d"), entry(10_000, now, 60), max));
        assert!(store.get(&key("/b"), now).is_none());
        assert!(store.get(&key("/a"), now).is_some());
        assert_eq!(store.len(), 3);
        // Expired: gone, and its bytes with it.
        assert!(
            store
                .get(&key("/c"), now + Duration::from_secs(60))
                .is_none()
        );
        assert_eq!(store.len(), 2);
        assert_eq!(store.bytes(), 2 * size);
        // Bigger than everything: not stored, nothing evicted for it.
        assert!(!store.insert(key("/e"), entry(max, now, 60), max));
        assert_eq!(store.len(), 2);
        // Another method on a target drops it in every encoding.
        let mut br = key("/a");
        br.accept_encoding = Bytes::from_static(b"br");
        assert!(store.insert(br.clone(), entry(10, now, 60), max));
        store.invalidate("home", b"/a");
        assert!(store.get(&key("/a"), now).is_none());
        assert!(store.get(&br, now).is_none());
        assert_eq!(store.bytes(), size);
        store.invalidate("home", b"/d");
        assert_eq!((store.len(), store.bytes()), (0, 0));
    }

    fn response(
        parts: &[&'static [u8]],
        length: Option<usize>,
        fail: bool,
    ) -> Response<ResponseBody> {
        let mut r = Response::new(test_body(parts.iter().map(|p| Bytes::from_static(p)), fail));
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        );
        if let Some(n) = length {
            r.headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
        r
    }

    async fn drain(r: Response<ResponseBody>) -> Vec<u8> {
        r.into_body()
            .collect()
            .await
            .map(|c| c.to_bytes().to_vec())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_response_is_stored_only_when_it_went_through_whole() {
        let now = Instant::now();
        let cache = cache();
        // Whole, declared length: stored, served back with the same body and headers.
        let passed =
            drain(cache.record(key("/a"), response(&[b"ab", b"cd"], Some(4), false), now)).await;
        assert_eq!(passed, b"abcd");
        let hit = cache.get(&key("/a"), now + Duration::from_secs(5));
        let hit = hit.unwrap_or_else(|| panic!("stored"));
        let served = hit.response(now + Duration::from_secs(5));
        assert_eq!(served.headers()[header::AGE], "5");
        assert_eq!(served.headers()[header::CONTENT_LENGTH], "4");
        assert_eq!(drain(served).await, b"abcd");
        // Chunked, ended: stored.
        drain(cache.record(key("/b"), response(&[b"ab"], None, false), now)).await;
        assert!(cache.get(&key("/b"), now).is_some());
        // Broken mid-body, short of its length, or dropped half-read: not stored.
        drain(cache.record(key("/c"), response(&[b"ab"], None, true), now)).await;
        drain(cache.record(key("/d"), response(&[b"ab"], Some(4), false), now)).await;
        let mut half = cache
            .record(key("/e"), response(&[b"ab", b"cd"], Some(4), false), now)
            .into_body();
        let _ = half.frame().await;
        drop(half);
        // Too big for one entry, declared or not.
        let big: &'static [u8] = Box::leak(vec![0u8; LIMITS.max_object + 1].into_boxed_slice());
        drain(cache.record(key("/f"), response(&[big], Some(big.len()), false), now)).await;
        drain(cache.record(
            key("/g"),
            response(&[&big[..10], &big[10..]], None, false),
            now,
        ))
        .await;
        for k in ["/c", "/d", "/e", "/f", "/g"] {
            assert!(cache.get(&key(k), now).is_none(), "{k}");
        }
        // Nothing is left counted as being recorded.
        assert_eq!(cache.recording.load(Ordering::Relaxed), 0);
        // Not storable: passed through untouched, not recorded.
        let mut private = response(&[b"ab"], Some(2), false);
        private.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=60"),
        );
        assert_eq!(drain(cache.record(key("/h"), private, now)).await, b"ab");
        assert!(cache.get(&key("/h"), now).is_none());
    }
}
