//! Key-value stores the operator names with `--keyvalue [NAME=]URL`, SQLite
//! files (`sqlite.rs`) or Redis servers (`redis.rs`), and every interface
//! through which a component uses them: `wasi:keyvalue@0.2.0-draft` (what
//! wasmtime 48 carries), `wasi:keyvalue@0.2.0-draft2` (what Spin and
//! spin-sdk 7 use), and Spin's own `fermyon:spin/key-value@2.0.0` and
//! `spin:key-value@3.0.0`. The calls are written once, in [`Calls`]; each
//! interface is a thin adapter over them (`wasi_draft.rs`, `wasi_draft2.rs`,
//! `spin.rs`), so every version sees the same stores under the same limits.
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

/// The methods every version's bucket (or Spin's store) resource has alike:
/// `get`, `set`, `delete`, `exists` and `drop`, each one call of [`Calls`].
/// A macro because each version's trait is its own type.
macro_rules! bucket_calls {
    () => {
        async fn get(
            &mut self,
            bucket: Resource<Bucket>,
            key: String,
        ) -> Result<Option<Vec<u8>>, KvError> {
            self.calls().get(self.bucket(&bucket)?, key).await
        }

        async fn set(
            &mut self,
            bucket: Resource<Bucket>,
            key: String,
            value: Vec<u8>,
        ) -> Result<(), KvError> {
            self.calls().set(self.bucket(&bucket)?, key, value).await
        }

        async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), KvError> {
            self.calls().delete(self.bucket(&bucket)?, key).await
        }

        async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, KvError> {
            self.calls().exists(self.bucket(&bucket)?, key).await
        }

        async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
            self.table.delete(bucket)?;
            Ok(())
        }
    };
}

/// `wasi:keyvalue/store`'s functions, alike in both drafts.
macro_rules! wasi_store_host {
    ($store:ident) => {
        impl $store::Host for KeyValue<'_> {
            async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, KvError> {
                KeyValue::open(self, &identifier)
            }

            convert_error!($store::Error);
        }
    };
}

/// `wasi:keyvalue/batch`'s writes, alike in both drafts.
macro_rules! batch_writes {
    () => {
        async fn set_many(
            &mut self,
            bucket: Resource<Bucket>,
            key_values: Vec<(String, Vec<u8>)>,
        ) -> Result<(), KvError> {
            self.calls()
                .set_many(self.bucket(&bucket)?, key_values)
                .await
        }

        async fn delete_many(
            &mut self,
            bucket: Resource<Bucket>,
            keys: Vec<String>,
        ) -> Result<(), KvError> {
            self.calls().delete_many(self.bucket(&bucket)?, keys).await
        }
    };
}

/// `convert_error` for a version whose error has `no-such-store` and
/// `other(string)`, as they all do.
macro_rules! convert_error {
    ($error:ty) => {
        fn convert_error(&mut self, err: KvError) -> wasmtime::Result<$error> {
            Ok(match err {
                KvError::NoSuchStore => <$error>::NoSuchStore,
                KvError::AccessDenied => <$error>::AccessDenied,
                KvError::Other(reason) => <$error>::Other(reason),
            })
        }
    };
}

mod backend;
mod redis;
mod spin;
mod sqlite;
mod ticket;
mod wasi_draft;
mod wasi_draft2;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::{Instrument, error, info};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable, ResourceTableError};

use crate::trace::spans;

pub use ticket::Ticket;

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
    /// Runs `call`, the store's `operation`, in a trace span of its own,
    /// and turns its result into what the guest sees.
    async fn run<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, KvError> {
        let system = match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Redis(_) => "redis",
        };
        let span = spans::keyvalue(operation, &self.name, system);
        let result = call.instrument(span.clone()).await;
        if let Err(Failure::Refused(reason) | Failure::Down(reason)) = &result {
            spans::failed(&span, reason);
        }
        self.record(result)
    }

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

/// A store the guest opened: which one. Every interface's store or bucket
/// resource is one of these.
pub struct Bucket {
    store: usize,
}

