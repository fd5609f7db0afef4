//! Record bodies as SQLite keeps them: compressed with zstd and a
//! dictionary trained on the store's own records, so what repeats from one
//! record to the next (every key, the grant's and budget's settings, the
//! identity and its selectors, the static signal sources, the rule `@id`s)
//! is stored once, in the dictionary, instead of in every row.
//!
//! The chain and every reader are unchanged: a record's hash covers its
//! canonical JSON, which decompression gives back byte for byte, so replay
//! is bit-identical and `logs verify` re-hashes what the rows really hold (an
//! edited blob or dictionary no longer hashes). A body is a TEXT value (as
//! written before compression, or before the first dictionary) or a BLOB
//! (a zstd frame naming its dictionary's id). Dictionaries are rows of
//! `body_dictionaries`, never replaced, read by any process that opens the
//! store. The first is trained once [`SAMPLES`] records were appended;
//! until then bodies are compressed without one.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use arc_swap::ArcSwapOption;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension};

use super::{Result, StoreError, map_sql};

/// Records a dictionary is trained on.
pub const SAMPLES: usize = 1000;
/// The size a dictionary is trained to (bytes).
const DICTIONARY_BYTES: usize = 64 * 1024;
/// zstd's level: with a dictionary the ratio is the same from 1 to 9, and
/// 1 compresses a 2.5 KB body in about two microseconds.
const LEVEL: i32 = 1;
/// The largest body decompressed: far above any record the broker writes
/// (a request is at most `limits.max_body_bytes`, 64 KiB by default, and a
/// record holds one request with its inputs); a blob that claims more is
/// corrupt.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// The most bytes one read (a page of records) may decompress to in all: a
/// few hundred bytes of blob can claim megabytes, and a page of 10,000
/// such rows must not take the broker's memory.
pub const READ_BUDGET: usize = 256 * 1024 * 1024;
/// The largest dictionary read (trained to [`DICTIONARY_BYTES`]).
const MAX_DICTIONARY: usize = 2 * DICTIONARY_BYTES;
/// A zstd dictionary's first four bytes (little-endian 0xEC30A437).
const DICTIONARY_MAGIC: [u8; 4] = [0x37, 0xa4, 0x30, 0xec];

/// A stored dictionary.
struct Dictionary {
    id: u32,
    /// SHA-256 of its bytes: what a thread's cached context is keyed by
    /// (zstd ids are random 32-bit numbers; two stores in one process may
    /// share one).
    hash: String,
    bytes: Vec<u8>,
}

impl Dictionary {
    fn new(id: u32, bytes: &[u8]) -> Arc<Self> {
        Arc::new(Self {
            id,
            hash: sha256(bytes),
            bytes: bytes.to_vec(),
        })
    }

    /// The dictionary a `body_dictionaries` row holds, if the row is one
    /// this store wrote: a zstd dictionary (not raw content) of at most
    /// [`MAX_DICTIONARY`] bytes, whose own id is the row's and whose
    /// SHA-256 is the row's `hash`. An edited row is corrupt, never used.
    fn from_row(id: i64, hash: &str, bytes: &[u8]) -> Result<Arc<Self>> {
        let bad = |why: &str| StoreError::Corrupt(format!("body dictionary {id}: {why}"));
        let id = u32::try_from(id).map_err(|_| bad("its id is not a zstd id"))?;
        if bytes.len() > MAX_DICTIONARY || !bytes.starts_with(&DICTIONARY_MAGIC) {
            return Err(bad("not a zstd dictionary of at most 128 KiB"));
        }
        if zstd::zstd_safe::get_dict_id(bytes).map(u32::from) != Some(id) {
            return Err(bad("its bytes name another id"));
        }
        let dictionary = Self::new(id, bytes);
        if dictionary.hash != hash {
            return Err(bad(
                "its bytes do not hash to the hash stored with them (edited)",
            ));
        }
        Ok(dictionary)
    }
}

fn sha256(bytes: &[u8]) -> String {
    crate::ids::hex(&<sha2::Sha256 as sha2::Digest>::digest(bytes))
}

