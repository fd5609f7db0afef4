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

/// The cookie naming a session (`__Host-`: Secure, no Domain, Path=/, so no
/// sibling host can set or shadow it).
pub const COOKIE: &str = "__Host-mintguard_session";
/// The header a state-changing request carries the session's CSRF token in.
pub const CSRF_HEADER: &str = "x-mintguard-csrf";
/// Most sessions held at once: a sign-in beyond them is refused (never
/// another operator's session evicted).
pub const MAX_SESSIONS: usize = 1024;
/// Most sessions of one operator: its least recently used goes first.
pub const MAX_PER_OPERATOR: usize = 16;
/// Most sign-ins of one operator per minute (each is a log record).
pub const SIGN_INS_PER_MINUTE: usize = 10;

/// Why a session was not opened.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// The operator signed in too often in the last minute.
    TooOften,
    /// The table is full of live sessions.
    Full,
    /// The system's randomness failed.
    Rng,
}

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
    /// Each operator's sign-ins of the last minute (ms).
    sign_ins: Mutex<HashMap<String, Vec<i64>>>,
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
            sign_ins: Mutex::new(HashMap::new()),
            idle_ms,
            max_age_ms,
        }
    }

    /// How long a session lasts without a request, ms.
    pub fn idle_ms(&self) -> i64 {
        self.idle_ms
    }

    /// Opens a session for `name`: its id (for the cookie) and the session.
    /// An operator holds at most [`MAX_PER_OPERATOR`] (its own least
    /// recently used goes) and signs in at most [`SIGN_INS_PER_MINUTE`]
    /// times a minute; a full table refuses rather than evicts.
    pub fn open(&self, name: &str, via: Via, now_ms: i64) -> Result<(String, Session), OpenError> {
        {
            let mut sign_ins = self.sign_ins.lock().map_err(|_| OpenError::Full)?;
            sign_ins.retain(|_, times| {
                times.retain(|t| now_ms.saturating_sub(*t) < 60_000);
                !times.is_empty()
            });
            let times = sign_ins.entry(name.to_owned()).or_default();
            if times.len() >= SIGN_INS_PER_MINUTE {
                return Err(OpenError::TooOften);
            }
            times.push(now_ms);
        }
        let id = crate::ids::secret_hex::<32>().map_err(|_| OpenError::Rng)?;
        let csrf = crate::ids::secret_hex::<32>().map_err(|_| OpenError::Rng)?;
        let session = Session {
            name: name.to_owned(),
            via,
            csrf,
            created_ms: now_ms,
            last_ms: now_ms,
        };
        let mut map = self.by_id_hash.lock().map_err(|_| OpenError::Full)?;
        map.retain(|_, s| self.live(s, now_ms));
        let own: Vec<(&String, i64)> = map
            .iter()
            .filter(|(_, s)| s.name == name)
            .map(|(k, s)| (k, s.last_ms))
            .collect();
        if own.len() >= MAX_PER_OPERATOR
            && let Some(oldest) = own
                .iter()
                .min_by_key(|(_, t)| *t)
                .map(|(k, _)| (*k).clone())
        {
            map.remove(&oldest);
        }
        if map.len() >= MAX_SESSIONS {
            return Err(OpenError::Full);
        }
        map.insert(id_hash(&id), session.clone());
        Ok((id, session))
    }

    fn live(&self, s: &Session, now_ms: i64) -> bool {
        now_ms.saturating_sub(s.last_ms) < self.idle_ms
            && now_ms.saturating_sub(s.created_ms) < self.max_age_ms
    }

    /// The session `id` names, its idle time restarted when `active` (an
    /// operator's request, not a page's background poll); `None` (and
    /// gone) once it has ended.
    pub fn touch(&self, id: &str, now_ms: i64, active: bool) -> Option<Session> {
        let mut map = self.by_id_hash.lock().ok()?;
        let key = id_hash(id);
        let session = map.get_mut(&key)?;
        if !self.live(session, now_ms) {
            map.remove(&key);
            return None;
        }
        if active {
            session.last_ms = now_ms;
        }
        Some(session.clone())
    }

    /// Ends the session `id` names.
    pub fn close(&self, id: &str) {
        if let Ok(mut map) = self.by_id_hash.lock() {
            map.remove(&id_hash(id));
        }
    }
}

