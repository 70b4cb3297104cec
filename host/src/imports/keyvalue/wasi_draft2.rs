//! `wasi:keyvalue@0.2.0-draft2`, the version Spin links and spin-sdk 7's
//! experimental world imports, over [`Calls`]. Beside the draft wasmtime
//! carries, it counts signed, pages keys with a string cursor, and swaps a
//! value only if nobody changed it since it was read (`cas`).

use wasmtime::component::Resource;

use super::{Bucket, KeyValue, KvError};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/deps/keyvalue-draft2",
        world: "wasi:keyvalue/imports@0.2.0-draft2",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::imports::keyvalue::Bucket,
            "wasi:keyvalue/atomics.cas": crate::imports::keyvalue::wasi_draft2::Cas,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => crate::imports::keyvalue::KvError,
        },
    });
}

pub(super) use bindings::wasi::keyvalue::{atomics, batch, store};

/// A value as read, to be swapped only if the store still holds it.
pub struct Cas {
    store: usize,
    key: String,
    current: Option<Vec<u8>>,
}

impl KeyValue<'_> {
    /// Reads `key` for a compare-and-swap.
    async fn read_for_swap(&mut self, store: usize, key: String) -> Result<Resource<Cas>, KvError> {
        let current = self.calls().get(store, key.clone()).await?;
        Ok(self.table.push(Cas {
            store,
            key,
            current,
        })?)
    }
}

wasi_store_host!(store);

impl store::HostBucket for KeyValue<'_> {
    bucket_calls!();

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<String>,
    ) -> Result<store::KeyResponse, KvError> {
        let cursor = cursor
            .map(|cursor| cursor.parse::<u64>())
            .transpose()
            .map_err(|_| KvError::Other("not a cursor this store returned".into()))?;
        let (keys, cursor) = self
            .calls()
            .list_keys(self.bucket(&bucket)?, cursor)
            .await?;
        Ok(store::KeyResponse {
            keys,
            cursor: cursor.map(|cursor| cursor.to_string()),
        })
    }
}

impl atomics::Host for KeyValue<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> Result<i64, KvError> {
        self.calls()
            .increment(self.bucket(&bucket)?, key, delta)
            .await
    }

    /// Swaps in `value` if the store still holds what `cas` read; if not,
    /// `cas-failed` with the value read anew, as the interface asks.
    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let Cas {
            store,
            key,
            current,
        } = self.table.delete(cas)?;
        let swapped = self
            .calls()
            .compare_and_swap(store, key.clone(), current, value)
            .await;
        let failed = match swapped {
            Ok(true) => return Ok(Ok(())),
            Ok(false) => self
                .read_for_swap(store, key)
                .await
                .map(atomics::CasError::CasFailed),
            Err(err) => Err(err),
        };
        Ok(Err(match failed {
            Ok(failed) => failed,
            Err(err) => atomics::CasError::StoreError(store::Host::convert_error(self, err)?),
        }))
    }
}

impl atomics::HostCas for KeyValue<'_> {
    async fn new(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Resource<Cas>, KvError> {
        let store = self.bucket(&bucket)?;
        self.read_for_swap(store, key).await
    }

    async fn current(&mut self, cas: Resource<Cas>) -> Result<Option<Vec<u8>>, KvError> {
        Ok(self.table.get(&cas)?.current.clone())
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
        Ok(())
    }
}

impl batch::Host for KeyValue<'_> {
    batch_writes!();

    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, KvError> {
        self.calls().get_many(self.bucket(&bucket)?, keys).await
    }
}
