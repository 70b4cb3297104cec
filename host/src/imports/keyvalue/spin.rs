//! Spin's own key-value interfaces over [`Calls`]: `fermyon:spin/key-value@2.0.0`
//! (spin-sdk 2 to 5, the JS and Python SDKs) and `spin:key-value@3.0.0`
//! (spin-sdk 7), whose functions are `async` and whose `get-keys` streams.
//! Both list every key in one answer, which [`Calls::all_keys`] bounds.

use wasmtime::component::{Accessor, FutureReader, Resource, StreamReader};

use super::{Bucket, HasKeyValue, KeyValue, KvError};

mod bindings {
    wasmtime::component::bindgen!({
        inline: "
            package wasi-http-server:spin-key-value;
            world spin-key-value {
                import fermyon:spin/key-value@2.0.0;
                import spin:key-value/key-value@3.0.0;
            }
        ",
        path: "../wit",
        imports: { default: async | trappable },
        with: {
            "fermyon:spin/key-value@2.0.0.store": crate::imports::keyvalue::Bucket,
            "spin:key-value/key-value@3.0.0.store": crate::imports::keyvalue::Bucket,
        },
        trappable_error_type: {
            "fermyon:spin/key-value@2.0.0.error" => crate::imports::keyvalue::KvError,
            "spin:key-value/key-value@3.0.0.error" => crate::imports::keyvalue::KvError,
        },
    });
}

pub(super) use bindings::fermyon::spin::key_value as spin2;
pub(super) use bindings::spin::key_value::key_value as spin3;

impl spin2::Host for KeyValue<'_> {
    convert_error!(spin2::Error);
}

impl spin2::HostStore for KeyValue<'_> {
    bucket_calls!();

    async fn open(&mut self, label: String) -> Result<Resource<Bucket>, KvError> {
        KeyValue::open(self, &label)
    }

    async fn get_keys(&mut self, store: Resource<Bucket>) -> Result<Vec<String>, KvError> {
        self.calls().all_keys(self.bucket(&store)?).await
    }
}

impl spin3::Host for KeyValue<'_> {
    convert_error!(spin3::Error);
}

impl spin3::HostStore for KeyValue<'_> {
    async fn drop(&mut self, store: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

/// WASI 0.3 functions hold no borrow of the request across an await: each
/// takes what it needs ([`KeyValue::detach`]) and calls the store without it.
impl<T> spin3::HostStoreWithStore<T> for HasKeyValue {
    async fn open(
        accessor: &Accessor<T, Self>,
        label: String,
    ) -> Result<Resource<Bucket>, KvError> {
        accessor.with(|mut access| access.get().open(&label))
    }

    async fn get(
        accessor: &Accessor<T, Self>,
        store: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, KvError> {
        let on = accessor.with(|mut access| access.get().detach(&store))?;
        on.calls().get(on.store, key).await
    }

    async fn set(
        accessor: &Accessor<T, Self>,
        store: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), KvError> {
        let on = accessor.with(|mut access| access.get().detach(&store))?;
        on.calls().set(on.store, key, value).await
    }

    async fn delete(
        accessor: &Accessor<T, Self>,
        store: Resource<Bucket>,
        key: String,
    ) -> Result<(), KvError> {
        let on = accessor.with(|mut access| access.get().detach(&store))?;
        on.calls().delete(on.store, key).await
    }

    async fn exists(
        accessor: &Accessor<T, Self>,
        store: Resource<Bucket>,
        key: String,
    ) -> Result<bool, KvError> {
        let on = accessor.with(|mut access| access.get().detach(&store))?;
        on.calls().exists(on.store, key).await
    }

    /// Every key, listed before the stream starts (bounded like the 2.0.0
    /// list), then streamed; a failure is the stream's closing result.
    async fn get_keys(
        accessor: &Accessor<T, Self>,
        store: Resource<Bucket>,
    ) -> wasmtime::Result<(StreamReader<String>, FutureReader<Result<(), spin3::Error>>)> {
        let listed = match accessor.with(|mut access| access.get().detach(&store)) {
            Ok(on) => on.calls().all_keys(on.store).await,
            Err(err) => Err(err),
        };
        accessor.with(|mut access| {
            let (keys, result) = match listed {
                Ok(keys) => (keys, Ok(())),
                Err(err) => (
                    Vec::new(),
                    Err(spin3::Host::convert_error(&mut access.get(), err)?),
                ),
            };
            let keys = StreamReader::new(&mut access, keys)?;
            let result =
                FutureReader::new(&mut access, async { Ok::<_, wasmtime::Error>(result) })?;
            Ok((keys, result))
        })
    }
}
