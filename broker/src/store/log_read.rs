//! Reading the log across its chains, in time order.
//!
//! Each chain is read in `seq` order after a cursor of its own, and the
//! chains' pages are merged by `(time_ms, chain, seq)`. What a page takes
//! from each chain is a prefix of what that chain has after its cursor, so
//! a reader paging on never skips a record and never sees one twice — not
//! even one a slower replica commits after a faster replica's later ones
//! (a single sequence over all chains would skip it). The order is time
//! order wherever each chain's records are in time order.

use std::collections::BTreeMap;

use super::{DecisionRow, LogQuery, LogStore, Result};
use crate::log::LogRecord;

/// Most chains a cursor names (a cursor comes in from the admin API).
pub const MAX_CURSOR_CHAINS: usize = 1024;

/// Where a reader of the whole log stands: the last seq it read of each
/// chain. Written `CHAIN:SEQ,…` (the unnamed chain as `:SEQ`); a bare
/// number is the unnamed chain's seq, as before chains had names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogCursor(BTreeMap<String, i64>);

impl LogCursor {
    /// The last seq read of `chain` (0: none).
    pub fn after(&self, chain: &str) -> i64 {
        self.0.get(chain).copied().unwrap_or(0)
    }

    /// Moves past `seq` of `chain`.
    pub fn advance(&mut self, chain: &str, seq: i64) {
        let at = self.0.entry(chain.to_owned()).or_insert(0);
        *at = (*at).max(seq);
    }

    /// The seq it holds for `chain`, if it names it.
    pub fn get(&self, chain: &str) -> Option<i64> {
        self.0.get(chain).copied()
    }

    /// Holds `seq` for `chain`, whatever it held.
    pub fn set(&mut self, chain: &str, seq: i64) {
        self.0.insert(chain.to_owned(), seq);
    }

    /// Whether it names no chain.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses the written form; the reason when it is not one.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let mut cursor = Self::default();
        if text.is_empty() {
            return Ok(cursor);
        }
        if let Ok(seq) = text.parse::<i64>() {
            cursor.advance("", seq.max(0));
            return Ok(cursor);
        }
        for part in text.split(',') {
            if cursor.0.len() == MAX_CURSOR_CHAINS {
                return Err(format!("a cursor names at most {MAX_CURSOR_CHAINS} chains"));
            }
            let (chain, seq) = part
                .rsplit_once(':')
                .ok_or("a cursor is CHAIN:SEQ,… (the unnamed chain as :SEQ)")?;
            if !(chain.is_empty() || crate::ids::is_hex_id(chain)) {
                return Err("a chain is named by a replica's instance id (hex)".into());
            }
            let seq = seq
                .parse::<i64>()
                .ok()
                .filter(|s| *s >= 0)
                .ok_or("a cursor's seq is a whole number")?;
            cursor.advance(chain, seq);
        }
        Ok(cursor)
    }
}

impl std::fmt::Display for LogCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (chain, seq)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{chain}:{seq}")?;
        }
        Ok(())
    }
}

/// Records matching `query` (its `chain` and `after_seq` are ignored)
/// after `after`, from every chain, merged in time order; at most
/// `query.limit`. The next page's cursor is `after` advanced past each
/// record returned.
pub async fn read_log(
    store: &dyn LogStore,
    query: &LogQuery,
    after: &LogCursor,
) -> Result<Vec<LogRecord>> {
    let limit = query.limit.max(1);
    let mut pages = Vec::new();
    for chain in store.chains().await? {
        if chain.seq <= after.after(&chain.chain) {
            continue;
        }
        let page = store
            .log(&LogQuery {
                after_seq: Some(after.after(&chain.chain)),
                limit,
                chain: chain.chain,
                ..query.clone()
            })
            .await?;
        pages.push(page);
    }
    Ok(merge(pages, limit, |r| (r.entry.time_ms, &r.chain, r.seq)))
}

/// A value a log query binds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Bound {
    /// A text column's value.
    Text(String),
    /// An integer's.
    Int(i64),
}

