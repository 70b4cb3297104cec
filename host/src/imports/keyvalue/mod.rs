//! `wasi:keyvalue` (the `0.2.0-draft` that wasmtime 48 carries: `store`,
//! `atomics`, `batch`) on stores the operator names with `--keyvalue
//! [NAME=]URL`: SQLite files (`sqlite.rs`) or Redis servers (`redis.rs`).
//!
//! A guest opens a store by name; `""` and `"default"` are the default one,
//! which without any `--keyvalue` is a SQLite file in the user's data
//! directory, opened on first use so that a guest that never uses key-value
//! creates no file. An unknown name is `no-such-store`.
//!
//! Every call runs under the request's deadline like the rest of the guest,
//! so a store that hangs costs the request, not the server; and every call
//! carries its request's [`Ticket`], so a store that works on its own thread
//! (SQLite) knows when nobody waits for the call any more. A store that fails
//! (Redis down, a disk error) gives the guest an error, and the log says so
//! once per outage, not once per request, and again when it answers.
//!
//! Nothing is read whole before its size is checked: a value or key that
//! someone else wrote into a shared store, larger than a guest may pass, is
//! refused by its size as the store reports it.

mod redis;
mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use tracing::{error, info};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable, ResourceTableError};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/deps/keyvalue",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::Bucket,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => super::KvError,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// Where a store keeps its data. (Its `Debug` shows a Redis URL without
/// its password.)
#[derive(Clone, PartialEq, Eq)]
pub enum Url {
    /// `sqlite:PATH`: a file on this machine, which several server processes
    /// may share.
    Sqlite(PathBuf),
    /// `redis://HOST:PORT[/DB]`: shared by servers on many machines.
    Redis(String),
}

impl std::fmt::Debug for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Url::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Url::Redis(url) => f.debug_tuple("Redis").field(&redis::redacted(url)).finish(),
        }
    }
}

impl std::str::FromStr for Url {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            if path.is_empty() {
                return Err("`sqlite:` needs a file path, as in `sqlite:data/store.db`".into());
            }
            return Ok(Url::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("redis://") {
            // Checked here, so that a typo stops the server at startup.
            ::redis::Client::open(url)
                .map_err(|err| format!("`{}`: {err}", redis::redacted(url)))?;
            return Ok(Url::Redis(url.to_string()));
        }
        Err(format!(
            "`{}` is neither `sqlite:PATH` nor `redis://HOST:PORT[/DB]`",
            redis::redacted(url)
        ))
    }
}

/// Sizes a guest may use, each checked before the store sees the call.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest key, in bytes (`--keyvalue-max-key`).
    pub max_key: usize,
    /// Largest value, in bytes (`--keyvalue-max-value`).
    pub max_value: usize,
    /// Most keys in one batch call, and keys per `list-keys` page
    /// (`--keyvalue-max-batch`).
    pub max_batch: usize,
}

impl Limits {
    /// The most a batch read may return, in bytes: what the host-memory
    /// budget counts for one call.
    fn max_batch_bytes(&self) -> usize {
        self.max_batch.max(1).saturating_mul(self.max_value)
    }
}

/// One request's side of its key-value calls: until when they may run, and
/// whether a write of it is committing. A write commits only while its
/// request still waits for it (not abandoned, deadline not passed), and the
/// request's answer after its deadline waits for a commit that had already
/// begun ([`Ticket::settled`]): so a client told its request failed never
/// sees a write of it land later.
pub struct Ticket {
    deadline: Instant,
    /// Set when the guest's call went away mid-call (its client left, or it
    /// was evicted).
    abandoned: AtomicBool,
    /// Writes of this request between their last check and the end of their
    /// commit.
    committing: AtomicUsize,
    committed: tokio::sync::Notify,
}

impl Ticket {
    pub fn new(deadline: Instant) -> Self {
        Self {
            deadline,
            abandoned: AtomicBool::new(false),
            committing: AtomicUsize::new(0),
            committed: tokio::sync::Notify::new(),
        }
    }

    /// Whether the request still waits for its calls.
    fn waiting(&self) -> bool {
        !self.abandoned.load(Ordering::SeqCst) && Instant::now() < self.deadline
    }