/// Why a call failed, as every interface's error type says it.
pub enum KvError {
    NoSuchStore,
    /// A store the component's manifest does not list, as Spin refuses it.
    AccessDenied,
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
    pub stores: &'a Arc<Stores>,
    /// The labels the component may open; `None`: all.
    pub allowed: Option<&'a [String]>,
    /// The request's deadline and commits.
    pub ticket: &'a Arc<Ticket>,
}

impl KeyValue<'_> {
    fn calls(&self) -> Calls<'_> {
        Calls {
            stores: self.stores,
            ticket: self.ticket,
        }
    }

    /// Which store `bucket` opened.
    fn bucket(&self, bucket: &Resource<Bucket>) -> Result<usize, KvError> {
        Ok(self.table.get(bucket)?.store)
    }

    /// A bucket on the store named `label`, in the request's table.
    fn open(&mut self, label: &str) -> Result<Resource<Bucket>, KvError> {
        let name = if label.is_empty() {
            DEFAULT_STORE
        } else {
            label
        };
        if self
            .allowed
            .is_some_and(|allowed| !allowed.iter().any(|a| a == name))
        {
            return Err(KvError::AccessDenied);
        }
        let store = self.stores.find(label).ok_or(KvError::NoSuchStore)?;
        Ok(self.table.push(Bucket { store })?)
    }

    /// What a call that runs across an await (WASI 0.3's `async` functions)
    /// takes with it: the store of `bucket`, and the request's stores and
    /// ticket, owned.
    fn detach(&self, bucket: &Resource<Bucket>) -> Result<Detached, KvError> {
        Ok(Detached {
            store: self.bucket(bucket)?,
            stores: self.stores.clone(),
            ticket: self.ticket.clone(),
        })
    }
}

/// The key-value interfaces' view of a request's data.
struct HasKeyValue;

impl HasData for HasKeyValue {
    type Data<'a> = KeyValue<'a>;
}

/// See [`KeyValue::detach`].
struct Detached {
    store: usize,
    stores: Arc<Stores>,
    ticket: Arc<Ticket>,
}

impl Detached {
    fn calls(&self) -> Calls<'_> {
        Calls {
            stores: &self.stores,
            ticket: &self.ticket,
        }
    }
}

/// Every call a guest can make on a store, whatever the interface: the
/// sizes checked against the limits, then the store's answer recorded
/// (outages logged once).
#[derive(Clone, Copy)]
struct Calls<'a> {
    stores: &'a Stores,
    ticket: &'a Arc<Ticket>,
}