/// The outcomes that are the bulk of traffic; every other one is in the
/// `log_notable` partial index (migration 14), whose condition is this.
pub const HOT_OUTCOMES: &[&str] = &["allow", "allow_reduced", "minted"];
/// `log_notable`'s condition, spelled as the migration spells it (SQLite
/// uses a partial index only for a query that names its condition).
pub const NOTABLE_SQL: &str = "outcome NOT IN ('allow', 'allow_reduced', 'minted')";

/// The `WHERE` conditions of `query` with only the filters it sets, so that
/// each is matched by its index (`column = ?` is; `(? IS NULL OR column =
/// ?)` is not), and the values they bind, in order; `placeholder(n)` spells
/// the n-th (from 1) in the backend's dialect.
pub(crate) fn log_conditions(
    query: &LogQuery,
    placeholder: impl Fn(usize) -> String,
) -> (String, Vec<Bound>) {
    let mut conditions = Vec::new();
    let mut values = Vec::new();
    let mut bind = |condition: &str, value: Bound| {
        values.push(value);
        conditions.push(condition.replace('?', &placeholder(values.len())));
    };
    bind("seq > ?", Bound::Int(query.after_seq.unwrap_or(0)));
    if let Some(seq) = query.before_seq {
        bind("seq < ?", Bound::Int(seq));
    }
    for (column, value) in [
        ("identity", &query.identity),
        ("grant_name", &query.grant),
        ("node", &query.node),
        ("outcome", &query.outcome),
    ] {
        if let Some(v) = value {
            bind(&format!("{column} = ?"), Bound::Text(v.clone()));
        }
    }
    if let Some(ms) = query.since_ms {
        bind("time_ms >= ?", Bound::Int(ms));
    }
    if let Some(ms) = query.until_ms {
        bind("time_ms < ?", Bound::Int(ms));
    }
    if query
        .outcome
        .as_deref()
        .is_some_and(|o| !HOT_OUTCOMES.contains(&o))
    {
        conditions.push(NOTABLE_SQL.to_owned());
    }
    (conditions.join(" AND "), values)
}

/// A page of the log, newest first, with where to read on (see
/// [`read_log_recent`], [`read_log_newer`]).
#[derive(Clone, Debug, PartialEq)]
pub struct RecentPage {
    /// The records, newest first.
    pub records: Vec<LogRecord>,
    /// Where the older page starts: each chain's records before its seq.
    pub before: LogCursor,
    /// Where newer records start: each chain's records after its seq.
    pub after: LogCursor,
    /// Whether records matching the query lie beyond this page (older ones
    /// for [`read_log_recent`], newer ones for [`read_log_newer`]).
    pub more: bool,
    /// Whether the page stopped at [`SCAN_WINDOW`] records of some chain
    /// without filling: older matches may lie below, unread.
    pub scan_limited: bool,
}

/// The newest records matching `query` (its `chain`, `after_seq`,
/// `before_seq` and order are ignored) from every chain, newest first, at
/// most `query.limit`: each chain's records before the seq `before` holds
/// for it, from its head where it holds none. Each chain is read backwards
/// from its own bound and the pages merged by time, so paging on with
/// [`RecentPage::before`] never skips a record nor shows one twice;
/// [`RecentPage::after`] holds each chain's head as it was read, for
/// [`read_log_newer`].
pub async fn read_log_recent(
    store: &dyn LogStore,
    query: &LogQuery,
    before: &LogCursor,
) -> Result<RecentPage> {
    read_log_recent_within(store, query, before, SCAN_WINDOW).await
}

