//! Calls inside an application: a component's request to
//! `http://NAME.spin.internal` or `http://self`, served in process by the
//! component it names or routes to, never on the network.

use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode};
use wasmtime_wasi_http::WasiBody;

use super::{App, routes};
use crate::guest::response::{self, ResponseBody};
use crate::imports::http_hooks::{Internal, InternalCall};

impl Internal for App {
    /// Serves a request to `NAME.spin.internal` with the component `NAME`,
    /// private or not, as Spin does.
    fn call(&self, name: &str, mut request: Request<WasiBody>) -> Option<InternalCall> {
        let component = self.names.iter().position(|known| known == name)?;
        let uri = request.uri().clone();
        routes::set_internal_headers(request.headers_mut(), &uri);
        let runner = self.runners[component].clone();
        Some(Box::pin(
            async move { to_caller(runner.handle(request).await) },
        ))
    }

    /// Serves a request to `http://self` with the component its path routes
    /// to, private ones left out, as Spin does; 404 when none.
    fn route(&self, mut request: Request<WasiBody>) -> InternalCall {
        let uri = request.uri().clone();
        let runner = self.routes.as_ref().and_then(|routes| {
            let matched = routes.find(uri.path())?;
            let scheme = uri.scheme_str().unwrap_or("http");
            matched.set_headers(request.headers_mut(), &uri, scheme, None);
            Some(self.runners[matched.component].clone())
        });
        Box::pin(async move {
            to_caller(match runner {
                Some(runner) => runner.handle(request).await,
                None => response::plain(StatusCode::NOT_FOUND, "Not Found\n", None),
            })
        })
    }
}

/// A component's response as its calling guest reads it: an error in its
/// body ends the caller's response as a cut-off one.
fn to_caller(response: Response<ResponseBody>) -> Response<WasiBody> {
    response.map(|body| {
        body.map_err(|_| wasmtime_wasi_http::Error::HttpResponseIncomplete)
            .boxed_unsync()
    })
}
