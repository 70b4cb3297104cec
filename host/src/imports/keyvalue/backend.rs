//! Each call on either kind of store: SQLite's on the store's thread for the
//! request of its ticket, Redis's on its connection, dropped with the
//! request.

use std::sync::Arc;

use super::{Backend, Failure, Limits, Ticket};

impl Backend {
    pub(super) async fn get(
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

    pub(super) async fn set(
        &self,
        ticket: &Arc<Ticket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), Failure> {
        match self {
            Backend::Sqlite(db) => db.set_many(ticket, vec![(key, value)]).await,
            Backend::Redis(redis) => redis.set(key, value).await,
        }
    }

    pub(super) async fn delete_many(
        &self,
        ticket: &Arc<Ticket>,
        keys: Vec<String>,
    ) -> Result<(), Failure> {
        match self {
            Backend::Sqlite(db) => db.delete_many(ticket, keys).await,
            Backend::Redis(redis) => redis.delete_many(keys).await,
        }
    }

    pub(super) async fn exists(&self, ticket: &Arc<Ticket>, key: String) -> Result<bool, Failure> {
        match self {
            Backend::Sqlite(db) => db.exists(ticket, key).await,
            Backend::Redis(redis) => redis.exists(key).await,
        }
    }

    pub(super) async fn list_keys(
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

    pub(super) async fn increment(
        &self,
        ticket: &Arc<Ticket>,
        key: String,
        delta: i64,
    ) -> Result<i64, Failure> {
        match self {
            Backend::Sqlite(db) => db.increment(ticket, key, delta).await,
            Backend::Redis(redis) => redis.increment(key, delta).await,
        }
    }

    pub(super) async fn get_many(
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

    pub(super) async fn set_many(
        &self,
        ticket: &Arc<Ticket>,
        pairs: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Failure> {
        match self {
            Backend::Sqlite(db) => db.set_many(ticket, pairs).await,
            Backend::Redis(redis) => redis.set_many(pairs).await,
        }
    }

    pub(super) async fn compare_and_swap(
        &self,
        ticket: &Arc<Ticket>,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, Failure> {
        match self {
            Backend::Sqlite(db) => db.compare_and_swap(ticket, key, expected, value).await,
            Backend::Redis(redis) => redis.compare_and_swap(key, expected, value).await,
        }
    }
}
