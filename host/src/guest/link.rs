//! Linking, done once per component: its imports resolved against WASI
//! 0.2 and 0.3, wasi:http, and the key-value and variables interfaces of
//! wasmtime and Spin, its handler export
//! found, so that per request only instantiation is left.

use std::path::Path;

use wasmtime::component::{Component, ComponentNamedList, Lift, Linker, LinkerInstance, Resource};
use wasmtime::error::Context;
use wasmtime::{Result, StoreContextMut, bail};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

use super::loaded::Guest;
use super::state::RequestState;
use crate::compile::{self, Abi, Engines};
use crate::imports::http_hooks::{MAX_AUTHORITY, MAX_METHOD};

/// Compiles the component at `path` (or loads it from `cache_dir`) and
/// links it: what startup and every reload do.
pub fn load(engines: &Engines, path: &Path, cache_dir: Option<&Path>) -> Result<Guest> {
    let compiled = compile::compile(engines, path, cache_dir)?;
    link(&compiled.component, compiled.abi)
        .with_context(|| format!("cannot serve {}", path.display()))
}

/// Links `component` against all of WASI 0.2 and 0.3 plus wasi:http and
/// resolves its handler export, so that per request only instantiation is
/// left. A component exporting `wasi:http/handler@0.3.x` is served as WASI
/// 0.3, one exporting `wasi:http/incoming-handler@0.2.x` as WASI 0.2.
pub fn link(component: &Component, abi: Abi) -> Result<Guest> {
    let mut linker = Linker::new(component.engine());
    // All of WASI 0.2 (and 0.3 on its engine), as `wasmtime serve -S cli`
    // links them: a plain std build imports `wasi:cli/environment` and
    // friends.
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    if abi == Abi::Async {
        wasmtime_wasi::p3::add_to_linker(&mut linker)?;
        wasmtime_wasi_http::p3::add_to_linker(&mut linker)?;
    }
    // Configuration and state, as `wasmtime serve -S config -S keyvalue`
    // and Spin give them: components built for those import them.
    crate::imports::variables::add_to_linker(&mut linker, abi == Abi::Async, RequestState::config)?;
    crate::imports::keyvalue::add_to_linker(
        &mut linker,
        abi == Abi::Async,
        RequestState::keyvalue,
    )?;
    bound_request_strings(&mut linker, abi)?;
    crate::imports::spin_only::refuse(component)?;
    let pre = linker
        .instantiate_pre(component)
        .context("the component imports something this server does not provide")?;
    if let Ok(service) = ServicePre::new(pre.clone()) {
        return Ok(Guest::P3(service.into()));
    }
    match ProxyPre::new(pre) {
        Ok(proxy) => Ok(Guest::P2(proxy.into())),
        Err(_) => bail!(
            "the component exports neither `wasi:http/handler@0.3.x` (WASI 0.3) nor \
             `wasi:http/incoming-handler@0.2.x` (WASI 0.2)"
        ),
    }
}

/// The `wasi:http/types` versions our linker provides (wasmtime-wasi-http's
/// WIT); older guests of each are matched to them.
const WASI_HTTP_TYPES_P2: &str = "wasi:http/types@0.2.12";
const WASI_HTTP_TYPES_P3: &str = "wasi:http/types@0.3.0";

/// Replaces the setters of an outgoing request's method and authority, in
/// WASI 0.2 and 0.3, with versions that refuse a method longer than
/// [`MAX_METHOD`] or an authority longer than [`MAX_AUTHORITY`], as they
/// refuse invalid ones. wasi:http keeps both strings as given, so without
/// this a guest could make the host hold its whole linear memory per request
/// resource, outside any budget.
fn bound_request_strings(linker: &mut Linker<RequestState>, abi: Abi) -> Result<()> {
    use wasmtime_wasi_http::p2::bindings::http::types as p2;
    use wasmtime_wasi_http::p3::Request as P3Request;
    use wasmtime_wasi_http::p3::bindings::http::types as p3;

    let long_p2_method =
        |method: &p2::Method| matches!(method, p2::Method::Other(m) if m.len() > MAX_METHOD);
    let long_p3_method =
        |method: &p3::Method| matches!(method, p3::Method::Other(m) if m.len() > MAX_METHOD);
    let long_authority =
        |authority: &Option<String>| authority.as_ref().is_some_and(|a| a.len() > MAX_AUTHORITY);

    linker.allow_shadowing(true);
    let mut types = linker.instance(WASI_HTTP_TYPES_P2)?;
    refuse_long::<p2::OutgoingRequest, _>(
        &mut types,
        "[method]outgoing-request.set-method",
        long_p2_method,
        |http, request, method| p2::HostOutgoingRequest::set_method(http, request, method),
    )?;
    refuse_long::<p2::OutgoingRequest, _>(
        &mut types,
        "[method]outgoing-request.set-authority",
        long_authority,
        |http, request, authority| p2::HostOutgoingRequest::set_authority(http, request, authority),
    )?;
    if abi == Abi::Sync {
        linker.allow_shadowing(false);
        return Ok(());
    }
    let mut types = linker.instance(WASI_HTTP_TYPES_P3)?;
    refuse_long::<P3Request, _>(
        &mut types,
        "[method]request.set-method",
        long_p3_method,
        |http, request, method| p3::HostRequest::set_method(http, request, method),
    )?;
    refuse_long::<P3Request, _>(
        &mut types,
        "[method]request.set-authority",
        long_authority,
        |http, request, authority| p3::HostRequest::set_authority(http, request, authority),
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A wasi:http setter as wasmtime-wasi-http implements it: `Err(())` for a
/// value it refuses.
type Setter<R, A> =
    fn(&mut WasiHttpCtxView<'_>, Resource<R>, A) -> Result<std::result::Result<(), ()>>;

/// Defines `name` in `types` as a setter that answers `Err(())` (what
/// wasi:http answers for an invalid value) when `too_long(value)`, and calls
/// wasmtime-wasi-http's own `set` otherwise.
fn refuse_long<R, A>(
    types: &mut LinkerInstance<'_, RequestState>,
    name: &str,
    too_long: fn(&A) -> bool,
    set: Setter<R, A>,
) -> Result<()>
where
    R: 'static,
    A: 'static,
    (Resource<R>, A): ComponentNamedList + Lift + Send + Sync + 'static,
{
    types.func_wrap(
        name,
        move |mut store: StoreContextMut<'_, RequestState>, (target, value): (Resource<R>, A)| {
            if too_long(&value) {
                return Ok((Err(()),));
            }
            Ok((set(&mut store.data_mut().http(), target, value)?,))
        },
    )
}
