//! A key-value store in a SQLite file: embedded, persistent, and shared by
//! every server process on the machine that names the same file (WAL mode
//! lets readers and one writer work at once; another process's write makes
//! ours wait for it).
//!
//! SQLite calls block, so one thread of the store's own runs them, in turn,
//! from a bounded queue: a store that is stuck (another process holding the
//! write lock, a slow disk) holds that thread and its queue, never a thread
//! that serves requests, and never more threads or memory than that. Each
//! call carries its request's [`Ticket`]: a call whose request has ended or
//! whose deadline has passed is not started, it waits for the lock only
//! while its request has time left, and a write commits only if its request
//! is still waiting for it, so nothing is committed after the client was
//! answered.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::{Failure, Ticket};

/// Pause between two tries to switch a new file to WAL while another
/// process holds it: a switch takes microseconds, so a few milliseconds
/// lets the other finish without keeping the request long.
const WAL_SWITCH_RETRY: Duration = Duration::from_millis(5);

/// Virtual machine steps between two checks that the running call's
/// request still waits for it: about a millisecond of SQLite's work, so a
/// long scan (`list-keys` far into a large store) stops soon after its
/// request's deadline.
const PROGRESS_STEPS: i32 = 10_000;

/// The longest pause between two tries for a lock another process holds.
/// Short, so a call sees its request end (or the lock freed) within it.
const MAX_BUSY_PAUSE: Duration = Duration::from_millis(10);

/// A call for the store's thread: runs on the connection (or learns that
/// the file cannot be opened).
type Job = Box<dyn FnOnce(Result<&mut Connection, Failure>) + Send>;

pub struct Sqlite {
    path: PathBuf,
    /// The store's thread takes calls from here. The queue holds at most as
    /// many as there are instance slots, each call at most one instance's
    /// key-value budget; past that a call fails at once.
    queue: SyncSender<(Arc<Ticket>, Job)>,
    /// The queue's length, for the error that says it is full.
    capacity: usize,
}

thread_local! {
    /// The call the store's thread is running: its busy and progress
    /// handlers stop when its request no longer waits.
    static CURRENT: RefCell<Option<Arc<Ticket>>> = const { RefCell::new(None) };
}