/// The session ids `Cookie` headers carry (a request with more than one
/// is refused: one may have been planted beside the real one).
pub fn cookie_ids<'a>(headers: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    headers
        .flat_map(|h| h.split(';'))
        .filter_map(|part| {
            let (name, value) = part.trim().split_once('=')?;
            (name == COOKIE).then_some(value)
        })
        .collect()
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
        assert_eq!(sessions.touch(&id, 900, true).unwrap().csrf, opened.csrf);
        // Each request restarts the idle time…
        assert!(sessions.touch(&id, 1_800, true).is_some());
        // …a background poll does not…
        assert!(sessions.touch(&id, 2_700, false).is_some());
        assert!(sessions.touch(&id, 2_800, false).is_none());
        // …and nothing restarts the age.
        let (id, _) = sessions.open("alice", Via::Certificate, 0).unwrap();
        let mut t = 0;
        while t < 9_000 {
            t += 900;
            assert!(sessions.touch(&id, t, true).is_some(), "{t}");
        }
        assert!(sessions.touch(&id, 10_000, true).is_none());
        let (gone, _) = sessions.open("carol", Via::Certificate, 0).unwrap();
        sessions.close(&gone);
        assert!(sessions.touch(&gone, 1, true).is_none());
        assert!(sessions.touch("not-a-session", 1, true).is_none());
    }

    /// One operator cannot push the others out: it holds at most
    /// MAX_PER_OPERATOR sessions (its own oldest goes), signs in at most
    /// SIGN_INS_PER_MINUTE times a minute, and a full table refuses.
    #[test]
    fn sessions_are_bounded_per_operator_and_in_all() {
        let sessions = Sessions::new(1_000_000_000, 1_000_000_000);
        let (admin, _) = sessions.open("admin", Via::Certificate, 0).unwrap();
        let mut t = 0;
        let mut first = None;
        for _ in 0..MAX_PER_OPERATOR + 1 {
            t += 60_000;
            let (id, s) = sessions.open("viewer", Via::Certificate, t).unwrap();
            assert_eq!(id.len(), 64);
            assert_ne!(id, s.csrf);
            first.get_or_insert(id);
        }
        assert!(
            sessions
                .touch(first.as_deref().unwrap(), t, false)
                .is_none(),
            "its own oldest went"
        );
        assert!(
            sessions.touch(&admin, t, false).is_some(),
            "another's stays"
        );
        for i in 0..SIGN_INS_PER_MINUTE - 1 {
            sessions
                .open("viewer", Via::Certificate, t + i as i64)
                .unwrap();
        }
        assert_eq!(
            sessions
                .open("viewer", Via::Certificate, t + 100)
                .unwrap_err(),
            OpenError::TooOften
        );
        let mut full = 0;
        for i in 0..MAX_SESSIONS {
            match sessions.open(&format!("op{i}"), Via::Certificate, t) {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e, OpenError::Full);
                    full += 1;
                }
            }
        }
        assert!(full > 0, "a full table refuses");
        assert!(
            sessions.touch(&admin, t, false).is_some(),
            "and evicts no one"
        );
    }

    #[test]
    fn the_cookie_and_the_csrf_token_are_read_exactly() {
        let ids = |h: &str| {
            cookie_ids(std::iter::once(h))
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("a=b; __Host-mintguard_session=abc; c=d"), ["abc"]);
        assert_eq!(ids("mintguard_session=abc"), Vec::<String>::new());
        assert_eq!(
            ids("__Host-mintguard_session=a; __Host-mintguard_session=b").len(),
            2
        );
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
    }
}
