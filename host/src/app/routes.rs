//! Which component of an application answers a path, as Spin decides it:
//! the `routefinder` crate at the version Spin uses, routes written as Spin
//! writes them (`/exact`, `/:name` segments, a trailing `/...` wildcard), an
//! exact route before a wildcard and the longest prefix first, the last of
//! two identical routes winning, private components left out. The table is
//! built once per load, indexed by a route's first segment so that a request
//! tries only the routes that can match its path, however many there are.
//!
//! A routed request carries the headers Spin sets (`spin-full-url`,
//! `spin-path-info`, ...), which Spin's SDK routers read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Uri};

use crate::metrics::{METRICS, Served};

/// A route as the manifest gives it, for the component at `component`.
pub struct Route<'a> {
    pub route: &'a str,
    pub component: usize,
}

/// What a route leads to.
struct Target {
    component: usize,
    /// The route as written, made absolute without a trailing slash (Spin's
    /// "based" route, with the base `/`).
    based: String,
    /// The route as written in the manifest.
    raw: String,
    /// Its request counts and names, for metrics and the access log.
    served: Arc<Served>,
}

/// One routefinder table.
type Router = routefinder::Router<Arc<Target>>;

/// The routing table. routefinder tries a table's routes one by one, so a
/// single table of N routes costs every request N tries; here a path's first
/// segment picks a table holding the few routes that can match it.
pub struct Routes {
    /// For each first segment a route spells out: its routes, and every
    /// route that starts with `:name` or the wildcard.
    by_first: HashMap<String, Router>,
    /// The routes that start with `:name` or the wildcard, for a path whose
    /// first segment no route spells out.
    open: Router,
}

/// A path matched to its component.
pub struct Matched<'r, 'p> {
    pub component: usize,
    target: &'r Target,
    captures: routefinder::Captures<'r, 'p>,
    path: &'p str,
}

impl Routes {
    /// The table for `routes`; a route that cannot be parsed fails the load
    /// with its component's name (from `name`).
    pub fn new<'a>(
        routes: impl IntoIterator<Item = Route<'a>>,
        name: impl Fn(usize) -> String,
    ) -> Result<Self, String> {
        // Later duplicates replace earlier ones, as in Spin.
        let mut unique: Vec<Route<'a>> = Vec::new();
        for route in routes {
            unique.retain(|seen| seen.route != route.route);
            unique.push(route);
        }
        let mut specs = Vec::new();
        for Route { route, component } in unique {
            let based = based(route);
            // `/...` is Spin's spelling of routefinder's `/*`.
            let spec = match based.strip_suffix("/...") {
                Some(prefix) => format!("{prefix}/*"),
                None => based.clone(),
            };
            let component_name = name(component);
            let target = Target {
                component,
                based,
                raw: route.to_string(),
                served: Arc::new(METRICS.route(&component_name, route)),
            };
            // Parsed alone first, so that a bad route is named with its
            // component whichever tables it goes into.
            routefinder::Router::new()
                .add(spec.as_str(), ())
                .map_err(|err| format!("route `{route}` of component `{component_name}`: {err}"))?;
            specs.push((spec, Arc::new(target)));
        }
        let table = |first: Option<&str>| {
            let mut router = Router::new();
            for (spec, target) in &specs {
                let own = first_segment(spec);
                if own.is_none() || own == first {
                    // Parsed above: adding cannot fail.
                    let _ = router.add(spec.as_str(), target.clone());
                }
            }
            router
        };
        let firsts: std::collections::HashSet<&str> = specs
            .iter()
            .filter_map(|(spec, _)| first_segment(spec))
            .collect();
        Ok(Self {
            by_first: firsts
                .into_iter()
                .map(|first| (first.to_string(), table(Some(first))))
                .collect(),
            open: table(None),
        })
    }

    /// The component for `path`, if a route matches it.
    pub fn find<'r, 'p>(&'r self, path: &'p str) -> Option<Matched<'r, 'p>> {
        let router = first_segment(path)
            .and_then(|first| self.by_first.get(first))
            .unwrap_or(&self.open);
        let best = router.best_match(path)?;
        let target = &**best.handler();
        Some(Matched {
            component: target.component,
            target,
            captures: best.captures(),
            path,
        })
    }
}

/// The first segment of a route spec or a path, as routefinder splits them
/// (leading slashes dropped, up to the next `/` or `.`); `None` when it is
/// a `:name` or the wildcard, which match any.
fn first_segment(path: &str) -> Option<&str> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    let first = trimmed.split(['/', '.']).next().unwrap_or_default();
    (!first.starts_with([':', '*'])).then_some(first)
}