/// [`read_log_recent`], reading at most `window` records of a chain for a
/// filter no index serves.
pub async fn read_log_recent_within(
    store: &dyn LogStore,
    query: &LogQuery,
    before: &LogCursor,
    window: i64,
) -> Result<RecentPage> {
    let limit = query.limit.max(1);
    let capped = scan_capped(query);
    let mut next = before.clone();
    let mut after = LogCursor::default();
    let (mut pages, mut full, mut read, mut scan_limited) = (Vec::new(), false, 0, false);
    // Per chain: the records it returned, and where its scan stopped when
    // the page is not full (the next page starts below it).
    let mut scanned = Vec::new();
    for chain in store.chains().await? {
        after.advance(&chain.chain, chain.seq);
        // A cursor past the head reads from the head.
        let head = chain.seq.saturating_add(1);
        let bound = before.get(&chain.chain).map_or(head, |b| b.min(head));
        next.set(&chain.chain, bound);
        let base = chain.base.as_ref().map_or(0, |b| b.0);
        let floor = if capped {
            bound
                .saturating_sub(1)
                .saturating_sub(window.max(1))
                .max(base)
        } else {
            0
        };
        let page = store
            .log(&LogQuery {
                after_seq: Some(floor),
                before_seq: Some(bound),
                newest_first: true,
                limit,
                chain: chain.chain.clone(),
                ..query.clone()
            })
            .await?;
        let short = page.len() < limit;
        full |= !short;
        read += page.len();
        if short && floor > base {
            scan_limited = true;
        }
        scanned.push((chain.chain, page.len(), short.then_some(floor)));
        pages.push(page);
    }
    let records = merge(pages, limit, |r| {
        (
            r.entry.time_ms.saturating_neg(),
            &r.chain,
            r.seq.saturating_neg(),
        )
    });
    for r in &records {
        next.set(&r.chain, r.seq);
    }
    // A chain whose every match in its scanned range is on this page goes
    // on below that range.
    for (chain, returned, floor) in scanned {
        if let Some(floor) = floor
            && records.iter().filter(|r| r.chain == chain).count() == returned
        {
            next.set(&chain, floor.saturating_add(1));
        }
    }
    Ok(RecentPage {
        more: full || read > records.len() || scan_limited,
        records,
        before: next,
        after,
        scan_limited,
    })
}

/// Records of one chain a page reads at most when no index serves its
/// filter (a node, a grant or a hot outcome, without an identity or a
/// notable outcome): beyond them the page is partial
/// ([`RecentPage::scan_limited`]) and the next one reads on.
pub const SCAN_WINDOW: i64 = 100_000;

/// Whether `query` filters on what no index serves (no filter at all needs
/// none: every record matches).
fn scan_capped(query: &LogQuery) -> bool {
    let indexed = query.identity.is_some()
        || query
            .outcome
            .as_deref()
            .is_some_and(|o| !HOT_OUTCOMES.contains(&o));
    let filtered = query.node.is_some() || query.grant.is_some() || query.outcome.is_some();
    !indexed && filtered
}

/// The records matching `query` after `after` (as [`read_log`]), newest
/// first; [`RecentPage::after`] moves past them, and past each chain's head
/// as read when every match up to it was returned, so a poll does not read
/// the same non-matching records again. `before` is empty.
pub async fn read_log_newer(
    store: &dyn LogStore,
    query: &LogQuery,
    after: &LogCursor,
) -> Result<RecentPage> {
    let limit = query.limit.max(1);
    let capped = scan_capped(query);
    let mut next = after.clone();
    let (mut pages, mut heads, mut full, mut read) = (Vec::new(), Vec::new(), false, 0);
    let mut scan_limited = false;
    for chain in store.chains().await? {
        // Nothing lies at or below a pruned base.
        let base = chain.base.as_ref().map_or(0, |b| b.0);
        let from = after.after(&chain.chain).max(base);
        if chain.seq <= from {
            continue;
        }
        // A filter no index serves reads at most a window past the cursor
        // (a poll reads only what was appended since; a cursor far behind
        // catches up a window at a time).
        let upto = if capped {
            from.saturating_add(SCAN_WINDOW).min(chain.seq)
        } else {
            chain.seq
        };
        scan_limited |= upto < chain.seq;
        let page = store
            .log(&LogQuery {
                after_seq: Some(from),
                before_seq: Some(upto.saturating_add(1)),
                newest_first: false,
                limit,
                chain: chain.chain.clone(),
                ..query.clone()
            })
            .await?;
        full |= page.len() == limit;
        read += page.len();
        heads.push((chain.chain, upto));
        pages.push(page);
    }
    let mut records = merge(pages, limit, |r| (r.entry.time_ms, &r.chain, r.seq));
    let more = full || read > records.len() || scan_limited;
    let full_pages = !(full || read > records.len());
    // Every match up to each chain's scanned end was returned: the cursor
    // moves past that end, so the next poll does not read it again.
    if full_pages {
        for (chain, seq) in heads {
            next.advance(&chain, seq);
        }
    }
    for r in &records {
        next.advance(&r.chain, r.seq);
    }
    records.reverse();
    Ok(RecentPage {
        records,
        before: LogCursor::default(),
        after: next,
        more,
        scan_limited,
    })
}