/// What one read may still decompress (see [`READ_BUDGET`]).
pub struct ReadBudget(usize);

impl Default for ReadBudget {
    fn default() -> Self {
        Self(READ_BUDGET)
    }
}

thread_local! {
    /// Each thread's compression context, with the dictionary it was made
    /// for (`""`: none): a context takes far longer to make than a body to
    /// compress.
    static COMPRESSOR: RefCell<Option<(String, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    /// Each thread's decompression context, likewise.
    static DECOMPRESSOR: RefCell<Option<(String, zstd::bulk::Decompressor<'static>)>> =
        const { RefCell::new(None) };
}

/// The store's body codec, shared by the appenders (who compress before
/// the writer), the writer and the readers.
#[derive(Default)]
pub struct Bodies {
    /// The dictionary new bodies are compressed with.
    encoder: ArcSwapOption<Dictionary>,
    decoders: RwLock<HashMap<u32, Arc<Dictionary>>>,
    /// Bodies kept to train the first dictionary on (emptied once trained).
    samples: Mutex<Option<Vec<Vec<u8>>>>,
}

impl Bodies {
    /// The codec of the store `conn` opens: every stored dictionary, the
    /// newest one to compress with; none yet, samples are collected.
    pub fn load(conn: &Connection) -> Result<Self> {
        let bodies = Self::default();
        let mut newest = None;
        for dictionary in stored_dictionaries(conn)? {
            if let Ok(mut decoders) = bodies.decoders.write() {
                decoders.insert(dictionary.id, dictionary.clone());
            }
            newest = Some(dictionary);
        }
        match newest {
            Some(dictionary) => bodies.encoder.store(Some(dictionary)),
            None => {
                if let Ok(mut samples) = bodies.samples.lock() {
                    *samples = Some(Vec::with_capacity(SAMPLES));
                }
            }
        }
        Ok(bodies)
    }

    /// Whether every stored dictionary is intact and is the one this
    /// process reads with: a row edited since it was loaded is found here
    /// (this process would go on reading with the bytes it loaded, and the
    /// next to open the store could not), for `logs verify`.
    pub fn check(&self, conn: &Connection) -> Result<()> {
        let loaded = self.decoders.read().map_err(|_| {
            StoreError::Unavailable("the body dictionaries' lock is poisoned".into())
        })?;
        let stored = stored_dictionaries(conn)?;
        // Every dictionary this process reads with is still stored, as it was.
        for mine in loaded.values() {
            match stored.iter().find(|d| d.id == mine.id) {
                Some(d) if d.hash == mine.hash => {}
                Some(_) => {
                    return Err(StoreError::Corrupt(format!(
                        "body dictionary {} was replaced since this broker loaded it",
                        mine.id
                    )));
                }
                None => {
                    return Err(StoreError::Corrupt(format!(
                        "body dictionary {} is gone from the store: the records compressed with it cannot be read by the next to open it",
                        mine.id
                    )));
                }
            }
        }
        if let Some(encoder) = self.encoder.load().as_deref()
            && !stored.iter().any(|d| d.hash == encoder.hash)
        {
            return Err(StoreError::Corrupt(format!(
                "body dictionary {} that new records are compressed with is gone from the store",
                encoder.id
            )));
        }
        Ok(())
    }

    /// `jcs` as it is stored: compressed, with the current dictionary if
    /// there is one (`None`: kept as text). A body kept as a training sample
    /// while there is none may complete the set: then the samples are
    /// returned, to train on.
    pub fn encode(&self, jcs: &str) -> (Option<Vec<u8>>, Option<Vec<Vec<u8>>>) {
        let encoder = self.encoder.load();
        match encoder.as_deref() {
            Some(d) => (compress(jcs, Some(d)), None),
            None => (compress(jcs, None), self.sample(jcs)),
        }
    }

    /// `jcs` compressed as [`Self::encode`] does, without keeping a sample.
    pub fn compress(&self, jcs: &str) -> Option<Vec<u8>> {
        compress(jcs, self.encoder.load().as_deref())
    }

    fn sample(&self, jcs: &str) -> Option<Vec<Vec<u8>>> {
        let mut samples = self.samples.lock().ok()?;
        let kept = samples.as_mut()?;
        kept.push(jcs.as_bytes().to_vec());
        if kept.len() < SAMPLES {
            return None;
        }
        samples.take()
    }

    /// The id of the dictionary bodies are compressed with now, if any.
    pub fn dictionary(&self) -> Option<u32> {
        self.encoder.load().as_deref().map(|e| e.id)
    }

    /// Trains a dictionary on `samples`: (its zstd id, its bytes).
    pub fn train(samples: &[Vec<u8>]) -> Result<(u32, Vec<u8>)> {
        let dict = zstd::dict::from_samples(samples, DICTIONARY_BYTES)
            .map_err(|e| StoreError::Unavailable(format!("training a body dictionary: {e}")))?;
        let id = zstd::zstd_safe::get_dict_id(&dict)
            .map(u32::from)
            .ok_or_else(|| StoreError::Unavailable("a trained dictionary has no id".into()))?;
        Ok((id, dict))
    }

    /// Stores a trained dictionary (in the writer's transaction). One
    /// another handle on the store trained on the same records under the
    /// same id is the same dictionary, or a conflict.
    pub fn store(conn: &Connection, id: u32, dict: &[u8], now_ms: i64) -> Result<()> {
        let inserted = conn
            .execute(
                "INSERT OR IGNORE INTO body_dictionaries(id, hash, dict, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![i64::from(id), sha256(dict), dict, now_ms],
            )
            .map_err(map_sql)?;
        if inserted == 0 {
            let stored: Vec<u8> = conn
                .query_row(
                    "SELECT dict FROM body_dictionaries WHERE id = ?1",
                    [i64::from(id)],
                    |r| r.get(0),
                )
                .map_err(map_sql)?;
            if stored != dict {
                return Err(StoreError::Conflict(format!(
                    "body dictionary {id} is stored with other bytes"
                )));
            }
        }
        Ok(())
    }

    /// Compresses new bodies with a dictionary once it is stored.
    pub fn install(&self, id: u32, dict: &[u8]) {
        let dictionary = Dictionary::new(id, dict);
        if let Ok(mut decoders) = self.decoders.write() {
            decoders.insert(id, dictionary.clone());
        }
        self.encoder.store(Some(dictionary));
    }

    /// A stored body's canonical JSON, within what `budget` has left. A
    /// dictionary this process has not loaded (another process trained it)
    /// is read from `conn`.
    pub fn decode(
        &self,
        conn: &Connection,
        value: ValueRef<'_>,
        budget: &mut ReadBudget,
    ) -> Result<String> {
        let blob = match value {
            ValueRef::Text(text) => {
                return String::from_utf8(text.to_vec())
                    .map_err(|_| StoreError::Corrupt("a record body is not UTF-8".into()));
            }
            ValueRef::Blob(blob) => blob,
            _ => {
                return Err(StoreError::Corrupt(
                    "a record body is neither text nor a blob".into(),
                ));
            }
        };
        let corrupt =
            |why: String| StoreError::Corrupt(format!("a record body does not decompress: {why}"));
        let id = zstd::zstd_safe::get_dict_id_from_frame(blob).map_or(0, u32::from);
        let dictionary = match id {
            0 => None,
            id => Some(self.decoder(conn, id)?),
        };
        let bytes = decompress(blob, dictionary.as_deref(), budget).map_err(corrupt)?;
        String::from_utf8(bytes).map_err(|_| corrupt("not UTF-8".into()))
    }

    fn decoder(&self, conn: &Connection, id: u32) -> Result<Arc<Dictionary>> {
        if let Some(d) = self.decoders.read().ok().and_then(|d| d.get(&id).cloned()) {
            return Ok(d);
        }
        let row: Option<(String, Vec<u8>)> = conn
            .query_row(
                "SELECT hash, dict FROM body_dictionaries WHERE id = ?1",
                [i64::from(id)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(map_sql)?;
        let (hash, dict) = row.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "a record body names dictionary {id}, which the store does not hold"
            ))
        })?;
        let dictionary = Dictionary::from_row(i64::from(id), &hash, &dict)?;
        if let Ok(mut decoders) = self.decoders.write() {
            decoders.insert(id, dictionary.clone());
        }
        Ok(dictionary)
    }
}

