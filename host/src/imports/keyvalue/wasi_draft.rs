//! `wasi:keyvalue@0.2.0-draft`, the version wasmtime 48 carries (`wasmtime
//! serve -S keyvalue`), over [`Calls`].

use wasmtime::component::Resource;

use super::{Bucket, KeyValue, KvError};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/deps/keyvalue",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::imports::keyvalue::Bucket,
        },
        trappable_error_type: {
            "wasi:keyvalue/store.error" => crate::imports::keyvalue::KvError,
        },
    });
}

pub(super) use bindings::wasi::keyvalue::{atomics, batch, store};

wasi_store_host!(store);

impl store::HostBucket for KeyValue<'_> {
    bucket_calls!();

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, KvError> {
        let (keys, cursor) = self
            .calls()
            .list_keys(self.bucket(&bucket)?, cursor)
            .await?;
        Ok(store::KeyResponse { keys, cursor })
    }
}

impl atomics::Host for KeyValue<'_> {
    /// This version counts unsigned: a delta or a result past what the
    /// stores' signed 64 bits hold is refused.
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, KvError> {
        let delta = i64::try_from(delta)
            .map_err(|_| KvError::Other(format!("increments are at most {}", i64::MAX)))?;
        let value = self
            .calls()
            .increment(self.bucket(&bucket)?, key, delta)
            .await?;
        u64::try_from(value).map_err(|_| KvError::Other(format!("the value is negative: {value}")))
    }
}

impl batch::Host for KeyValue<'_> {
    batch_writes!();

    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, KvError> {
        let values = self.calls().get_many(self.bucket(&bucket)?, keys).await?;
        Ok(values
            .into_iter()
            .map(|(key, value)| value.map(|value| (key, value)))
            .collect())
    }
}
