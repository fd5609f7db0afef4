//! The operator console's browser sessions. A session stands for one
//! operator's sign-in (with a bearer token, or the operator certificate the
//! browser presented) and is named by a random id kept only in an HttpOnly,
//! Secure, SameSite=Strict cookie; this store holds the id's SHA-256, never
//! the id. It ends after `idle_timeout` without a request, after `max_age`
//! in all, at sign-out, and when what it stood for is gone (the token
//! removed, the operator's role taken away: checked on every request by the
//! caller, as for any credential).
//!
//! Each session has a CSRF token, given to the page at sign-in and required
//! in `X-Mintguard-CSRF` on every state-changing request.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// The cookie naming a session.
pub const COOKIE: &str = "mintguard_session";
/// The header a state-changing request carries the session's CSRF token in.
pub const CSRF_HEADER: &str = "x-mintguard-csrf";
/// Most sessions held at once; the least recently used goes first.
pub const MAX_SESSIONS: usize = 1024;

/// What a session signed in with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// A bearer token (its hash): the session ends when the token does.
    Token(String),
    /// The operator certificate the browser presented.
    Certificate,
}

/// One signed-in operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The operator's name.
    pub name: String,
    /// What it signed in with.
    pub via: Via,
    /// Its CSRF token.
    pub csrf: String,
    created_ms: i64,
    last_ms: i64,
}

/// The console's sessions.
pub struct Sessions {
    by_id_hash: Mutex<HashMap<String, Session>>,
    idle_ms: i64,
    max_age_ms: i64,
}

fn id_hash(id: &str) -> String {
    crate::ids::hex(&Sha256::digest(id.as_bytes()))
}

impl Sessions {
    /// Sessions ending `idle_ms` after their last request and `max_age_ms`
    /// after sign-in.
    pub fn new(idle_ms: i64, max_age_ms: i64) -> Self {
        Self {
            by_id_hash: Mutex::new(HashMap::new()),
            idle_ms,
            max_age_ms,
        }
    }

    /// How long a session lasts without a request, ms.
    pub fn idle_ms(&self) -> i64 {
        self.idle_ms
    }

    /// Opens a session for `name`: its id (for the cookie) and the session.
    /// `None` when the system's randomness fails (no session, never a
    /// guessable one).
    pub fn open(&self, name: &str, via: Via, now_ms: i64) -> Option<(String, Session)> {
        let id = crate::ids::secret_hex::<32>().ok()?;
        let csrf = crate::ids::secret_hex::<32>().ok()?;
        let session = Session {
            name: name.to_owned(),
            via,
            csrf,
            created_ms: now_ms,
            last_ms: now_ms,
        };
        let mut map = self.by_id_hash.lock().ok()?;
        map.retain(|_, s| self.live(s, now_ms));
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_ms)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id_hash(&id), session.clone());
        Some((id, session))
    }

    fn live(&self, s: &Session, now_ms: i64) -> bool {
        now_ms.saturating_sub(s.last_ms) < self.idle_ms
            && now_ms.saturating_sub(s.created_ms) < self.max_age_ms
    }

    /// The session `id` names, its idle time restarted; `None` (and gone)
    /// once it has ended.
    pub fn touch(&self, id: &str, now_ms: i64) -> Option<Session> {
        let mut map = self.by_id_hash.lock().ok()?;
        let key = id_hash(id);
        let session = map.get_mut(&key)?;
        if !self.live(session, now_ms) {
            map.remove(&key);
            return None;
        }
        session.last_ms = now_ms;
        Some(session.clone())
    }

    /// Ends the session `id` names.
    pub fn close(&self, id: &str) {
        if let Ok(mut map) = self.by_id_hash.lock() {
            map.remove(&id_hash(id));
        }
    }
}

/// The session id a `Cookie` header carries, if any.
pub fn cookie_id(header: &str) -> Option<&str> {
    header.split(';').find_map(|part| {
        let (name, value) = part.trim().split_once('=')?;
        (name == COOKIE && !value.is_empty() && value.len() <= 128).then_some(value)
    })
}

/// Whether two secrets are equal, in time that does not depend on where
/// they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_when_idle_too_long_at_its_age_and_at_sign_out() {
        let sessions = Sessions::new(1_000, 10_000);
        let (id, opened) = sessions.open("alice", Via::Certificate, 0).unwrap();
        assert_eq!(opened.name, "alice");
        assert_eq!(sessions.touch(&id, 900).unwrap().csrf, opened.csrf);
        // Each request restarts the idle time…
        assert!(sessions.touch(&id, 1_800).is_some());
        // …but not the age.
        let mut t = 1_800;
        while t < 9_900 {
            t += 900;
            assert!(sessions.touch(&id, t.min(9_999)).is_some(), "{t}");
        }
        assert!(sessions.touch(&id, 10_000).is_none());
        let (idle, _) = sessions.open("bob", Via::Certificate, 0).unwrap();
        assert!(sessions.touch(&idle, 1_000).is_none());
        let (gone, _) = sessions.open("carol", Via::Certificate, 0).unwrap();
        sessions.close(&gone);
        assert!(sessions.touch(&gone, 1).is_none());
        assert!(sessions.touch("not-a-session", 1).is_none());
    }

    #[test]
    fn sessions_are_bounded_and_their_ids_unguessable() {
        let sessions = Sessions::new(1_000_000, 1_000_000);
        let (first, _) = sessions.open("a", Via::Certificate, 0).unwrap();
        let mut last = String::new();
        for i in 1..=MAX_SESSIONS {
            let (id, s) = sessions.open("a", Via::Certificate, i as i64).unwrap();
            assert_eq!(id.len(), 64);
            assert_ne!(id, s.csrf);
            last = id;
        }
        assert!(sessions.touch(&first, 2_000).is_none(), "the oldest went");
        assert!(sessions.touch(&last, 2_000).is_some());
    }

    #[test]
    fn the_cookie_and_the_csrf_token_are_read_exactly() {
        assert_eq!(cookie_id("a=b; mintguard_session=abc; c=d"), Some("abc"));
        assert_eq!(cookie_id("mintguard_session="), None);
        assert_eq!(cookie_id("xmintguard_session=abc"), None);
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }
}