/// Every stored dictionary, oldest first, each checked ([`Dictionary::from_row`]).
fn stored_dictionaries(conn: &Connection) -> Result<Vec<Arc<Dictionary>>> {
    let mut stmt = conn
        .prepare("SELECT id, hash, dict FROM body_dictionaries ORDER BY created_at_ms, id")
        .map_err(map_sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })
        .map_err(map_sql)?;
    rows.map(|row| {
        let (id, hash, dict) = row.map_err(map_sql)?;
        Dictionary::from_row(id, &hash, &dict)
    })
    .collect()
}

/// `jcs` compressed, on this thread's context, and checked to read back
/// exactly (a few microseconds: a record is written only in a form its
/// readers decode); `None` (kept as text, which every reader reads) in the
/// case zstd fails or does not give it back.
fn compress(jcs: &str, dictionary: Option<&Dictionary>) -> Option<Vec<u8>> {
    let blob = compress_only(jcs, dictionary)?;
    let back = decompress(&blob, dictionary, &mut ReadBudget::default()).ok()?;
    (back == jcs.as_bytes()).then_some(blob)
}

fn compress_only(jcs: &str, dictionary: Option<&Dictionary>) -> Option<Vec<u8>> {
    let key = dictionary.map_or("", |d| d.hash.as_str());
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(made_for, _)| made_for != key) {
            let context = match dictionary {
                Some(d) => zstd::bulk::Compressor::with_dictionary(LEVEL, &d.bytes),
                None => zstd::bulk::Compressor::new(LEVEL),
            };
            *cell = Some((key.to_owned(), context.ok()?));
        }
        cell.as_mut()?.1.compress(jcs.as_bytes()).ok()
    })
}