/// `route` absolute and without one trailing slash, as Spin bases it.
fn based(route: &str) -> String {
    let absolute = if route.starts_with('/') {
        route.to_string()
    } else {
        format!("/{route}")
    };
    match absolute.strip_suffix('/') {
        Some(stripped) => stripped.to_string(),
        None => absolute,
    }
}

impl Matched<'_, '_> {
    /// The route's counts and names.
    pub fn served(&self) -> &Arc<Served> {
        &self.target.served
    }

    /// The part of the path the trailing wildcard took, with its slashes as
    /// the client wrote them (`spin-path-info`).
    pub fn path_info(&self) -> String {
        let Some(wildcard) = self.captures.wildcard() else {
            return String::new();
        };
        match (wildcard.is_empty(), self.path.ends_with('/')) {
            (true, false) => String::new(),
            (true, true) => "/".into(),
            (false, false) => format!("/{wildcard}"),
            (false, true) => format!("/{wildcard}/"),
        }
    }

    /// Sets on `headers` what Spin tells a routed component about its
    /// request (which came with `scheme`), replacing any a client sent
    /// under those names.
    pub fn set_headers(
        &self,
        headers: &mut HeaderMap,
        uri: &Uri,
        scheme: &str,
        client: Option<SocketAddr>,
    ) {
        let spin = Spin {
            path_info: &self.path_info(),
            based: &self.target.based,
            raw: &self.target.raw,
            scheme,
            client,
        };
        spin.set(headers, uri, self.captures.iter());
    }
}

/// A request to `NAME.spin.internal`: Spin routes it to the component as if
/// matched by `/...`, the whole path its path info.
pub fn set_internal_headers(headers: &mut HeaderMap, uri: &Uri) {
    let spin = Spin {
        path_info: uri.path(),
        based: "/...",
        raw: "/...",
        scheme: uri.scheme_str().unwrap_or("http"),
        client: None,
    };
    spin.set(headers, uri, std::iter::empty());
}

/// The values of Spin's request headers.
struct Spin<'a> {
    path_info: &'a str,
    based: &'a str,
    raw: &'a str,
    scheme: &'a str,
    client: Option<SocketAddr>,
}