    /// Marks the request abandoned if the returned guard is dropped before
    /// [`Abandon::disarm`].
    fn abandon_on_drop(&self) -> Abandon<'_> {
        Abandon(self)
    }

    /// Starts a commit if the request still waits; the commit must be done
    /// when the returned guard is dropped.
    fn begin_commit(&self) -> Option<Committing<'_>> {
        // Counted before the check: whoever sees the deadline passed after
        // this check also sees the count (both SeqCst) and waits for it.
        self.committing.fetch_add(1, Ordering::SeqCst);
        let committing = Committing(self);
        self.waiting().then_some(committing)
    }

    /// Resolves once no write of this request is committing; past the
    /// deadline, none will start again.
    pub async fn settled(&self) {
        loop {
            let committed = self.committed.notified();
            let mut committed = std::pin::pin!(committed);
            committed.as_mut().enable();
            if self.committing.load(Ordering::SeqCst) == 0 {
                return;
            }
            committed.await;
        }
    }
}

/// See [`Ticket::abandon_on_drop`].
struct Abandon<'a>(&'a Ticket);

impl Abandon<'_> {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        self.0.abandoned.store(true, Ordering::SeqCst);
    }
}

/// A commit in progress; see [`Ticket::begin_commit`].
struct Committing<'a>(&'a Ticket);

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        self.0.committing.fetch_sub(1, Ordering::SeqCst);
        self.0.committed.notify_waiters();
    }
}

/// The name of the store `""` opens.
pub const DEFAULT_STORE: &str = "default";

/// Every store the guests may open, shared by all requests.
pub struct Stores {
    stores: Vec<Store>,
    limits: Limits,
}

struct Store {
    name: String,
    backend: Backend,
    /// Whether the last call failed for want of the store: the log line for
    /// an outage is written when this turns true, and one when it turns back.
    down: AtomicBool,
}

enum Backend {
    Sqlite(sqlite::Sqlite),
    Redis(Box<redis::Redis>),
}

/// Why a call to a store failed.
#[derive(Debug)]
pub enum Failure {
    /// The store cannot be reached or used now (Redis down, disk error):
    /// logged once per outage.
    Down(String),
    /// The store refused this call (a value that is not a number to
    /// increment): the guest's own doing, not logged.
    Refused(String),
}

impl Stores {
    /// The stores named on the command line; with none, `default` is a
    /// SQLite file at `default_path`. Nothing is opened or connected yet.
    /// `queue` is how many calls may wait for a store that works through
    /// them one at a time (SQLite): the instance slots, so that the calls
    /// waiting hold no more memory than the instances' budgets count.
    pub fn new(
        named: &[(String, Url)],
        default_path: Option<PathBuf>,
        limits: Limits,
        queue: usize,
    ) -> Result<Self, String> {
        let mut stores = Vec::new();
        for (name, url) in named {
            if stores.iter().any(|store: &Store| &store.name == name) {
                return Err(format!("two --keyvalue stores are named `{name}`"));
            }
            let backend = match url {
                Url::Sqlite(path) => Backend::Sqlite(sqlite::Sqlite::new(path.clone(), queue)?),
                Url::Redis(url) => Backend::Redis(Box::new(redis::Redis::new(url)?)),
            };
            stores.push(Store {
                name: name.clone(),
                backend,
                down: AtomicBool::new(false),
            });
        }
        if !stores.iter().any(|store| store.name == DEFAULT_STORE)
            && let Some(path) = default_path
        {
            stores.push(Store {
                name: DEFAULT_STORE.into(),
                backend: Backend::Sqlite(sqlite::Sqlite::new(path, queue)?),
                down: AtomicBool::new(false),
            });
        }
        Ok(Self { stores, limits })
    }

    /// No stores at all: every `open` is `no-such-store`.
    pub fn none() -> Self {
        Self {
            stores: Vec::new(),
            limits: Limits {
                max_key: 0,
                max_value: 0,
                max_batch: 0,
            },
        }
    }

    /// Where each store is, for the startup log.
    pub fn describe(&self) -> Vec<String> {
        self.stores
            .iter()
            .map(|store| match &store.backend {
                Backend::Sqlite(db) => format!("`{}`: SQLite {}", store.name, db.path().display()),
                Backend::Redis(redis) => format!("`{}`: {}", store.name, redis.url()),
            })
            .collect()
    }

    fn find(&self, identifier: &str) -> Option<usize> {
        let name = if identifier.is_empty() {
            DEFAULT_STORE
        } else {
            identifier
        };
        self.stores.iter().position(|store| store.name == name)
    }
}