/// Decisions after `after` (from `since_ms` if given), from every chain,
/// merged in time order; at most `limit` (see [`LogStore::decision_rows`]).
pub async fn decisions_after(
    store: &dyn LogStore,
    after: &LogCursor,
    since_ms: Option<i64>,
    limit: usize,
) -> Result<Vec<DecisionRow>> {
    let limit = limit.max(1);
    let mut pages = Vec::new();
    for chain in store.chains().await? {
        if chain.seq <= after.after(&chain.chain) {
            continue;
        }
        pages.push(
            store
                .decision_rows(&chain.chain, after.after(&chain.chain), since_ms, limit)
                .await?,
        );
    }
    Ok(merge(pages, limit, |r| (r.time_ms, &r.chain, r.seq)))
}

/// The first `limit` of `pages` (each in its chain's `seq` order) by `key`,
/// taking each page's items front to back.
fn merge<T>(pages: Vec<Vec<T>>, limit: usize, key: impl Fn(&T) -> (i64, &String, i64)) -> Vec<T> {
    if pages.len() == 1 {
        let mut page = pages.into_iter().next().unwrap_or_default();
        page.truncate(limit);
        return page;
    }
    let mut fronts: Vec<std::iter::Peekable<std::vec::IntoIter<T>>> = pages
        .into_iter()
        .map(|p| p.into_iter().peekable())
        .collect();
    let mut out = Vec::with_capacity(limit);
    while out.len() < limit {
        let next = fronts
            .iter_mut()
            .enumerate()
            .filter_map(|(i, f)| f.peek().map(|item| (i, key(item))))
            .min_by(|(_, a), (_, b)| a.cmp(b))
            .map(|(i, _)| i);
        match next.and_then(|i| fronts[i].next()) {
            Some(item) => out.push(item),
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_and_refuse_what_they_cannot_be() {
        let mut c = LogCursor::parse("17").unwrap();
        assert_eq!(c.after(""), 17);
        c.advance("0a", 4);
        c.advance("0a", 2);
        assert_eq!(c.to_string(), ":17,0a:4");
        assert_eq!(LogCursor::parse(&c.to_string()).unwrap(), c);
        assert!(LogCursor::parse("").unwrap().is_empty());
        for bad in ["0a", "0a:x", "0a:-1", "../x:1", "zz:1", ",:1"] {
            assert!(LogCursor::parse(bad).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_CURSOR_CHAINS)
            .map(|i| format!("{i:x}0:1"))
            .collect();
        assert!(LogCursor::parse(&many.join(",")).is_err());
    }

    #[test]
    fn a_merge_takes_each_chain_in_order_and_never_skips() {
        let a = "a".to_owned();
        let b = "b".to_owned();
        // Chain a's record 2 carries an earlier time than its record 1.
        let pages = vec![
            vec![(10, &a, 1), (5, &a, 2), (30, &a, 3)],
            vec![(7, &b, 1), (20, &b, 2)],
        ];
        let merged = merge(pages, 4, |r| (r.0, r.1, r.2));
        assert_eq!(
            merged,
            vec![(7, &b, 1), (10, &a, 1), (5, &a, 2), (20, &b, 2)]
        );
    }
}