impl Spin<'_> {
    fn set<'c>(
        &self,
        headers: &mut HeaderMap,
        uri: &Uri,
        captures: impl Iterator<Item = (&'c str, &'c str)>,
    ) {
        let host = headers
            .get(hyper::header::HOST)
            .and_then(|host| host.to_str().ok())
            .or_else(|| uri.authority().map(|authority| authority.as_str()))
            .unwrap_or("localhost")
            .to_string();
        let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let component_route = self.raw.strip_suffix("/...").unwrap_or(self.raw);
        let mut set = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::try_from(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        };
        set("spin-path-info", self.path_info);
        set(
            "spin-full-url",
            &format!("{}://{host}{path_and_query}", self.scheme),
        );
        set("spin-matched-route", self.based);
        set("spin-base-path", "/");
        set("spin-raw-component-route", self.raw);
        set("spin-component-route", component_route);
        if let Some(client) = self.client {
            set("spin-client-addr", &client.to_string());
        }
        for (name, value) in captures {
            let name = format!("spin-path-match-{}", name.to_ascii_lowercase());
            if let (Ok(name), Ok(value)) =
                (HeaderName::try_from(name), HeaderValue::try_from(value))
            {
                headers.insert(name, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table for `(route, component)` pairs.
    fn routes(pairs: &[(&str, usize)]) -> Routes {
        Routes::new(
            pairs
                .iter()
                .map(|&(route, component)| Route { route, component }),
            |component| component.to_string(),
        )
        .unwrap()
    }

    fn component(routes: &Routes, path: &str) -> Option<usize> {
        routes.find(path).map(|matched| matched.component)
    }

    /// The index by first segment picks, for every path, the route one
    /// routefinder table of all routes picks.
    #[test]
    fn the_index_finds_what_one_table_finds() {
        let pairs = [
            ("/", 0),
            ("/...", 1),
            ("/api/...", 2),
            ("/api/users/:id", 3),
            ("/:tenant/settings", 4),
            ("/static/...", 5),
            ("/file.txt", 6),
            ("/file", 7),
            ("/api", 8),
        ];
        let table = routes(&pairs);
        let mut whole = routefinder::Router::new();
        for (route, component) in pairs {
            let spec = based(route).replace("/...", "/*");
            whole.add(spec.as_str(), component).unwrap();
        }
        for path in [
            "/",
            "//",
            "/api",
            "/api/",
            "/api/users/7",
            "/api/users/7/x",
            "/acme/settings",
            "/api/settings",
            "/static/a/b.css",
            "/file.txt",
            "/file",
            "/file.json",
            "/other",
            "//api//users/7",
            "/%61pi/x",
            "/:tenant/settings",
            "/a.b/c",
        ] {
            let indexed = table.find(path).map(|matched| matched.component);
            let expected = whole.best_match(path).map(|best| *best.handler());
            assert_eq!(indexed, expected, "{path}");
        }
    }

    #[test]
    fn exact_routes_match_only_themselves() {
        let table = routes(&[("/foo", 1), ("/foo/bar", 2)]);
        assert_eq!(component(&table, "/foo"), Some(1));
        assert_eq!(component(&table, "/foo/bar"), Some(2));
        assert_eq!(component(&table, "/foo/baz"), None);
        assert_eq!(component(&table, "/"), None);
    }

    #[test]
    fn a_wildcard_takes_everything_under_it() {
        let table = routes(&[("/...", 1)]);
        for path in ["/", "/abc/", "/foo/bar", "/this/should/be/captured"] {
            assert_eq!(component(&table, path), Some(1), "{path}");
        }
    }

    #[test]
    fn the_longest_prefix_wins_and_exact_beats_wildcard() {
        let table = routes(&[
            ("/one/...", 1),
            ("/one/two/...", 2),
            ("/one/two/three/...", 3),
            ("/one", 4),
        ]);
        assert_eq!(component(&table, "/one/two/three/four"), Some(3));
        assert_eq!(component(&table, "/one/two/x"), Some(2));
        assert_eq!(component(&table, "/one/x"), Some(1));
        assert_eq!(component(&table, "/one"), Some(4));
    }

    #[test]
    fn the_last_of_two_identical_routes_wins() {
        let table = routes(&[("/foo", 1), ("/foo", 2)]);
        assert_eq!(component(&table, "/foo"), Some(2));
    }

    #[test]
    fn a_trailing_slash_in_a_route_is_dropped_and_paths_may_carry_one() {
        let table = routes(&[("/foo/", 1)]);
        assert_eq!(component(&table, "/foo"), Some(1));
        assert_eq!(component(&table, "/foo/"), Some(1));
    }

    #[test]
    fn path_info_keeps_the_clients_slashes() {
        let table = routes(&[("/test/...", 1)]);
        let info = |path| table.find(path).unwrap().path_info();
        assert_eq!(info("/test"), "");
        assert_eq!(info("/test/"), "/");
        assert_eq!(info("/test/hello"), "/hello");
        assert_eq!(info("/test/hello/"), "/hello/");
        let table = routes(&[("/...", 1)]);
        assert_eq!(table.find("/1/2/3").unwrap().path_info(), "/1/2/3");
    }

    #[test]
    fn named_segments_are_captured_into_headers() {
        let table = routes(&[("/users/:id/...", 1)]);
        let matched = table.find("/users/42/posts").unwrap();
        let mut headers = HeaderMap::new();
        let uri: Uri = "/users/42/posts?x=1".parse().unwrap();
        headers.insert("host", "app.test:3000".parse().unwrap());
        headers.insert("spin-path-info", "forged by the client".parse().unwrap());
        matched.set_headers(&mut headers, &uri, "http", "127.0.0.1:5555".parse().ok());
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_string();
        assert_eq!(header("spin-path-match-id"), "42");
        assert_eq!(header("spin-path-info"), "/posts");
        assert_eq!(
            header("spin-full-url"),
            "http://app.test:3000/users/42/posts?x=1"
        );
        assert_eq!(header("spin-matched-route"), "/users/:id/...");
        assert_eq!(header("spin-raw-component-route"), "/users/:id/...");
        assert_eq!(header("spin-component-route"), "/users/:id");
        assert_eq!(header("spin-base-path"), "/");
        assert_eq!(header("spin-client-addr"), "127.0.0.1:5555");
    }

    #[test]
    fn percent_encoded_paths_are_matched_as_sent() {
        let table = routes(&[("/a%20b", 1), ("/static/...", 2)]);
        assert_eq!(component(&table, "/a%20b"), Some(1));
        assert_eq!(component(&table, "/a b"), None);
        let matched = table.find("/static/x%2Fy").unwrap();
        assert_eq!(matched.path_info(), "/x%2Fy");
    }

    /// A route over the root (`/`) is the route `""`, as in Spin.
    #[test]
    fn the_root_route_matches_the_root_only() {
        let table = routes(&[("/", 1)]);
        assert_eq!(component(&table, "/"), Some(1));
        assert_eq!(component(&table, "/x"), None);
    }
}