impl Store {
    /// Logs the start and the end of an outage, once each, and turns the
    /// result into what the guest sees.
    fn record<T>(&self, result: Result<T, Failure>) -> Result<T, KvError> {
        match result {
            Ok(value) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    info!(store = %self.name, "key-value store answers again");
                }
                Ok(value)
            }
            Err(Failure::Refused(reason)) => Err(KvError::Other(reason)),
            Err(Failure::Down(reason)) => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    error!(
                        store = %self.name,
                        "key-value store unavailable: {reason}; guests get errors until it answers"
                    );
                }
                Err(KvError::Other(format!(
                    "store `{}` unavailable: {reason}",
                    self.name
                )))
            }
        }
    }
}

/// A store the guest opened: which one.
pub struct Bucket {
    store: usize,
}

/// `wasi:keyvalue/store.error`, as the host functions return it.
pub enum KvError {
    NoSuchStore,
    Other(String),
}

impl From<ResourceTableError> for KvError {
    fn from(err: ResourceTableError) -> Self {
        KvError::Other(format!("too many open resources: {err}"))
    }
}

/// Refuses `size` past `max`, naming the flag that sets it.
fn at_most(size: usize, max: usize, what: &str, unit: &str, flag: &str) -> Result<(), KvError> {
    if size > max {
        return Err(KvError::Other(format!(
            "{what} {size} {unit} is over the {max} allowed ({flag})"
        )));
    }
    Ok(())
}

/// What the key-value host functions see of a request's store.
pub struct KeyValue<'a> {
    pub table: &'a mut ResourceTable,
    pub stores: &'a Stores,
    /// The request's deadline and commits.
    pub ticket: &'a Arc<Ticket>,
}

impl KeyValue<'_> {
    fn store(&self, bucket: &Resource<Bucket>) -> Result<&Store, KvError> {
        let index = self.table.get(bucket)?.store;
        Ok(&self.stores.stores[index])
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        at_most(
            key.len(),
            self.stores.limits.max_key,
            "a key of",
            "bytes",
            "--keyvalue-max-key",
        )
    }

    fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        let max = self.stores.limits.max_value;
        at_most(
            value.len(),
            max,
            "a value of",
            "bytes",
            "--keyvalue-max-value",
        )
    }

    fn check_batch(&self, len: usize) -> Result<(), KvError> {
        let max = self.stores.limits.max_batch;
        at_most(len, max, "a batch of", "keys", "--keyvalue-max-batch")
    }
}

/// Each call on either backend: SQLite's on the store's thread for the
/// request of `ticket`; Redis's on its connection, dropped with the request.
impl Backend {
    async fn get(
        &self,
        ticket: &Arc<Ticket>,
        key: String,
        limits: &Limits,
    ) -> Result<Option<Vec<u8>>, Failure> {
        match self {
            Backend::Sqlite(db) => db.get(ticket, key, limits.max_value).await,
            Backend::Redis(redis) => redis.get(key, limits.max_value).await,
        }
    }

    async fn set(&self, ticket: &Arc<Ticket>, key: String, value: Vec<u8>) -> Result<(), Failure> {
        match self {
            Backend::Sqlite(db) => db.set_many(ticket, vec![(key, value)]).await,
            Backend::Redis(redis) => redis.set(key, value).await,
        }
    }

    async fn delete_many(&self, ticket: &Arc<Ticket>, keys: Vec<String>) -> Result<(), Failure> {
        match self {
            Backend::Sqlite(db) => db.delete_many(ticket, keys).await,
            Backend::Redis(redis) => redis.delete_many(keys).await,
        }
    }

    async fn exists(&self, ticket: &Arc<Ticket>, key: String) -> Result<bool, Failure> {
        match self {
            Backend::Sqlite(db) => db.exists(ticket, key).await,
            Backend::Redis(redis) => redis.exists(key).await,
        }
    }

    async fn list_keys(
        &self,
        ticket: &Arc<Ticket>,
        cursor: Option<u64>,
        limits: &Limits,
    ) -> Result<(Vec<String>, Option<u64>), Failure> {
        let (page, max_key) = (limits.max_batch, limits.max_key);
        match self {
            Backend::Sqlite(db) => db.list_keys(ticket, cursor, page, max_key).await,
            Backend::Redis(redis) => redis.list_keys(cursor, page, max_key).await,
        }
    }

