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
//! so a store that hangs costs the request, not the server. A store that
//! fails (Redis down, a disk error) gives the guest an error, and the log
//! says so once per outage, not once per request, and again when it answers.

mod redis;
mod sqlite;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// Where a store keeps its data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Url {
    /// `sqlite:PATH`: a file on this machine, which several server processes
    /// may share.
    Sqlite(PathBuf),
    /// `redis://HOST:PORT[/DB]`: shared by servers on many machines.
    Redis(String),
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
            ::redis::Client::open(url).map_err(|err| format!("`{url}`: {err}"))?;
            return Ok(Url::Redis(url.to_string()));
        }
        Err(format!(
            "`{url}` is neither `sqlite:PATH` nor `redis://HOST:PORT[/DB]`"
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
    Redis(redis::Redis),
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
    pub fn new(
        named: &[(String, Url)],
        default_path: Option<PathBuf>,
        limits: Limits,
    ) -> Result<Self, String> {
        let mut stores = Vec::new();
        for (name, url) in named {
            if stores.iter().any(|store: &Store| &store.name == name) {
                return Err(format!("two --keyvalue stores are named `{name}`"));
            }
            let backend = match url {
                Url::Sqlite(path) => Backend::Sqlite(sqlite::Sqlite::new(path.clone())),
                Url::Redis(url) => Backend::Redis(redis::Redis::new(url)?),
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
                backend: Backend::Sqlite(sqlite::Sqlite::new(path)),
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
fn within(size: usize, max: usize, what: &str, unit: &str, flag: &str) -> Result<(), KvError> {
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
}

impl KeyValue<'_> {
    fn store(&self, bucket: &Resource<Bucket>) -> Result<&Store, KvError> {
        let index = self.table.get(bucket)?.store;
        Ok(&self.stores.stores[index])
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        within(
            key.len(),
            self.stores.limits.max_key,
            "a key of",
            "bytes",
            "--keyvalue-max-key",
        )
    }

    fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        let max = self.stores.limits.max_value;
        within(
            value.len(),
            max,
            "a value of",
            "bytes",
            "--keyvalue-max-value",
        )
    }

    fn check_batch(&self, len: usize) -> Result<(), KvError> {
        let max = self.stores.limits.max_batch;
        within(len, max, "a batch of", "keys", "--keyvalue-max-batch")
    }

    /// A value read from a store that others may write to is held to the
    /// same limit as one a guest writes.
    fn check_read(&self, value: Option<Vec<u8>>) -> Result<Option<Vec<u8>>, KvError> {
        if let Some(value) = &value {
            self.check_value(value)?;
        }
        Ok(value)
    }
}

impl Backend {
    async fn get(&self, key: String) -> Result<Option<Vec<u8>>, Failure> {
        match self {
            Backend::Sqlite(db) => db.get(key).await,
            Backend::Redis(redis) => redis.get(key).await,
        }
    }

    async fn set(&self, key: String, value: Vec<u8>) -> Result<(), Failure> {
        match self {
            Backend::Sqlite(db) => db.set_many(vec![(key, value)]).await,
            Backend::Redis(redis) => redis.set(key, value).await,
        }
    }

    async fn delete_many(&self, keys: Vec<String>) -> Result<(), Failure> {
        match self {
            Backend::Sqlite(db) => db.delete_many(keys).await,
            Backend::Redis(redis) => redis.delete_many(keys).await,
        }
    }

    async fn exists(&self, key: String) -> Result<bool, Failure> {
        match self {
            Backend::Sqlite(db) => db.exists(key).await,
            Backend::Redis(redis) => redis.exists(key).await,
        }
    }

    async fn list_keys(
        &self,
        cursor: Option<u64>,
        page: usize,
    ) -> Result<(Vec<String>, Option<u64>), Failure> {
        match self {
            Backend::Sqlite(db) => db.list_keys(cursor, page).await,
            Backend::Redis(redis) => redis.list_keys(cursor, page).await,
        }
    }

    async fn increment(&self, key: String, delta: u64) -> Result<u64, Failure> {
        match self {
            Backend::Sqlite(db) => db.increment(key, delta).await,
            Backend::Redis(redis) => redis.increment(key, delta).await,
        }
    }

    async fn get_many(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, Failure> {
        match self {
            Backend::Sqlite(db) => db.get_many(keys).await,
            Backend::Redis(redis) => redis.get_many(keys).await,
        }
    }

    async fn set_many(&self, pairs: Vec<(String, Vec<u8>)>) -> Result<(), Failure> {
        match self {
            Backend::Sqlite(db) => db.set_many(pairs).await,
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
        let value = store.record(store.backend.get(key).await)?;
        self.check_read(value)
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
        store.record(store.backend.set(key, value).await)
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), KvError> {
        self.check_key(&key)?;
        let store = self.store(&bucket)?;
        store.record(store.backend.delete_many(vec![key]).await)
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, KvError> {
        self.check_key(&key)?;
        let store = self.store(&bucket)?;
        store.record(store.backend.exists(key).await)
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, KvError> {
        let page = self.stores.limits.max_batch;
        let store = self.store(&bucket)?;
        let (keys, cursor) = store.record(store.backend.list_keys(cursor, page).await)?;
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
        store.record(store.backend.increment(key, delta).await)
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
        let values = store.record(store.backend.get_many(keys.clone()).await)?;
        keys.into_iter()
            .zip(values)
            .map(|(key, value)| Ok(self.check_read(value)?.map(|value| (key, value))))
            .collect()
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
        store.record(store.backend.set_many(key_values).await)
    }

    async fn delete_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<(), KvError> {
        self.check_batch(keys.len())?;
        keys.iter().try_for_each(|key| self.check_key(key))?;
        let store = self.store(&bucket)?;
        store.record(store.backend.delete_many(keys).await)
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
