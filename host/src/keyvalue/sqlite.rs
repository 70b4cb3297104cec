//! A key-value store in a SQLite file: embedded, persistent, and shared by
//! every server process on the machine that names the same file (WAL mode
//! lets readers and one writer work at once; the busy timeout makes a writer
//! wait for another process's write instead of failing).
//!
//! SQLite calls block, so each runs on tokio's blocking pool, never on a
//! worker thread that is serving other requests.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use tokio::sync::OnceCell;

use super::Failure;

/// How long a write waits for another process's write to finish before it
/// fails. Writes are single rows or one batch, so a wait this long means
/// something is wrong, and the request deadline bounds it anyway.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Sqlite {
    path: PathBuf,
    /// Opened on first use: a guest that never uses key-value creates no
    /// file. One connection per process: SQLite serialises writes to a file
    /// anyway.
    conn: OnceCell<Arc<Mutex<Connection>>>,
}

impl Sqlite {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            conn: OnceCell::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `op` on the connection, on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
    ) -> Result<T, Failure> {
        let conn = self
            .conn
            .get_or_try_init(|| {
                let path = self.path.clone();
                blocking(move || open(&path))
            })
            .await?
            .clone();
        blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            op(&mut conn)
        })
        .await
    }

    pub async fn get(&self, key: String) -> Result<Option<Vec<u8>>, Failure> {
        self.run(move |conn| get(conn, &key)).await
    }

    pub async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, Failure> {
        self.run(move |conn| keys.iter().map(|key| get(conn, key)).collect())
            .await
    }

    pub async fn exists(&self, key: String) -> Result<bool, Failure> {
        self.run(move |conn| {
            conn.query_row("SELECT 1 FROM kv WHERE key = ?1", [&key], |_| Ok(()))
                .optional()
                .map(|row| row.is_some())
                .map_err(down)
        })
        .await
    }

    /// Sets every pair in one transaction: all or none.
    pub async fn set_many(&self, pairs: Vec<(String, Vec<u8>)>) -> Result<(), Failure> {
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(down)?;
            for (key, value) in &pairs {
                tx.execute(
                    "INSERT INTO kv (key, value) VALUES (?1, ?2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![key, value],
                )
                .map_err(down)?;
            }
            tx.commit().map_err(down)
        })
        .await
    }

    pub async fn delete_many(&self, keys: Vec<String>) -> Result<(), Failure> {
        self.run(move |conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(down)?;
            for key in &keys {
                tx.execute("DELETE FROM kv WHERE key = ?1", [key])
                    .map_err(down)?;
            }
            tx.commit().map_err(down)
        })
        .await
    }

    /// Keys in order, `page` at a time; the cursor is how many came before.
    pub async fn list_keys(
        &self,
        cursor: Option<u64>,
        page: usize,
    ) -> Result<(Vec<String>, Option<u64>), Failure> {
        self.run(move |conn| {
            let offset = cursor.unwrap_or(0);
            // SQLite counts in i64; a cursor past that is past every key.
            let (limit, skip) = (
                i64::try_from(page).unwrap_or(i64::MAX),
                i64::try_from(offset).unwrap_or(i64::MAX),
            );
            let mut query = conn
                .prepare_cached("SELECT key FROM kv ORDER BY key LIMIT ?1 OFFSET ?2")
                .map_err(down)?;
            let keys = query
                .query_map(params![limit, skip], |row| row.get(0))
                .and_then(|rows| rows.collect::<Result<Vec<String>, _>>())
                .map_err(down)?;
            let next = (keys.len() == page).then(|| offset + page as u64);
            Ok((keys, next))
        })
        .await
    }

    pub async fn increment(&self, key: String, delta: u64) -> Result<u64, Failure> {
        self.run(move |conn| increment(conn, &key, delta)).await
    }
}

/// Adds `delta` to the decimal number stored at `key` (0 when absent)
/// inside one immediate transaction, so increments from any number of
/// processes never lose one another.
fn increment(conn: &mut Connection, key: &str, delta: u64) -> Result<u64, Failure> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(down)?;
    let current = match get(&tx, key)? {
        None => 0,
        Some(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| {
                Failure::Refused(format!("the value at `{key}` is not a decimal number"))
            })?,
    };
    let next = current
        .checked_add(delta)
        .ok_or_else(|| Failure::Refused(format!("incrementing `{key}` overflows 64 bits")))?;
    tx.execute(
        "INSERT INTO kv (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, next.to_string().into_bytes()],
    )
    .map_err(down)?;
    tx.commit().map_err(down)?;
    Ok(next)
}

/// Opens (creating if need be) the file and its table, in WAL mode.
fn open(path: &Path) -> Result<Arc<Mutex<Connection>>, Failure> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|err| Failure::Down(format!("cannot create {}: {err}", dir.display())))?;
    }
    let mut conn = Connection::open(path)
        .map_err(|err| Failure::Down(format!("cannot open {}: {err}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(down)?;
    // Processes started together open a new file at once. Switching it to
    // WAL needs the file to themselves, and where two connections would wait
    // for each other SQLite answers "database is locked" at once instead of
    // waiting out the busy timeout; so the switch is retried until then.
    let deadline = Instant::now() + BUSY_TIMEOUT;
    while let Err(err) = conn.pragma_update(None, "journal_mode", "WAL") {
        if err.sqlite_error_code() != Some(ErrorCode::DatabaseBusy) || Instant::now() > deadline {
            return Err(down(err));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // An immediate transaction takes the write lock before reading the
    // schema, so it waits (busy timeout) rather than finding its snapshot
    // stale.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(down)?;
    tx.execute(
        "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID",
        [],
    )
    .map_err(down)?;
    tx.commit().map_err(down)?;
    Ok(Arc::new(Mutex::new(conn)))
}

fn get(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>, Failure> {
    conn.query_row("SELECT value FROM kv WHERE key = ?1", [key], |row| {
        Ok(match row.get_ref(0)? {
            ValueRef::Blob(bytes) | ValueRef::Text(bytes) => bytes.to_vec(),
            _ => Vec::new(),
        })
    })
    .optional()
    .map_err(down)
}

fn down(err: rusqlite::Error) -> Failure {
    Failure::Down(err.to_string())
}

/// Runs `op` on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    op: impl FnOnce() -> Result<T, Failure> + Send + 'static,
) -> Result<T, Failure> {
    tokio::task::spawn_blocking(op)
        .await
        .unwrap_or_else(|panicked| Err(Failure::Down(format!("the store panicked: {panicked}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Server processes started together all open a new file at once: each
    /// switches it to WAL and creates the table. SQLite answers some of them
    /// "database is locked" at once, without waiting out the busy timeout
    /// (it refuses to wait where two lock upgrades could deadlock), so the
    /// first request of one server failed. Threads with a connection each
    /// are the same to SQLite as processes.
    #[test]
    fn many_openers_of_a_new_file_all_succeed() {
        let dir = std::env::temp_dir().join(format!("kv-open-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for round in 0..20 {
            let path = dir.join(format!("{round}.sqlite3"));
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let openers: Vec<_> = (0..8)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        let conn = open(&path)?;
                        let mut conn = conn.lock().unwrap();
                        increment(&mut conn, "counter", 1)
                    })
                })
                .collect();
            for opener in openers {
                if let Err(failure) = opener.join().unwrap() {
                    panic!("round {round}: {failure:?}");
                }
            }
            let conn = open(&path).unwrap();
            let value = get(&conn.lock().unwrap(), "counter").unwrap();
            assert_eq!(value.as_deref(), Some(&b"8"[..]), "round {round}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