impl Calls<'_> {
    fn limits(&self) -> &Limits {
        &self.stores.limits
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        let max = self.limits().max_key;
        at_most(key.len(), max, "a key of", "bytes", "--keyvalue-max-key")
    }

    fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        let max = self.limits().max_value;
        at_most(
            value.len(),
            max,
            "a value of",
            "bytes",
            "--keyvalue-max-value",
        )
    }

    fn check_batch(&self, len: usize) -> Result<(), KvError> {
        let max = self.limits().max_batch;
        at_most(len, max, "a batch of", "keys", "--keyvalue-max-batch")
    }

    async fn get(&self, store: usize, key: String) -> Result<Option<Vec<u8>>, KvError> {
        self.check_key(&key)?;
        let store = &self.stores.stores[store];
        store
            .run("get", store.backend.get(self.ticket, key, self.limits()))
            .await
    }

    async fn set(&self, store: usize, key: String, value: Vec<u8>) -> Result<(), KvError> {
        self.check_key(&key)?;
        self.check_value(&value)?;
        let store = &self.stores.stores[store];
        store
            .run("set", store.backend.set(self.ticket, key, value))
            .await
    }

    async fn delete(&self, store: usize, key: String) -> Result<(), KvError> {
        self.check_key(&key)?;
        let store = &self.stores.stores[store];
        store
            .run("delete", store.backend.delete_many(self.ticket, vec![key]))
            .await
    }

    async fn exists(&self, store: usize, key: String) -> Result<bool, KvError> {
        self.check_key(&key)?;
        let store = &self.stores.stores[store];
        store
            .run("exists", store.backend.exists(self.ticket, key))
            .await
    }

    /// A page of keys, at most `--keyvalue-max-batch`, and the cursor of the
    /// next one.
    async fn list_keys(
        &self,
        store: usize,
        cursor: Option<u64>,
    ) -> Result<(Vec<String>, Option<u64>), KvError> {
        let store = &self.stores.stores[store];
        let listed = store.backend.list_keys(self.ticket, cursor, self.limits());
        store.run("list-keys", listed).await
    }

    /// Every key at once, for the interfaces that list them in one answer
    /// (Spin's): page after page, refused once the keys would take more
    /// than a batch read may return, so that a large store costs the call
    /// an error, not the host its memory.
    async fn all_keys(&self, store: usize) -> Result<Vec<String>, KvError> {
        let max_bytes = self.limits().max_batch_bytes();
        let (mut keys, mut bytes, mut cursor) = (Vec::new(), 0usize, None);
        loop {
            let (page, next) = self.list_keys(store, cursor).await?;
            bytes += page.iter().map(String::len).sum::<usize>();
            at_most(
                bytes,
                max_bytes,
                "listing keys of",
                "bytes",
                "--keyvalue-max-batch",
            )?;
            keys.extend(page);
            match next {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    async fn increment(&self, store: usize, key: String, delta: i64) -> Result<i64, KvError> {
        self.check_key(&key)?;
        let store = &self.stores.stores[store];
        store
            .run(
                "increment",
                store.backend.increment(self.ticket, key, delta),
            )
            .await
    }

    /// Sets `key` to `value` if it still holds `expected`; false if not.
    async fn compare_and_swap(
        &self,
        store: usize,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, KvError> {
        self.check_key(&key)?;
        self.check_value(&value)?;
        let store = &self.stores.stores[store];
        let swap = store
            .backend
            .compare_and_swap(self.ticket, key, expected, value);
        store.run("compare-and-swap", swap).await
    }

    /// Each key's value, `None` where absent, in the order asked.
    async fn get_many(
        &self,
        store: usize,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, KvError> {
        self.check_batch(keys.len())?;
        keys.iter().try_for_each(|key| self.check_key(key))?;
        let store = &self.stores.stores[store];
        let values = store
            .backend
            .get_many(self.ticket, keys.clone(), self.limits());
        let values = store.run("get-many", values).await?;
        Ok(keys.into_iter().zip(values).collect())
    }

    async fn set_many(&self, store: usize, pairs: Vec<(String, Vec<u8>)>) -> Result<(), KvError> {
        self.check_batch(pairs.len())?;
        for (key, value) in &pairs {
            self.check_key(key)?;
            self.check_value(value)?;
        }
        let store = &self.stores.stores[store];
        store
            .run("set-many", store.backend.set_many(self.ticket, pairs))
            .await
    }

    async fn delete_many(&self, store: usize, keys: Vec<String>) -> Result<(), KvError> {
        self.check_batch(keys.len())?;
        keys.iter().try_for_each(|key| self.check_key(key))?;
        let store = &self.stores.stores[store];
        store
            .run("delete-many", store.backend.delete_many(self.ticket, keys))
            .await
    }
}

/// Adds every key-value interface to `linker`; `spin:key-value@3.0.0`,
/// whose functions are `async` (WASI 0.3), only where the engine runs WASI
/// 0.3.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    async_abi: bool,
    view: fn(&mut T) -> KeyValue<'_>,
) -> wasmtime::Result<()> {
    wasi_draft::store::add_to_linker::<T, HasKeyValue>(linker, view)?;
    wasi_draft::atomics::add_to_linker::<T, HasKeyValue>(linker, view)?;
    wasi_draft::batch::add_to_linker::<T, HasKeyValue>(linker, view)?;
    wasi_draft2::store::add_to_linker::<T, HasKeyValue>(linker, view)?;
    wasi_draft2::atomics::add_to_linker::<T, HasKeyValue>(linker, view)?;
    wasi_draft2::batch::add_to_linker::<T, HasKeyValue>(linker, view)?;
    spin::spin2::add_to_linker::<T, HasKeyValue>(linker, view)?;
    if async_abi {
        spin::spin3::add_to_linker::<T, HasKeyValue>(linker, view)?;
    }
    Ok(())
}