impl Sqlite {
    /// Starts the store's thread, which opens the file on first use: a guest
    /// that never uses key-value creates no file.
    pub fn new(path: PathBuf, capacity: usize) -> Result<Self, String> {
        let (queue, calls) = std::sync::mpsc::sync_channel(capacity);
        let opened = path.clone();
        std::thread::Builder::new()
            .name("keyvalue-sqlite".into())
            .spawn(move || serve(&opened, calls))
            .map_err(|err| format!("starting the thread for {}: {err}", path.display()))?;
        Ok(Self {
            path,
            queue,
            capacity,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `op` on the store's thread for the request of `ticket`.
    async fn run<T: Send + 'static>(
        &self,
        ticket: &Arc<Ticket>,
        op: impl FnOnce(&mut Connection, &Ticket) -> Result<T, Failure> + Send + 'static,
    ) -> Result<T, Failure> {
        let (reply, answer) = oneshot::channel();
        let for_job = ticket.clone();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(conn.and_then(|conn| op(conn, &for_job)));
        });
        match self.queue.try_send((ticket.clone(), job)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(Failure::Down(format!(
                    "{} calls are already waiting for it",
                    self.capacity
                )));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(Failure::Down("its thread has stopped".into()));
            }
        }
        // Dropped with this future (the guest's call went away): the call is
        // then skipped, or stops waiting, and never commits.
        let abandon = ticket.abandon_on_drop();
        let answer = answer.await;
        abandon.disarm();
        answer.unwrap_or_else(|_| Err(Failure::Down("its thread has stopped".into())))
    }

    pub async fn get(
        &self,
        ticket: &Arc<Ticket>,
        key: String,
        max_value: usize,
    ) -> Result<Option<Vec<u8>>, Failure> {
        self.run(ticket, move |conn, _| get(conn, &key, max_value))
            .await
    }

    pub async fn get_many(
        &self,
        ticket: &Arc<Ticket>,
        keys: Vec<String>,
        max_value: usize,
        max_total: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, Failure> {
        self.run(ticket, move |conn, _| {
            let mut total = 0;
            let mut values = Vec::with_capacity(keys.len());
            for key in &keys {
                let value = get(conn, key, max_value.min(max_total - total))?;
                total += value.as_ref().map_or(0, Vec::len);
                values.push(value);
            }
            Ok(values)
        })
        .await
    }

    pub async fn exists(&self, ticket: &Arc<Ticket>, key: String) -> Result<bool, Failure> {
        self.run(ticket, move |conn, _| {
            conn.query_row("SELECT 1 FROM kv WHERE key = ?1", [&key], |_| Ok(()))
                .optional()
                .map(|row| row.is_some())
                .map_err(down)
        })
        .await
    }

    /// Sets every pair in one transaction: all or none.
    pub async fn set_many(
        &self,
        ticket: &Arc<Ticket>,
        pairs: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Failure> {
        self.run(ticket, move |conn, ticket| {
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
            commit(tx, ticket)
        })
        .await
    }

    pub async fn delete_many(
        &self,
        ticket: &Arc<Ticket>,
        keys: Vec<String>,
    ) -> Result<(), Failure> {
        self.run(ticket, move |conn, ticket| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(down)?;
            for key in &keys {
                tx.execute("DELETE FROM kv WHERE key = ?1", [key])
                    .map_err(down)?;
            }
            commit(tx, ticket)
        })
        .await
    }

    /// Keys in order, `page` at a time; the cursor is how many came before.
    /// A key longer than `max_key` (written by someone else) fails the call
    /// before it is read.
    pub async fn list_keys(
        &self,
        ticket: &Arc<Ticket>,
        cursor: Option<u64>,
        page: usize,
        max_key: usize,
    ) -> Result<(Vec<String>, Option<u64>), Failure> {
        self.run(ticket, move |conn, _| {
            let offset = cursor.unwrap_or(0);
            // SQLite counts in i64; a cursor past that is past every key.
            let (limit, skip) = (
                i64::try_from(page).unwrap_or(i64::MAX),
                i64::try_from(offset).unwrap_or(i64::MAX),
            );
            let mut query = conn
                .prepare_cached(
                    "SELECT octet_length(key), CASE WHEN octet_length(key) <= ?3 THEN key END \
                     FROM kv ORDER BY key LIMIT ?1 OFFSET ?2",
                )
                .map_err(down)?;
            let mut rows = query
                .query(params![limit, skip, max_key as i64])
                .map_err(down)?;
            let mut keys = Vec::new();
            while let Some(row) = rows.next().map_err(down)? {
                let (length, key): (i64, Option<String>) =
                    (row.get(0).map_err(down)?, row.get(1).map_err(down)?);
                keys.push(key.ok_or_else(|| too_long("a key", length, max_key))?);
            }
            let next = (keys.len() == page).then(|| offset + page as u64);
            Ok((keys, next))
        })
        .await
    }

    pub async fn increment(
        &self,
        ticket: &Arc<Ticket>,
        key: String,
        delta: i64,
    ) -> Result<i64, Failure> {
        self.run(ticket, move |conn, ticket| {
            increment(conn, &key, delta, ticket)
        })
        .await
    }

    /// Sets `key` to `value` if its value is still `expected` (`None`:
    /// absent), in one immediate transaction; false if it is not.
    pub async fn compare_and_swap(
        &self,
        ticket: &Arc<Ticket>,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, Failure> {
        self.run(ticket, move |conn, ticket| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(down)?;
            // A value longer than the one expected cannot equal it, so
            // nothing longer is read.
            let limit = expected.as_ref().map_or(0, Vec::len);
            let current = match get(&tx, &key, limit) {
                Ok(current) => current,
                Err(Failure::Refused(_)) => return Ok(false),
                Err(failure) => return Err(failure),
            };
            if current != expected {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO kv (key, value) VALUES (?1, ?2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map_err(down)?;
            commit(tx, ticket).map(|()| true)
        })
        .await
    }
}

/// The store's thread: runs the calls in turn, skipping those whose request
/// no longer waits, until the store is dropped.
fn serve(path: &Path, calls: Receiver<(Arc<Ticket>, Job)>) {
    let mut conn = None;
    for (ticket, job) in calls {
        if !ticket.waiting() {
            // Dropping the job drops its reply: nobody reads it.
            continue;
        }
        CURRENT.with_borrow_mut(|current| *current = Some(ticket));
        if conn.is_none() {
            match open(path) {
                Ok(opened) => conn = Some(opened),
                Err(failure) => {
                    job(Err(failure));
                    CURRENT.with_borrow_mut(|current| *current = None);
                    continue;
                }
            }
        }
        job(Ok(conn.as_mut().expect("opened above")));
        CURRENT.with_borrow_mut(|current| *current = None);
    }
}

/// Whether the running call's request still waits for it.
fn current_waiting() -> bool {
    CURRENT.with_borrow(|current| current.as_ref().is_some_and(|ticket| ticket.waiting()))
}

/// SQLite's busy handler: while the running call's request waits, pause
/// (1, 2, 4, 8, then 10 ms) and try again for the lock.
fn busy(tries: i32) -> bool {
    if !current_waiting() {
        return false;
    }
    std::thread::sleep(Duration::from_millis(1 << tries.clamp(0, 3)).min(MAX_BUSY_PAUSE));
    current_waiting()
}

/// Commits `tx` only if its request still waits for the answer; otherwise
/// rolls it back (by dropping it).
fn commit(tx: rusqlite::Transaction<'_>, ticket: &Ticket) -> Result<(), Failure> {
    let _committing = ticket.begin_commit().ok_or_else(|| {
        Failure::Refused("the request ended before the write could commit".into())
    })?;
    tx.commit().map_err(down)
}

/// Adds `delta` to the decimal number stored at `key` (0 when absent)
/// inside one immediate transaction, so increments from any number of
/// processes never lose one another.
fn increment(
    conn: &mut Connection,
    key: &str,
    delta: i64,
    ticket: &Ticket,
) -> Result<i64, Failure> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(down)?;
    // A decimal i64 has at most 20 characters.
    let current = match get(&tx, key, 20) {
        Ok(None) => 0,
        Ok(Some(bytes)) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.parse::<i64>().ok())
            .ok_or_else(|| not_a_number(key))?,
        Err(Failure::Refused(_)) => return Err(not_a_number(key)),
        Err(failure) => return Err(failure),
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
    commit(tx, ticket)?;
    Ok(next)
}

fn not_a_number(key: &str) -> Failure {
    Failure::Refused(format!("the value at `{key}` is not a decimal number"))
}

/// Opens (creating if need be) the file and its table, in WAL mode.
fn open(path: &Path) -> Result<Connection, Failure> {
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
    conn.busy_handler(Some(busy)).map_err(down)?;
    conn.progress_handler(PROGRESS_STEPS, Some(|| !current_waiting()))
        .map_err(down)?;
    // Processes started together open a new file at once. Switching it to
    // WAL needs the file to themselves, and where two connections would wait
    // for each other SQLite answers "database is locked" at once instead of
    // calling the busy handler; so the switch is retried while the request
    // waits.
    while let Err(err) = conn.pragma_update(None, "journal_mode", "WAL") {
        if err.sqlite_error_code() != Some(ErrorCode::DatabaseBusy) || !current_waiting() {
            return Err(down(err));
        }
        std::thread::sleep(WAL_SWITCH_RETRY);
    }
    // An immediate transaction takes the write lock before reading the
    // schema, so it waits (busy handler) rather than finding its snapshot
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
    Ok(conn)
}

/// The value at `key`. Its size is read first (SQLite keeps it in the
/// record's header), so a value over `max_value` is refused without being
/// loaded.
fn get(conn: &Connection, key: &str, max_value: usize) -> Result<Option<Vec<u8>>, Failure> {
    let row = conn
        .query_row(
            "SELECT octet_length(value), CASE WHEN octet_length(value) <= ?2 THEN value END \
             FROM kv WHERE key = ?1",
            params![key, max_value as i64],
            |row| {
                let length: i64 = row.get(0)?;
                let value = match row.get_ref(1)? {
                    ValueRef::Blob(bytes) | ValueRef::Text(bytes) => Some(bytes.to_vec()),
                    _ => None,
                };
                Ok((length, value))
            },
        )
        .optional()
        .map_err(down)?;
    match row {
        None => Ok(None),
        Some((_, Some(value))) => Ok(Some(value)),
        Some((length, None)) => Err(too_long("a value", length, max_value)),
    }
}

fn too_long(what: &str, length: i64, max: usize) -> Failure {
    Failure::Refused(format!(
        "{what} of {length} bytes in the store is over the {max} a call may take"
    ))
}

fn down(err: rusqlite::Error) -> Failure {
    Failure::Down(err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Server processes started together all open a new file at once: each
    /// switches it to WAL and creates the table. SQLite answers some of them
    /// "database is locked" at once, without calling the busy handler (it
    /// refuses to wait where two lock upgrades could deadlock), so the first
    /// request of one server failed. Threads with a connection each are the
    /// same to SQLite as processes.
    #[test]
    fn many_openers_of_a_new_file_all_succeed() {
        let dir = std::env::temp_dir().join(format!("kv-open-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ticket = || {
            Arc::new(Ticket::new(
                std::time::Instant::now() + Duration::from_secs(10),
            ))
        };
        for round in 0..20 {
            let path = dir.join(format!("{round}.sqlite3"));
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let openers: Vec<_> = (0..8)
                .map(|_| {
                    let (path, barrier, ticket) = (path.clone(), barrier.clone(), ticket());
                    std::thread::spawn(move || {
                        CURRENT.with_borrow_mut(|current| *current = Some(ticket.clone()));
                        barrier.wait();
                        let mut conn = open(&path)?;
                        increment(&mut conn, "counter", 1, &ticket)
                    })
                })
                .collect();
            for opener in openers {
                if let Err(failure) = opener.join().unwrap() {
                    panic!("round {round}: {failure:?}");
                }
            }
            CURRENT.with_borrow_mut(|current| *current = Some(ticket()));
            let conn = open(&path).unwrap();
            let value = get(&conn, "counter", 100).unwrap();
            assert_eq!(value.as_deref(), Some(&b"8"[..]), "round {round}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A value over the limit is refused, and one at it is read whole.
    #[test]
    fn values_over_the_limit_are_refused_unread() {
        let dir = std::env::temp_dir().join(format!("kv-limit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ticket = Arc::new(Ticket::new(
            std::time::Instant::now() + Duration::from_secs(10),
        ));
        CURRENT.with_borrow_mut(|current| *current = Some(ticket.clone()));
        let conn = open(&dir.join("kv.sqlite3")).unwrap();
        conn.execute(
            "INSERT INTO kv (key, value) VALUES ('k', ?1)",
            [vec![7u8; 100]],
        )
        .unwrap();
        assert_eq!(get(&conn, "k", 100).unwrap().unwrap().len(), 100);
        assert!(matches!(get(&conn, "k", 99), Err(Failure::Refused(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
