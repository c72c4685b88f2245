//! Authentication: every route but `/ready`, `/metrics` and the static landing page needs a
//! token. Accepted forms, so InfluxDB clients work unchanged: `Authorization: Bearer <t>`,
//! `Authorization: Token <t>` (InfluxDB 2), HTTP Basic with the token as password, and the
//! `p` query parameter (InfluxDB 1 `/write`). The dashboard signs in once, with a token or a
//! user name and password, and then carries a session cookie (random id, HttpOnly,
//! SameSite=Strict) instead.
//!
//! Every authenticated request has an [`Identity`] with a role; [`required_role`] says what
//! each route needs: viewers read, operators also acknowledge and silence alerts, admins (and
//! the admin token) do everything else.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method};
use fabrik_registry::Role;
use parking_lot::Mutex;
use serde::Serialize;
use utoipa::ToSchema;

/// The cookie that carries a dashboard session.
pub const SESSION_COOKIE: &str = "fabrik_session";
/// How long a session lasts without signing in again.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest are dropped first.
const MAX_SESSIONS: usize = 1024;

/// Who a request acts as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Identity {
    /// User name, or `admin-token` for the admin token.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

impl Identity {
    /// The identity of the admin token.
    pub fn admin_token() -> Self {
        Self {
            name: "admin-token".into(),
            role: Role::Admin,
        }
    }
}

/// The role a request needs: reads (and SQL queries) are for viewers; acknowledging and
/// silencing alerts, and setting devices' writable points, for operators; every other change,
/// and the user list, for admins. A user
/// changing their own password is checked by that handler.
pub fn required_role(method: &Method, route: &str) -> Role {
    let read = matches!(*method, Method::GET | Method::HEAD);
    match (route, read) {
        (
            "/api/v1/users"
            | "/api/v1/audit"
            | "/api/v1/audit/verify"
            | "/api/v1/compliance"
            | "/api/v1/people/{name}",
            true,
        ) => Role::Admin,
        (_, true) | ("/api/v1/query", _) | ("/api/v1/users/{name}/password", _) => Role::Viewer,
        (
            "/api/v1/alerts/{id}/ack"
            | "/api/v1/alerts/{id}/apply"
            | "/api/v1/silences"
            | "/api/v1/silences/{id}"
            | "/api/v1/devices/{id}/setpoints/{signal}",
            _,
        ) => Role::Operator,
        _ => Role::Admin,
    }
}

/// The known tokens (for now: the admin token) and the dashboard sessions.
#[derive(Clone)]
pub struct Auth {
    admin_token: Arc<str>,
    sessions: Arc<Mutex<HashMap<String, (Instant, Identity)>>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth { admin_token: <redacted> }")
    }
}

/// Compares without an early exit, so response time does not leak how much of a guess matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
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

    /// Starts a session for `identity`; returns its id (the cookie value), or `None` without
    /// randomness.
    pub fn create_session(&self, identity: Identity) -> Option<String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).ok()?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut sessions = self.sessions.lock();
        let now = Instant::now();
        sessions.retain(|_, (expires, _)| *expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, (expires, _))| *expires)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), (now + SESSION_LIFETIME, identity));
        Some(id)
    }

    /// Ends every session of a user (removed, or their password changed).
    pub fn end_sessions_of(&self, name: &str) {
        self.sessions.lock().retain(|_, (_, who)| who.name != name);
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

    /// The identity of a live session.
    pub fn check_session(&self, id: &str) -> Option<Identity> {
        let sessions = self.sessions.lock();
        // Every id has the same length, so the lookup leaks nothing a guess could use.
        sessions
            .get(id)
            .filter(|(expires, _)| *expires > Instant::now())
            .map(|(_, who)| who.clone())
    }

    /// The identity a request carries (token or session), if any.
    pub fn identify(&self, headers: &HeaderMap, query: Option<&str>) -> Option<Identity> {
        if Self::token_of(headers, query).is_some_and(|t| self.check(&t)) {
            return Some(Identity::admin_token());
        }
        Self::session_of(headers).and_then(|id| self.check_session(&id))
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

    /// The user name and password of HTTP Basic credentials, if the request carries them: a
    /// device's id and token on the routes a device calls itself.
    pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
        let value = headers
            .get(axum::http::header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .trim();
        let (scheme, rest) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let text = String::from_utf8(decode_base64(rest.trim())?).ok()?;
        let (user, password) = text.split_once(':')?;
        Some((user.to_owned(), password.to_owned()))
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

    #[test]
    fn roles_follow_the_route_and_method() {
        use Role::*;
        for (method, route, role) in [
            (Method::GET, "/api/v1/devices", Viewer),
            (Method::POST, "/api/v1/query", Viewer),
            (Method::GET, "/api/v1/users", Admin),
            (Method::GET, "/api/v1/audit", Admin),
            (Method::GET, "/api/v1/audit/verify", Admin),
            (Method::GET, "/api/v1/compliance", Admin),
            (Method::POST, "/api/v1/alerts/{id}/ack", Operator),
            (Method::POST, "/api/v1/alerts/{id}/apply", Operator),
            (Method::POST, "/api/v1/silences", Operator),
            (Method::DELETE, "/api/v1/silences/{id}", Operator),
            (
                Method::POST,
                "/api/v1/devices/{id}/setpoints/{signal}",
                Operator,
            ),
            (Method::GET, "/api/v1/setpoints", Viewer),
            (Method::POST, "/api/v1/write", Admin),
            (Method::POST, "/api/v1/devices/{id}/token", Admin),
            (Method::DELETE, "/api/v1/devices/{id}", Admin),
            (Method::POST, "/api/v1/users", Admin),
            (Method::PUT, "/api/v1/users/{name}/password", Viewer),
        ] {
            assert_eq!(required_role(&method, route), role, "{method} {route}");
        }
        let auth = Auth::new("t");
        let id = auth
            .create_session(Identity {
                name: "ana".into(),
                role: Operator,
            })
            .unwrap();
        assert_eq!(auth.check_session(&id).unwrap().role, Operator);
        auth.end_sessions_of("ana");
        assert!(auth.check_session(&id).is_none());
    }
}
