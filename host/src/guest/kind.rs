//! The one place WASI 0.2 and WASI 0.3 guests differ: a [`Guest`] is one
//! or the other, found once when the component is linked, and a request is
//! served by one generic path ([`super::runner`]) over what differs: the
//! [`Kind`] trait, implemented by [`super::p2::P2`] and [`super::p3::P3`].
//!
//! wasmtime-wasi-http has this choice too (`handler::ProxyPre`), for its
//! `ProxyHandler`, which reuses an instance for many requests; this server
//! never does (a fresh instance per request), so it keeps its own pair.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::Body;
use hyper::{Request, Response};
use tokio::sync::oneshot;
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::p2::P2;
use super::p3::P3;
use super::state::RequestState;

/// What differs between the two kinds of guest on the request path.
pub trait Kind: Send + Sync + 'static {
    /// The component, compiled and linked, its handler export resolved.
    type Pre: Send + Sync + 'static;
    /// The request handed to the store, ready for the guest's call.
    type Prepared: Send + 'static;
    /// The wasi:http error code a guest may answer with instead of a
    /// response.
    type ErrorCode: fmt::Debug + Send + 'static;

    /// Which WASI the component is written for, for the log.
    const NAME: &'static str;

    fn engine(pre: &Self::Pre) -> &Engine;

    /// Instantiates `pre` in `store` and drops the instance: the trial at
    /// startup and reload.
    fn instantiate(
        pre: &Self::Pre,
        store: &mut Store<RequestState>,
    ) -> impl Future<Output = wasmtime::Result<()>> + Send;

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

    /// Instantiates `pre` in `store` and runs the guest's call to its end.
    fn run(
        prepared: Self::Prepared,
        pre: &Self::Pre,
        store: &mut Store<RequestState>,
    ) -> impl Future<Output = wasmtime::Result<()>> + Send;
}

/// A component ready to instantiate, of the kind it was found to be.
#[derive(Clone)]
pub enum Guest {
    /// Exports `wasi:http/incoming-handler@0.2.x`.
    P2(Arc<<P2 as Kind>::Pre>),
    /// Exports `wasi:http/handler@0.3.x`.
    P3(Arc<<P3 as Kind>::Pre>),
}

impl Guest {
    /// Which WASI the component is written for, for the log.
    pub fn kind(&self) -> &'static str {
        match self {
            Guest::P2(_) => P2::NAME,
            Guest::P3(_) => P3::NAME,
        }
    }

    /// The engine the component was compiled for.
    pub fn engine(&self) -> &Engine {
        match self {
            Guest::P2(pre) => P2::engine(pre),
            Guest::P3(pre) => P3::engine(pre),
        }
    }

    /// Instantiates the component once in `store` and drops the instance.
    pub async fn instantiate(&self, store: &mut Store<RequestState>) -> wasmtime::Result<()> {
        match self {
            Guest::P2(pre) => P2::instantiate(pre, store).await,
            Guest::P3(pre) => P3::instantiate(pre, store).await,
        }
    }
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
