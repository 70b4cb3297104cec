//! Spin's own key-value interfaces over [`Calls`]: `fermyon:spin/key-value@2.0.0`
//! (spin-sdk 2 to 5, the JS and Python SDKs) and `spin:key-value@3.0.0`
//! (spin-sdk 7), whose functions are `async` and whose `get-keys` streams.
//! Both list every key in one answer, which [`Calls::all_keys`] bounds.

use wasmtime::component::{Accessor, FutureReader, Linker, Resource, StreamReader};

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

use bindings::fermyon::spin::key_value as spin2;
use bindings::spin::key_value::key_value as spin3;

impl spin2::Host for KeyValue<'_> {
    fn convert_error(&mut self, err: KvError) -> wasmtime::Result<spin2::Error> {
        Ok(match err {
            KvError::NoSuchStore => spin2::Error::NoSuchStore,
            KvError::Other(reason) => spin2::Error::Other(reason),
        })
    }
}

impl spin2::HostStore for KeyValue<'_> {
    async fn open(&mut self, label: String) -> Result<Resource<Bucket>, KvError> {
        KeyValue::open(self, &label)
    }

    async fn get(
        &mut self,
        store: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, KvError> {
        self.calls().get(self.bucket(&store)?, key).await
    }

    async fn set(
        &mut self,
        store: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), KvError> {
        self.calls().set(self.bucket(&store)?, key, value).await
    }

    async fn delete(&mut self, store: Resource<Bucket>, key: String) -> Result<(), KvError> {
        self.calls().delete(self.bucket(&store)?, key).await
    }

    async fn exists(&mut self, store: Resource<Bucket>, key: String) -> Result<bool, KvError> {
        self.calls().exists(self.bucket(&store)?, key).await
    }

    async fn get_keys(&mut self, store: Resource<Bucket>) -> Result<Vec<String>, KvError> {
        self.calls().all_keys(self.bucket(&store)?).await
    }

    async fn drop(&mut self, store: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(store)?;
        Ok(())
    }
}

impl spin3::Host for KeyValue<'_> {
    fn convert_error(&mut self, err: KvError) -> wasmtime::Result<spin3::Error> {
        Ok(match err {
            KvError::NoSuchStore => spin3::Error::NoSuchStore,
            KvError::Other(reason) => spin3::Error::Other(reason),
        })
    }
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

pub(super) fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    async_abi: bool,
    view: fn(&mut T) -> KeyValue<'_>,
) -> wasmtime::Result<()> {
    spin2::add_to_linker::<T, HasKeyValue>(linker, view)?;
    if async_abi {
        spin3::add_to_linker::<T, HasKeyValue>(linker, view)?;
    }
    Ok(())
}
