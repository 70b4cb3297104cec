//! A component ready to instantiate, of the kind it was found to be when
//! linked: every match on the kind outside the request path is here.

use std::sync::Arc;

use wasmtime::{Engine, Store};

use super::kind::Kind;
use super::p2::P2;
use super::p3::P3;
use super::state::RequestState;

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
            Guest::P2(pre) => P2::instantiate(pre, store).await.map(drop),
            Guest::P3(pre) => P3::instantiate(pre, store).await.map(drop),
        }
    }
}