/// `blob` decompressed, on this thread's context, into the size its frame
/// states (a frame that states none, more than [`MAX_BODY`] or more than
/// the read's budget has left is refused).
fn decompress(
    blob: &[u8],
    dictionary: Option<&Dictionary>,
    budget: &mut ReadBudget,
) -> std::result::Result<Vec<u8>, String> {
    let size = match zstd::zstd_safe::get_frame_content_size(blob) {
        Ok(Some(size)) if size <= MAX_BODY as u64 => usize::try_from(size).unwrap_or(MAX_BODY),
        Ok(Some(size)) => return Err(format!("it states {size} bytes")),
        Ok(None) | Err(_) => return Err("not a zstd frame that states its size".into()),
    };
    budget.0 = budget.0.checked_sub(size).ok_or_else(|| {
        format!("the records read with it decompress to more than {READ_BUDGET} bytes")
    })?;
    let key = dictionary.map_or("", |d| d.hash.as_str());
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.as_ref().is_none_or(|(made_for, _)| made_for != key) {
            let context = match dictionary {
                Some(d) => zstd::bulk::Decompressor::with_dictionary(&d.bytes),
                None => zstd::bulk::Decompressor::new(),
            };
            *cell = Some((key.to_owned(), context.map_err(|e| e.to_string())?));
        }
        match cell.as_mut() {
            Some((_, d)) => d.decompress(blob, size).map_err(|e| e.to_string()),
            None => Err("no decompression context".into()),
        }
    })
}

