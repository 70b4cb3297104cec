//! What differs between WASI 0.2 and WASI 0.3 guests: the [`Kind`] trait,
//! implemented by `P2` (`p2.rs`) and `P3` (`p3.rs`). A component is one or
//! the other (a `Guest`, `loaded.rs`), found once when it is linked; a
//! request is matched on it once (`runner.rs`) and then served by one path,
//! generic over its kind.
//!
//! wasmtime-wasi-http has this choice too (`handler::ProxyPre` and
//! `Proxy`), made for its `ProxyHandler`, which reuses an instance for many
//! requests; this server never reuses one. Its enum is not used either: the
//! request path takes the kind's own pre-instance into the guest's task (an
//! `Arc`), typed, so that nothing matches on the kind again after the one
//! dispatch.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Body;
use hyper::{Request, Response};
use tokio::sync::oneshot;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::state::RequestState;

/// What differs between the two kinds of guest on the request path.
pub trait Kind: Send + Sync + 'static {
    /// The component, compiled and linked, its handler export resolved.
    type Pre: Send + Sync + 'static;
    /// One instance of it.
    type Instance: Send;
    /// The request handed to the store, ready for the guest's call.
    type Prepared: Send + 'static;
    /// The wasi:http error code a guest may answer with instead of a
    /// response.
    type ErrorCode: fmt::Debug + Send + 'static;

    /// Which WASI the component is written for, for the log.
    const NAME: &'static str;

    fn engine(pre: &Self::Pre) -> &Engine;

    /// A fresh instance of `pre` in `store`.
    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<RequestState>,
    ) -> impl Future<Output = wasmtime::Result<Self::Instance>> + Send;

    /// Hands `request` to `store`. Fails with the reason the request cannot
    /// be given to a guest (in practice: neither an absolute URI nor a
    /// `Host` header).
    fn prepare<B>(
        store: &mut Store<RequestState>,
        request: Request<B>,
    ) -> Result<(Self::Prepared, Head<Self::ErrorCode>), String>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>;

    /// Runs the guest's call on `instance` to its end.
    fn call(
        instance: Self::Instance,
        prepared: Self::Prepared,
        store: &mut Store<RequestState>,
    ) -> impl Future<Output = wasmtime::Result<()>> + Send;
}

/// Where the guest's response head arrives. Its sender goes with the store
/// or the call, so it also resolves (with an error) when the guest's call
/// ends without one.
pub struct Head<E>(pub oneshot::Receiver<Result<Response<HyperOutgoingBody>, E>>);

/// A response head, or the wasi:http error code the guest answered with
/// instead, as text; `Err` when the sender went without either.
pub type HeadResult =
    Result<Result<Response<HyperOutgoingBody>, String>, oneshot::error::RecvError>;

impl<E: fmt::Debug> Future for Head<E> {
    type Output = HeadResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<HeadResult> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|head| head.map(|head| head.map_err(|code| format!("{code:?}"))))
    }
}
