//! What is particular to WASI 0.2 guests (`wasi:http/incoming-handler`):
//! the request and the response outparam are resources in the store, and
//! the guest sets its response head through the outparam, then writes the
//! body through wasi:io streams while its call goes on.

use bytes::Bytes;
use hyper::Request;
use hyper::body::Body;
use tokio::sync::oneshot;
use wasmtime::component::Resource;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{
    ErrorCode, IncomingRequest, ResponseOutparam, Scheme,
};
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};

use super::kind::{Head, Kind};
use super::state::RequestState;

/// The WASI 0.2 kind of guest.
pub struct P2;

/// A request handed to the store, ready for the guest's call.
pub struct Prepared {
    request: Resource<IncomingRequest>,
    response_out: Resource<ResponseOutparam>,
}

impl Kind for P2 {
    type Pre = ProxyPre<RequestState>;
    type Instance = Proxy;
    type Prepared = Prepared;
    type ErrorCode = ErrorCode;

    const NAME: &'static str = "WASI 0.2 (wasi:http/incoming-handler)";

    fn engine(pre: &Self::Pre) -> &Engine {
        pre.engine()
    }

    async fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<RequestState>,
    ) -> wasmtime::Result<Proxy> {
        pre.instantiate_async(store).await
    }

    /// The head's sender lives in the store (the response outparam).
    fn prepare<B>(
        store: &mut Store<RequestState>,
        request: Request<B>,
    ) -> Result<(Prepared, Head<ErrorCode>), String>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let (head_sender, head) = oneshot::channel();
        let scheme = match crate::http::scheme_of(&request) {
            "https" => Scheme::Https,
            _ => Scheme::Http,
        };
        let mut http = store.data_mut().http();
        let request = http
            .new_incoming_request(scheme, request)
            .map_err(|err| format!("{err}"))?;
        let response_out = http
            .new_response_outparam(head_sender)
            .map_err(|err| format!("creating response-outparam: {err:#}"))?;
        Ok((
            Prepared {
                request,
                response_out,
            },
            Head(head),
        ))
    }

    async fn call(
        proxy: Proxy,
        prepared: Prepared,
        store: &mut Store<RequestState>,
    ) -> wasmtime::Result<()> {
        proxy
            .wasi_http_incoming_handler()
            .call_handle(store, prepared.request, prepared.response_out)
            .await
    }
}