/// A body as the log's `body` column holds it.
pub fn column(jcs: &str, compressed: Option<Vec<u8>>) -> rusqlite::types::Value {
    match compressed {
        Some(blob) => rusqlite::types::Value::Blob(blob),
        None => rusqlite::types::Value::Text(jcs.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE body_dictionaries (id INTEGER PRIMARY KEY, hash TEXT NOT NULL,
                dict BLOB NOT NULL, created_at_ms INTEGER NOT NULL);",
        )
        .unwrap();
        conn
    }

    fn body(i: usize) -> String {
        format!(
            r#"{{"decision":{{"outcome":"allow","rules":[{{"id":"payments-api-may-mint","outcome":"allow"}}]}},"input":{{"identity":"spiffe://example.org/ns/pay/sa/api-{}","now_ms":{}}},"request":{{"grant":"payments-token","ttl_seconds":600}}}}"#,
            i % 7,
            1_796_629_711_751u64 + i as u64 * 37
        )
    }

    #[test]
    fn bodies_read_back_byte_for_byte_before_and_after_the_dictionary() {
        let conn = store();
        let bodies = Bodies::load(&conn).unwrap();
        let mut samples = None;
        let mut before = Vec::new();
        for i in 0..SAMPLES {
            let (stored, done) = bodies.encode(&body(i));
            before.push((body(i), stored.unwrap()));
            samples = samples.or(done);
        }
        let samples = samples.expect("the samples are handed over once complete");
        assert_eq!(samples.len(), SAMPLES);
        assert!(bodies.encode(&body(0)).1.is_none(), "handed over once");
        let (id, dict) = Bodies::train(&samples).unwrap();
        Bodies::store(&conn, id, &dict, 1).unwrap();
        bodies.install(id, &dict);
        assert_eq!(bodies.dictionary(), Some(id));
        let (after, _) = bodies.encode(&body(5000));
        let after = after.unwrap();
        assert!(after.len() * 4 < body(5000).len(), "{} bytes", after.len());
        // Every form reads back exactly, in this process and in another
        // that loads the store afresh.
        let fresh = Bodies::load(&conn).unwrap();
        for reader in [&bodies, &fresh] {
            for (text, blob) in &before {
                assert_eq!(
                    &reader
                        .decode(&conn, ValueRef::Blob(blob), &mut ReadBudget::default())
                        .unwrap(),
                    text
                );
            }
            assert_eq!(
                reader
                    .decode(&conn, ValueRef::Blob(&after), &mut ReadBudget::default())
                    .unwrap(),
                body(5000)
            );
            assert_eq!(
                reader
                    .decode(
                        &conn,
                        ValueRef::Text(b"{\"a\":1}"),
                        &mut ReadBudget::default()
                    )
                    .unwrap(),
                "{\"a\":1}"
            );
        }
        assert_eq!(fresh.dictionary(), Some(id));
    }

    #[test]
    fn a_body_that_does_not_decode_is_corrupt_never_a_guess() {
        let conn = store();
        let bodies = Bodies::load(&conn).unwrap();
        // A dictionary the store does not hold.
        let samples: Vec<Vec<u8>> = (0..SAMPLES).map(|i| body(i).into_bytes()).collect();
        let (id, dict) = Bodies::train(&samples).unwrap();
        bodies.install(id, &dict);
        let (blob, _) = bodies.encode(&body(1));
        let other = Bodies::load(&conn).unwrap();
        assert!(matches!(
            other.decode(
                &conn,
                ValueRef::Blob(&blob.unwrap()),
                &mut ReadBudget::default()
            ),
            Err(StoreError::Corrupt(_))
        ));
        for bad in [&b"not zstd"[..], &[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0][..]] {
            assert!(matches!(
                bodies.decode(&conn, ValueRef::Blob(bad), &mut ReadBudget::default()),
                Err(StoreError::Corrupt(_))
            ));
        }
        assert!(
            bodies
                .decode(&conn, ValueRef::Integer(7), &mut ReadBudget::default())
                .is_err()
        );
        assert!(
            bodies
                .decode(
                    &conn,
                    ValueRef::Text(&[0xff, 0xfe]),
                    &mut ReadBudget::default()
                )
                .is_err()
        );
    }

    fn trained(conn: &Connection) -> (Bodies, u32, Vec<u8>) {
        let samples: Vec<Vec<u8>> = (0..SAMPLES).map(|i| body(i).into_bytes()).collect();
        let (id, dict) = Bodies::train(&samples).unwrap();
        Bodies::store(conn, id, &dict, 1).unwrap();
        let bodies = Bodies::load(conn).unwrap();
        (bodies, id, dict)
    }

    /// A dictionary row someone edited is never read with: at open its
    /// bytes must be a zstd dictionary naming the row's id and hashing to
    /// the row's hash; a row edited after this process loaded it is found
    /// by `check` (what `logs verify` asks).
    #[test]
    fn an_edited_dictionary_is_refused_at_open_and_found_by_check() {
        let conn = store();
        let (bodies, id, dict) = trained(&conn);
        bodies.check(&conn).unwrap();
        let mut edited = dict.clone();
        let last = edited.len() - 1;
        edited[last] ^= 1;
        conn.execute(
            "UPDATE body_dictionaries SET dict = ?1 WHERE id = ?2",
            rusqlite::params![edited, i64::from(id)],
        )
        .unwrap();
        assert!(matches!(Bodies::load(&conn), Err(StoreError::Corrupt(_))));
        assert!(matches!(bodies.check(&conn), Err(StoreError::Corrupt(_))));
        // The hash edited to match: still another dictionary than the one
        // loaded.
        conn.execute(
            "UPDATE body_dictionaries SET hash = ?1 WHERE id = ?2",
            rusqlite::params![sha256(&edited), i64::from(id)],
        )
        .unwrap();
        assert!(matches!(bodies.check(&conn), Err(StoreError::Corrupt(_))));
        // Raw content (no dictionary header), or another id than the row's.
        for (row_id, bytes) in [(i64::from(id), b"raw content".to_vec()), (7, dict.clone())] {
            conn.execute("DELETE FROM body_dictionaries", []).unwrap();
            conn.execute(
                "INSERT INTO body_dictionaries(id, hash, dict, created_at_ms) VALUES (?1, ?2, ?3, 1)",
                rusqlite::params![row_id, sha256(&bytes), bytes],
            )
            .unwrap();
            assert!(
                matches!(Bodies::load(&conn), Err(StoreError::Corrupt(_))),
                "{row_id}"
            );
        }
        // The dictionary new records are compressed with removed.
        conn.execute("DELETE FROM body_dictionaries", []).unwrap();
        assert!(matches!(bodies.check(&conn), Err(StoreError::Corrupt(_))));
    }

    /// A small blob may claim megabytes: each body is held to
    /// [`MAX_BODY`] and a read's bodies to [`READ_BUDGET`] in all.
    #[test]
    fn a_read_decompresses_within_its_budget() {
        let conn = store();
        let bodies = Bodies::load(&conn).unwrap();
        let big = "x".repeat(MAX_BODY);
        let blob = zstd::bulk::compress(big.as_bytes(), 1).unwrap();
        assert!(blob.len() < 1024, "{} bytes", blob.len());
        let mut budget = ReadBudget::default();
        for _ in 0..READ_BUDGET / MAX_BODY {
            bodies
                .decode(&conn, ValueRef::Blob(&blob), &mut budget)
                .unwrap();
        }
        assert!(matches!(
            bodies.decode(&conn, ValueRef::Blob(&blob), &mut budget),
            Err(StoreError::Corrupt(why)) if why.contains("more than")
        ));
        let bigger = zstd::bulk::compress("x".repeat(MAX_BODY + 1).as_bytes(), 1).unwrap();
        assert!(matches!(
            bodies.decode(&conn, ValueRef::Blob(&bigger), &mut ReadBudget::default()),
            Err(StoreError::Corrupt(_))
        ));
    }

    /// Two handles training on the same records store one dictionary; one
    /// with other bytes under the same id is a conflict, never dropped.
    #[test]
    fn a_dictionary_stored_twice_is_one_or_a_conflict() {
        let conn = store();
        let (_, id, dict) = trained(&conn);
        Bodies::store(&conn, id, &dict, 2).unwrap();
        let mut other = dict.clone();
        let last = other.len() - 1;
        other[last] ^= 1;
        assert!(matches!(
            Bodies::store(&conn, id, &other, 3),
            Err(StoreError::Conflict(_))
        ));
    }
}
