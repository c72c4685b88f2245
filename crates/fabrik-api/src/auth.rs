//! Authentication: every route but `/ready`, `/metrics` and the static landing page needs a
//! token. Accepted forms, so InfluxDB clients work unchanged: `Authorization: Bearer <t>`,
//! `Authorization: Token <t>` (InfluxDB 2), HTTP Basic with the token as password, and the
//! `p` query parameter (InfluxDB 1 `/write`). The dashboard signs in once with a token and then
//! carries a session cookie (random id, HttpOnly, SameSite=Strict) instead of the token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use parking_lot::Mutex;

/// The cookie that carries a dashboard session.
pub const SESSION_COOKIE: &str = "fabrik_session";
/// How long a session lasts without signing in again.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest are dropped first.
const MAX_SESSIONS: usize = 1024;

/// The known tokens (for now: the admin token) and the dashboard sessions.
#[derive(Clone)]
pub struct Auth {
    admin_token: Arc<str>,
    sessions: Arc<Mutex<HashMap<String, Instant>>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth { admin_token: <redacted> }")
    }
}

/// Compares without an early exit, so response time does not leak how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn decode_base64(input: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u8> {
        match c {
            b'A'..=b'Z' => Some(c - b'A'),
            b'a'..=b'z' => Some(c - b'a' + 26),
            b'0'..=b'9' => Some(c - b'0' + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes: Vec<u8> = input.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let vals: Vec<u8> = chunk.iter().map(|&c| value(c)).collect::<Option<_>>()?;
        let n = vals.len();
        let mut acc: u32 = 0;
        for (i, v) in vals.iter().enumerate() {
            acc |= u32::from(*v) << (18 - 6 * i);
        }
        let b = acc.to_be_bytes();
        match n {
            4 => out.extend_from_slice(&b[1..4]),
            3 => out.extend_from_slice(&b[1..3]),
            2 => out.push(b[1]),
            _ => return None,
        }
    }
    Some(out)
}

impl Auth {
    /// Auth with one admin token.
    pub fn new(admin_token: impl Into<Arc<str>>) -> Self {
        Self {
            admin_token: admin_token.into(),
            sessions: Arc::default(),
        }
    }

    /// Starts a session; returns its id (the cookie value), or `None` without randomness.
    pub fn create_session(&self) -> Option<String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).ok()?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut sessions = self.sessions.lock();
        let now = Instant::now();
        sessions.retain(|_, expires| *expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, expires)| **expires)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), now + SESSION_LIFETIME);
        Some(id)
    }

    /// Ends a session.
    pub fn end_session(&self, id: &str) {
        self.sessions.lock().remove(id);
    }

    /// The session id in a request's cookies, if any.
    pub fn session_of(headers: &HeaderMap) -> Option<String> {
        headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == SESSION_COOKIE).then(|| v.to_owned())
            })
    }

    /// True when `id` is a live session.
    pub fn check_session(&self, id: &str) -> bool {
        let sessions = self.sessions.lock();
        // Every id has the same length, so the lookup leaks nothing a guess could use.
        sessions
            .get(id)
            .is_some_and(|expires| *expires > Instant::now())
    }

    /// Extracts the token a request carries, in any accepted form.
    pub fn token_of(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
        if let Some(value) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            let value = value.trim();
            if let Some((scheme, rest)) = value.split_once(' ') {
                let rest = rest.trim();
                match scheme.to_ascii_lowercase().as_str() {
                    "bearer" | "token" => return Some(rest.to_owned()),
                    "basic" => {
                        let decoded = decode_base64(rest)?;
                        let text = String::from_utf8(decoded).ok()?;
                        let (_, password) = text.split_once(':')?;
                        return Some(password.to_owned());
                    }
                    _ => return None,
                }
            }
            return None;
        }
        let query = query?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == "p").then(|| percent_decode(v))
        })
    }

    /// True when `token` is valid.
    pub fn check(&self, token: &str) -> bool {
        constant_time_eq(token.as_bytes(), self.admin_token.as_bytes())
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn every_accepted_form_yields_the_token() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer s3cret"));
        assert_eq!(Auth::token_of(&h, None).as_deref(), Some("s3cret"));
        h.insert("authorization", HeaderValue::from_static("Token s3cret"));
        assert_eq!(Auth::token_of(&h, None).as_deref(), Some("s3cret"));
        // "user:s3cret"
        h.insert(
            "authorization",
            HeaderValue::from_static("Basic dXNlcjpzM2NyZXQ="),
        );
        assert_eq!(Auth::token_of(&h, None).as_deref(), Some("s3cret"));
        let empty = HeaderMap::new();
        assert_eq!(
            Auth::token_of(&empty, Some("db=x&u=me&p=s3%63ret")).as_deref(),
            Some("s3cret")
        );
        assert_eq!(Auth::token_of(&empty, Some("db=x")), None);
        let auth = Auth::new("s3cret");
        assert!(auth.check("s3cret"));
        assert!(!auth.check("s3cre"));
        assert!(!auth.check("s3creT"));
    }
}