    async fn increment(
        &self,
        ticket: &Arc<Ticket>,
        key: String,
        delta: u64,
    ) -> Result<u64, Failure> {
        match self {
            Backend::Sqlite(db) => db.increment(ticket, key, delta).await,
            Backend::Redis(redis) => redis.increment(key, delta).await,
        }
    }

    async fn get_many(
        &self,
        ticket: &Arc<Ticket>,
        keys: Vec<String>,
        limits: &Limits,
    ) -> Result<Vec<Option<Vec<u8>>>, Failure> {
        let (max_value, max_total) = (limits.max_value, limits.max_batch_bytes());
        match self {
            Backend::Sqlite(db) => db.get_many(ticket, keys, max_value, max_total).await,
            Backend::Redis(redis) => redis.get_many(keys, max_value, max_total).await,
        }
    }

    async fn set_many(
        &self,
        ticket: &Arc<Ticket>,
        pairs: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Failure> {
        match self {
            Backend::Sqlite(db) => db.set_many(ticket, pairs).await,
            Backend::Redis(redis) => redis.set_many(pairs).await,
        }
    }
}

impl store::Host for KeyValue<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, KvError> {
        let store = self.stores.find(&identifier).ok_or(KvError::NoSuchStore)?;
        Ok(self.table.push(Bucket { store })?)
    }

    fn convert_error(&mut self, err: KvError) -> wasmtime::Result<store::Error> {
        Ok(match err {
            KvError::NoSuchStore => store::Error::NoSuchStore,
            KvError::Other(reason) => store::Error::Other(reason),
        })
    }
}

impl store::HostBucket for KeyValue<'_> {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, KvError> {
        self.check_key(&key)?;
        let store = self.store(&bucket)?;
        store.record(
            store
                .backend
                .get(self.ticket, key, &self.stores.limits)
                .await,
        )
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), KvError> {
        self.check_key(&key)?;
        self.check_value(&value)?;
        let store = self.store(&bucket)?;
        store.record(store.backend.set(self.ticket, key, value).await)
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), KvError> {
        self.check_key(&key)?;
        let store = self.store(&bucket)?;
        store.record(store.backend.delete_many(self.ticket, vec![key]).await)
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, KvError> {
        self.check_key(&key)?;
        let store = self.store(&bucket)?;
        store.record(store.backend.exists(self.ticket, key).await)
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, KvError> {
        let store = self.store(&bucket)?;
        let listed = store
            .backend
            .list_keys(self.ticket, cursor, &self.stores.limits);
        let (keys, cursor) = store.record(listed.await)?;
        Ok(store::KeyResponse { keys, cursor })
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for KeyValue<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, KvError> {
        self.check_key(&key)?;
        let store = self.store(&bucket)?;
        store.record(store.backend.increment(self.ticket, key, delta).await)
    }
}

impl batch::Host for KeyValue<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, KvError> {
        self.check_batch(keys.len())?;
        keys.iter().try_for_each(|key| self.check_key(key))?;
        let store = self.store(&bucket)?;
        let values = store
            .backend
            .get_many(self.ticket, keys.clone(), &self.stores.limits);
        let values = store.record(values.await)?;
        Ok(keys
            .into_iter()
            .zip(values)
            .map(|(key, value)| value.map(|value| (key, value)))
            .collect())
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<(), KvError> {
        self.check_batch(key_values.len())?;
        for (key, value) in &key_values {
            self.check_key(key)?;
            self.check_value(value)?;
        }
        let store = self.store(&bucket)?;
        store.record(store.backend.set_many(self.ticket, key_values).await)
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<(), KvError> {
        self.check_batch(keys.len())?;
        keys.iter().try_for_each(|key| self.check_key(key))?;
        let store = self.store(&bucket)?;
        store.record(store.backend.delete_many(self.ticket, keys).await)
    }
}

struct HasKeyValue;

impl HasData for HasKeyValue {
    type Data<'a> = KeyValue<'a>;
}

/// Adds `wasi:keyvalue/{store,atomics,batch}` to `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KeyValue<'_>,
) -> wasmtime::Result<()> {
    store::add_to_linker::<T, HasKeyValue>(linker, view)?;
    atomics::add_to_linker::<T, HasKeyValue>(linker, view)?;
    batch::add_to_linker::<T, HasKeyValue>(linker, view)?;
    Ok(())
}
