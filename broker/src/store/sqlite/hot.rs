//! What every decision reads — the node's registration entries, each
//! subject's suspension and signals, and the grant's budget bucket — kept in
//! memory, so a request runs no query for them once its subjects have been
//! seen.
//!
//! The cache is filled from read transactions and emptied by the writer:
//! an update hook on the write connection flags every change to the
//! `entries`, `suspensions`, `signals` and `budgets` tables, whichever statement made
//! it, and the writer empties the flagged part after its transaction ends
//! and before any caller learns that its write is done. A read that began
//! before such a change may not fill the cache (the generation moved on),
//! so an entry never holds a state older than the last commit. The writer
//! thread is the database's only writer (the chain head already lives in
//! its memory), so no change escapes the hook.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use mintguard_policy::budget::BudgetSnapshot;
use rusqlite::hooks::Action;

use crate::store::{Entry, SignalRecord, SuspensionRecord};

/// Entries per map at most; a full map is emptied before the next insert.
const CAPACITY: usize = 65_536;

/// A change to `suspensions` or `signals`.
const SUBJECTS: u8 = 1;
/// A change to `budgets`.
const BUDGETS: u8 = 2;
/// A change to `entries`.
const ENTRIES: u8 = 4;

/// What the store knows about one subject (an identity or an issuer).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct SubjectState {
    pub suspension: Option<SuspensionRecord>,
    /// Ordered by kind, then source.
    pub signals: Vec<SignalRecord>,
}

#[derive(Default)]
struct Maps {
    /// Moved on by every transaction that changed a cached table.
    generation: u64,
    subjects: HashMap<String, SubjectState>,
    /// `None`: the bucket does not exist yet.
    budgets: HashMap<String, Option<BudgetSnapshot>>,
    /// Each parent's registration entries.
    entries: HashMap<String, Arc<Vec<Entry>>>,
}

/// The cache, shared by the store's handles and its writer thread.
#[derive(Default)]
pub(super) struct Hot {
    maps: Mutex<Maps>,
    /// Tables changed by the writer's open transaction (set by the hook).
    changed: Arc<AtomicU8>,
}

/// What a lookup found; `None` fields are to be read.
pub(super) struct Cached {
    pub generation: u64,
    pub identity: Option<SubjectState>,
    pub issuer: Option<SubjectState>,
    pub budget: Option<Option<BudgetSnapshot>>,
}

impl Hot {
    /// Flags the writer connection's changes to the cached tables.
    pub fn watch(&self, conn: &mut rusqlite::Connection) -> rusqlite::Result<()> {
        let changed = self.changed.clone();
        conn.update_hook(Some(
            move |_: Action, _db: &str, table: &str, _rowid: i64| {
                let bit = match table {
                    "suspensions" | "signals" => SUBJECTS,
                    "budgets" => BUDGETS,
                    "entries" => ENTRIES,
                    _ => return,
                };
                changed.fetch_or(bit, Ordering::Relaxed);
            },
        ))
    }

    /// Called by the writer once a transaction ended (committed or not),
    /// before its callers are answered: forgets what it may have changed.
    pub fn transaction_ended(&self) {
        let changed = self.changed.swap(0, Ordering::Relaxed);
        if changed == 0 {
            return;
        }
        let mut maps = self.lock();
        maps.generation += 1;
        if changed & SUBJECTS != 0 {
            maps.subjects.clear();
        }
        if changed & BUDGETS != 0 {
            maps.budgets.clear();
        }
        if changed & ENTRIES != 0 {
            maps.entries.clear();
        }
    }

    /// The generation and, if cached, the entries whose parent is `parent`.
    pub fn entries(&self, parent: &str) -> (u64, Option<Arc<Vec<Entry>>>) {
        let maps = self.lock();
        (maps.generation, maps.entries.get(parent).cloned())
    }

    /// Stores the entries a read found for `parent`, unless a transaction
    /// changed the cached tables since `generation`.
    pub fn fill_entries(&self, generation: u64, parent: &str, entries: &[Entry]) {
        let mut maps = self.lock();
        if maps.generation != generation {
            return;
        }
        if maps.entries.len() >= CAPACITY {
            maps.entries.clear();
        }
        maps.entries
            .insert(parent.to_owned(), Arc::new(entries.to_vec()));
    }

    /// The cached parts of a request's state.
    pub fn lookup(&self, identity: &str, issuer: &str, budget_key: Option<&str>) -> Cached {
        let maps = self.lock();
        Cached {
            generation: maps.generation,
            identity: maps.subjects.get(identity).cloned(),
            issuer: maps.subjects.get(issuer).cloned(),
            budget: budget_key.and_then(|k| maps.budgets.get(k).copied()),
        }
    }

    /// A subject's suspension, if the subject is cached.
    pub fn suspension(&self, subject: &str) -> Option<Option<SuspensionRecord>> {
        let maps = self.lock();
        maps.subjects.get(subject).map(|s| s.suspension.clone())
    }

    /// Stores what a read found, unless a transaction changed the cached
    /// tables since `generation` (the read may predate it).
    pub fn fill(
        &self,
        generation: u64,
        subjects: &[(&str, &SubjectState)],
        budget: Option<(&str, Option<BudgetSnapshot>)>,
    ) {
        let mut maps = self.lock();
        if maps.generation != generation {
            return;
        }
        for (subject, state) in subjects {
            if maps.subjects.len() >= CAPACITY {
                maps.subjects.clear();
            }
            maps.subjects
                .insert((*subject).to_owned(), (*state).clone());
        }
        if let Some((key, snapshot)) = budget {
            if maps.budgets.len() >= CAPACITY {
                maps.budgets.clear();
            }
            maps.budgets.insert(key.to_owned(), snapshot);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Maps> {
        // The maps hold no invariant a panic could break halfway.
        self.maps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The two subjects' signals in the order of `ORDER BY subject, kind, source`.
pub(super) fn signal_pair(
    (a, a_state): (&str, &SubjectState),
    (b, b_state): (&str, &SubjectState),
) -> Vec<SignalRecord> {
    if a == b {
        return a_state.signals.clone();
    }
    let (first, second) = if a < b {
        (a_state, b_state)
    } else {
        (b_state, a_state)
    };
    first
        .signals
        .iter()
        .chain(&second.signals)
        .cloned()
        .collect()
}
