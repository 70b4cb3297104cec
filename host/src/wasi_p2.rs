//! What is particular to WASI 0.2 guests (`wasi:http/incoming-handler`):
//! the request and the response outparam are resources in the store, and
//! the guest sets its response head through the outparam, then writes the
//! body through wasi:io streams while its call goes on.

use hyper::body::Body;
use hyper::{Request, Response};
use tokio::sync::oneshot;
use wasmtime::Store;
use wasmtime::component::Resource;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{
    ErrorCode, IncomingRequest, ResponseOutparam, Scheme,
};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::state::RequestState;

/// Where the guest's response head arrives; its sender lives in the store,
/// so it also resolves (with an error) when the store is dropped.
pub type Head = oneshot::Receiver<Result<Response<HyperOutgoingBody>, ErrorCode>>;

/// A request handed to the store, ready for the guest's call.
pub struct Prepared {
    request: Resource<IncomingRequest>,
    response_out: Resource<ResponseOutparam>,
}

/// Puts `request` and a response outparam into `store`. Fails with the
/// reason the request cannot be given to a guest (in practice: neither an
/// absolute URI nor a `Host` header).
pub fn prepare<B>(
    store: &mut Store<RequestState>,
    request: Request<B>,
) -> Result<(Prepared, Head), String>
where
    B: Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let (head_sender, head) = oneshot::channel();
    let mut http = store.data_mut().http();
    let request = http
        .new_incoming_request(Scheme::Http, request)
        .map_err(|err| format!("{err}"))?;
    let response_out = http
        .new_response_outparam(head_sender)
        .map_err(|err| format!("creating response-outparam: {err:#}"))?;
    Ok((
        Prepared {
            request,
            response_out,
        },
        head,
    ))
}

impl Prepared {
    /// Instantiates `pre` in `store` and runs the guest's `handle` to its end.
    pub async fn run(
        self,
        pre: &ProxyPre<RequestState>,
        store: &mut Store<RequestState>,
    ) -> wasmtime::Result<()> {
        let started = std::time::Instant::now();
        let proxy = pre.instantiate_async(&mut *store).await?;
        crate::metrics::METRICS.instantiated(started.elapsed());
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut *store, self.request, self.response_out)
            .await
    }
}
