//! What is particular to WASI 0.3 guests (`wasi:http/handler`): `handle` is
//! an async function that returns the response, whose body is a stream the
//! guest may go on writing after it returned. The store's event loop
//! (`run_concurrent`) moves that stream to the client, so the call runs
//! until the guest has nothing left to do, not just until `handle` returns.

use std::future::poll_fn;
use std::pin::Pin;

use bytes::Bytes;
use hyper::body::Body;
use hyper::header;
use hyper::http::uri::{self, Authority, Scheme};
use hyper::{Request, Response};
use tokio::sync::oneshot;
use wasmtime::component::Accessor;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::p3::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::p3::bindings::{Service, ServicePre};

use super::kind::{Head, Kind};
use super::state::RequestState;

/// The WASI 0.3 kind of guest.
pub struct P3;

/// A request converted for the guest, ready for its call.
pub struct Prepared {
    request: wasmtime_wasi_http::p3::Request,
    /// Resolves with the request body's transfer result; the response is
    /// tied to it, as wasi:http specifies.
    request_io:
        Pin<Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send + 'static>>,
    head: oneshot::Sender<Result<Response<HyperOutgoingBody>, ErrorCode>>,
}

impl Kind for P3 {
    type Pre = ServicePre<RequestState>;
    type Instance = Service;
    type Prepared = Prepared;
    type ErrorCode = ErrorCode;

    const NAME: &'static str = "WASI 0.3 (wasi:http/handler)";

    fn engine(pre: &Self::Pre) -> &Engine {
        pre.engine()
    }

    async fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<RequestState>,
    ) -> wasmtime::Result<Service> {
        pre.instantiate_async(store).await
    }

    /// The request's authority comes from the URI, or else from the `Host`
    /// header, as a 0.2 guest's does. The head's sender goes with the call.
    fn prepare<B>(
        store: &mut Store<RequestState>,
        request: Request<B>,
    ) -> Result<(Prepared, Head<ErrorCode>), String>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let scheme = match crate::http::scheme_of(&request) {
            "https" => Scheme::HTTPS,
            _ => Scheme::HTTP,
        };
        let (mut parts, body) = request.into_parts();
        if parts.uri.authority().is_none() || parts.uri.scheme() != Some(&scheme) {
            let mut uri = uri::Parts::from(parts.uri);
            if uri.authority.is_none() {
                let authority = parts
                    .headers
                    .get(header::HOST)
                    .and_then(|host| Authority::try_from(host.as_bytes()).ok())
                    .ok_or("the request has neither an absolute URI nor a valid `Host` header")?;
                uri.authority = Some(authority);
            }
            uri.scheme = Some(scheme);
            if uri.path_and_query.is_none() {
                uri.path_and_query = Some(uri::PathAndQuery::from_static("/"));
            }
            parts.uri = hyper::Uri::from_parts(uri).map_err(|err| err.to_string())?;
        }
        let hooks = store.data_mut().http().hooks;
        let (request, request_io) =
            wasmtime_wasi_http::p3::Request::from_http(hooks, Request::from_parts(parts, body));
        let (head_sender, head) = oneshot::channel();
        Ok((
            Prepared {
                request,
                request_io: Box::pin(request_io),
                head: head_sender,
            },
            Head(head),
        ))
    }

    /// Calls the guest's `handle`, hands its response to the client, and
    /// runs the store until the guest is done (its body written, its
    /// spawned tasks ended).
    async fn call(
        service: Service,
        prepared: Prepared,
        store: &mut Store<RequestState>,
    ) -> wasmtime::Result<()> {
        let Prepared {
            request,
            request_io,
            head,
        } = prepared;
        store
            .run_concurrent(async move |accessor: &Accessor<RequestState>| {
                match service.handle(accessor, request).await? {
                    Ok(response) => {
                        let response = accessor
                            .with(|mut store| response.into_http(&mut store, request_io))?;
                        let _ = head.send(Ok(response));
                    }
                    Err(code) => {
                        let _ = head.send(Err(code));
                    }
                }
                poll_fn(|cx| accessor.poll_no_interesting_tasks(cx)).await;
                wasmtime::Result::<()>::Ok(())
            })
            .await?
    }
}
