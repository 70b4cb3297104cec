//! A Spin application manifest (`spin.toml`, manifest version 2), read with
//! serde as Spin reads it: unknown keys refused where Spin refuses them. What
//! Spin would run but this server cannot serve is refused here, at startup,
//! with where it is and why, rather than half-served.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::files::FileEntry;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    spin_manifest_version: Spanned<toml::Value>,
    application: Application,
    #[serde(default)]
    variables: BTreeMap<String, Variable>,
    #[serde(default, rename = "trigger")]
    triggers: BTreeMap<Spanned<String>, Vec<toml::Table>>,
    #[serde(default, rename = "component")]
    components: BTreeMap<String, Component>,
}

/// The same text read again for its HTTP triggers, so that their values
/// keep where they are in the file (spans only come from the text).
#[derive(Deserialize)]
struct HttpTriggers {
    #[serde(default)]
    trigger: TriggerKinds,
}

#[derive(Default, Deserialize)]
struct TriggerKinds {
    #[serde(default)]
    http: Vec<HttpTrigger>,
}

/// `[application]`: only its name is used; the rest is Spin's tooling's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read for Spin's checks, not used
struct Application {
    name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    authors: Vec<String>,
    #[serde(default)]
    targets: Vec<toml::Value>,
    #[serde(default)]
    trigger: toml::Table,
    #[serde(default)]
    tool: toml::Table,
}

/// An application variable (`[variables]`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
}

/// One `[[trigger.http]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpTrigger {
    #[serde(default)]
    #[allow(dead_code)] // Spin's tooling names triggers; routing does not
    id: String,
    route: RouteConfig,
    component: Option<ComponentSpec>,
    executor: Option<Spanned<toml::Table>>,
    static_response: Option<Spanned<toml::Value>>,
    components: Option<Spanned<toml::Table>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RouteConfig {
    Route(String),
    Private(Private),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Private {
    private: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ComponentSpec {
    Reference(String),
    Inline(Box<Component>),
}

/// `[component.NAME]`, as Spin defines it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Component {
    source: toml::Value,
    #[serde(default)]
    #[allow(dead_code)] // for people
    description: String,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    #[serde(default)]
    files: Vec<toml::Value>,
    #[serde(default)]
    exclude_files: Vec<String>,
    #[serde(default)]
    allowed_http_hosts: Vec<String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
    #[serde(default)]
    sqlite_databases: Vec<String>,
    #[serde(default)]
    ai_models: Vec<String>,
    #[serde(default)]
    #[allow(dead_code)] // Spin's deployment targets
    targets: Option<Vec<toml::Value>>,
    #[serde(default)]
    #[allow(dead_code)] // `spin build`'s
    build: Option<toml::Table>,
    #[serde(default)]
    #[allow(dead_code)] // other tools'
    tool: toml::Table,
    #[serde(default)]
    #[allow(dead_code)] // only with dependencies, refused below
    dependencies_inherit_configuration: Option<bool>,
    #[serde(default)]
    dependencies: toml::Table,
}

/// An application as this server serves it.
#[derive(Debug)]
pub struct App {
    pub name: String,
    /// The folder holding the manifest, which its paths are relative to.
    pub root: PathBuf,
    pub variables: BTreeMap<String, Variable>,
    pub components: Vec<AppComponent>,
    /// Every public route, in manifest order, with its component's index.
    pub routes: Vec<(String, usize)>,
}

/// One component of the application.
#[derive(Debug)]
pub struct AppComponent {
    pub name: String,
    pub source: PathBuf,
    pub environment: Vec<(String, String)>,
    /// `[component.NAME.variables]`: templates over the application's.
    pub variables: BTreeMap<String, String>,
    pub files: Vec<FileEntry>,
    pub exclude_files: Vec<String>,
    pub allowed_outbound_hosts: Vec<String>,
    pub key_value_stores: Vec<String>,
}

/// Where the manifest of `path` is: the file itself, or `spin.toml` in the
/// folder `path` names; `None` when `path` is a component.
pub fn find(path: &Path) -> Option<PathBuf> {
    if path.is_dir() {
        return Some(path.join("spin.toml"));
    }
    (path.extension().is_some_and(|ext| ext == "toml")).then(|| path.to_path_buf())
}

/// Reads the manifest at `path`.
pub fn read(path: &Path) -> Result<App, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let parent = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty());
    let base = std::path::absolute(parent.unwrap_or(Path::new(".")))
        .map_err(|err| format!("{}: {err}", path.display()))?;
    parse(&text, &base).map_err(|err| format!("{}: {err}", path.display()))
}

/// The line of `[component.NAME]` in `text`, if it is written so.
fn header_line(text: &str, name: &str) -> Option<usize> {
    let plain = format!("[component.{name}]");
    let quoted = format!("[component.\"{name}\"]");
    text.lines()
        .position(|line| line.trim() == plain || line.trim() == quoted)
        .map(|index| index + 1)
}

/// A TOML error as one line with its place (toml's own `Display` draws the
/// line over several).
fn one_line(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().replace('\n', " ");
    match err.span() {
        Some(span) => format!("line {}: {message}", line(text, span.start)),
        None => message,
    }
}

/// The line of byte `offset` in `text`.
fn line(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn parse(text: &str, base: &Path) -> Result<App, String> {
    let document: Document = toml::from_str(text).map_err(|err| one_line(text, &err))?;
    let at = |span: std::ops::Range<usize>| format!("line {}", line(text, span.start));
    let version = &document.spin_manifest_version;
    if version.get_ref().as_integer() != Some(2) {
        return Err(format!(
            "{}: `spin_manifest_version` must be 2; manifests of version 1 are not served \
             (Spin's `spin doctor` upgrades them)",
            at(version.span())
        ));
    }
    // Spin mounts every route under `[application.trigger.http] base`; only
    // the root is served here, so another base is refused, not ignored.
    let http_base = document
        .application
        .trigger
        .get("http")
        .and_then(|http| http.get("base"));
    if let Some(other) = http_base.filter(|b| {
        b.as_str()
            .is_none_or(|b| !b.trim_end_matches('/').is_empty())
    }) {
        return Err(format!(
            "`[application.trigger.http] base = {other}` is not served: routes are served from `/`"
        ));
    }
    if let Some(kind) = document
        .triggers
        .keys()
        .find(|kind| kind.get_ref() != "http")
    {
        return Err(format!(
            "{}: `[[trigger.{}]]` is not served: this server answers HTTP only",
            at(kind.span()),
            kind.get_ref()
        ));
    }
    let http: HttpTriggers = toml::from_str(text).map_err(|err| one_line(text, &err))?;
    let mut declared: BTreeMap<String, Component> = document.components;
    let mut names: Vec<String> = Vec::new();
    let mut components: Vec<AppComponent> = Vec::new();
    let mut routes = Vec::new();
    for (index, trigger) in http.trigger.http.into_iter().enumerate() {
        if let Some(executor) = &trigger.executor {
            let kind = executor.get_ref().get("type").and_then(|t| t.as_str());
            if kind != Some("http") {
                return Err(format!(
                    "{}: the `{}` executor is not served: only wasi-http components are",
                    at(executor.span()),
                    kind.unwrap_or("?")
                ));
            }
        }
        if let Some(response) = &trigger.static_response {
            return Err(format!(
                "{}: `static_response` is not served",
                at(response.span())
            ));
        }
        if let Some(middleware) = trigger.components.filter(|c| !c.get_ref().is_empty()) {
            return Err(format!(
                "{}: trigger `components` (middleware) are not served",
                at(middleware.span())
            ));
        }
        let (name, header) = match trigger.component {
            Some(ComponentSpec::Reference(name)) => {
                let header = header_line(text, &name);
                (name, header)
            }
            Some(ComponentSpec::Inline(component)) => {
                let name = format!("inline-component-{}", index + 1);
                declared.insert(name.clone(), *component);
                (name, None)
            }
            None => {
                return Err(format!(
                    "`[[trigger.http]]` number {} names no component",
                    index + 1
                ));
            }
        };
        let component = match names.iter().position(|known| *known == name) {
            Some(known) => known,
            None => {
                let declaration = declared.remove(&name).ok_or_else(|| {
                    format!("a trigger names component `{name}`, which is not defined")
                })?;
                components.push(component(&name, declaration, base, header)?);
                names.push(name);
                components.len() - 1
            }
        };
        match trigger.route {
            RouteConfig::Route(route) => routes.push((route, component)),
            RouteConfig::Private(Private { private: true }) => {}
            RouteConfig::Private(Private { private: false }) => {
                return Err(format!(
                    "component `{}`: route must be a pattern or `{{ private = true }}`",
                    names[component]
                ));
            }
        }
    }
    if components.is_empty() {
        return Err("no `[[trigger.http]]`: nothing to serve".into());
    }
    for (name, variable) in &document.variables {
        if variable.required && variable.default.is_some() {
            return Err(format!(
                "variable `{name}`: a default and `required` exclude each other"
            ));
        }
    }
    Ok(App {
        name: document.application.name,
        root: base.to_path_buf(),
        variables: document.variables,
        components,
        routes,
    })
}

/// What a `files` entry is, as Spin reads it.
const FILES_FORM: &str =
    "a `files` entry is a path or glob, or `{ source = PATH, destination = PATH }`";

/// Checks `[component.NAME]` (at line `header`, when known) against what
/// is served, and makes its paths absolute.
fn component(
    name: &str,
    declared: Component,
    base: &Path,
    header: Option<usize>,
) -> Result<AppComponent, String> {
    let at = header.map_or(String::new(), |line| format!("line {line}: "));
    let refuse = |what: &str| Err(format!("{at}component `{name}`: {what}"));
    let source = match &declared.source {
        toml::Value::String(path) => base.join(path),
        _ => {
            return refuse(
                "`source` must be a local file: URL and registry sources are not fetched \
                 (download it and name the file)",
            );
        }
    };
    if !declared.sqlite_databases.is_empty() {
        return refuse("`sqlite_databases`: Spin's SQLite is not served");
    }
    if !declared.ai_models.is_empty() {
        return refuse("`ai_models`: Spin's LLM API is not served");
    }
    if !declared.dependencies.is_empty() {
        return refuse("component `dependencies` are not composed here");
    }
    let mut files = Vec::new();
    for file in &declared.files {
        files.push(match file {
            toml::Value::String(pattern) => FileEntry::Pattern(pattern.clone()),
            toml::Value::Table(table) if table.len() == 2 => {
                let get = |key: &str| table.get(key).and_then(|v| v.as_str());
                match (get("source"), get("destination")) {
                    (Some(source), Some(destination)) => FileEntry::Placement {
                        source: source.to_string(),
                        destination: destination.to_string(),
                    },
                    _ => return refuse(FILES_FORM),
                }
            }
            _ => return refuse(FILES_FORM),
        });
    }
    let mut allowed_outbound_hosts = declared.allowed_outbound_hosts;
    allowed_outbound_hosts.extend(
        declared
            .allowed_http_hosts
            .iter()
            .flat_map(|entry| from_http_host(entry)),
    );
    Ok(AppComponent {
        name: name.to_string(),
        source,
        environment: declared.environment.into_iter().collect(),
        variables: declared.variables,
        files,
        exclude_files: declared.exclude_files,
        allowed_outbound_hosts,
        key_value_stores: declared.key_value_stores,
    })
}

/// An entry of Spin 1's `allowed_http_hosts` (`example.com[:PORT]`, `self`,
/// `insecure:allow-all`) as the `allowed_outbound_hosts` entries Spin
/// converts it to.
fn from_http_host(entry: &str) -> Vec<String> {
    match entry {
        "insecure:allow-all" => vec![
            "http://*:*".into(),
            "https://*:*".into(),
            "http://self".into(),
        ],
        "self" => vec!["http://self".into()],
        host => {
            let host = host.split_once("://").map_or(host, |(_, rest)| rest);
            let host = host.trim_end_matches('/');
            vec![format!("http://{host}"), format!("https://{host}")]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(text: &str) -> Result<App, String> {
        parse(text, Path::new("/apps/demo"))
    }

    const HEAD: &str = "spin_manifest_version = 2\n[application]\nname = \"demo\"\n";

    #[test]
    fn reads_triggers_components_and_routes() {
        let app = app(&format!(
            "{HEAD}[variables]\ngreeting = {{ default = \"hi\" }}\ntoken = {{ required = true, secret = true }}\n\
             [[trigger.http]]\nroute = \"/\"\ncomponent = \"hello\"\n\
             [[trigger.http]]\nroute = \"/api/...\"\ncomponent = {{ source = \"api.wasm\", key_value_stores = [\"default\"] }}\n\
             [[trigger.http]]\nroute = {{ private = true }}\ncomponent = \"hidden\"\n\
             [component.hello]\nsource = \"hello.wasm\"\nenvironment = {{ A = \"1\" }}\nvariables = {{ message = \"{{{{ greeting }}}}\" }}\n\
             [component.hello.build]\ncommand = \"make\"\n\
             [component.hidden]\nsource = \"hidden.wasm\"\n"
        ))
        .unwrap();
        assert_eq!(app.name, "demo");
        let names: Vec<_> = app.components.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["hello", "inline-component-2", "hidden"]);
        assert_eq!(
            app.routes,
            [("/".to_string(), 0), ("/api/...".to_string(), 1)]
        );
        assert_eq!(app.components[0].source, Path::new("/apps/demo/hello.wasm"));
        assert_eq!(app.components[0].environment, [("A".into(), "1".into())]);
        assert_eq!(app.components[1].key_value_stores, ["default"]);
        assert!(app.variables["token"].secret);
    }

    #[test]
    fn spin_1_allowed_http_hosts_are_converted_as_spin_converts_them() {
        assert_eq!(
            from_http_host("example.com:8080"),
            ["http://example.com:8080", "https://example.com:8080"]
        );
        assert_eq!(from_http_host("self"), ["http://self"]);
        assert_eq!(
            from_http_host("insecure:allow-all"),
            ["http://*:*", "https://*:*", "http://self"]
        );
    }

    #[test]
    fn what_cannot_be_served_is_refused_with_its_line() {
        let cases = [
            (
                "[[trigger.redis]]\nchannel = \"x\"\ncomponent = \"c\"\n[component.c]\nsource = \"c.wasm\"\n",
                "line 4: `[[trigger.redis]]` is not served",
            ),
            (
                "[[trigger.http]]\nroute = \"/\"\ncomponent = \"c\"\nexecutor = { type = \"wagi\" }\n[component.c]\nsource = \"c.wasm\"\n",
                "line 7: the `wagi` executor is not served",
            ),
            (
                "[[trigger.http]]\nroute = \"/\"\ncomponent = \"c\"\n[component.c]\nsource = { url = \"https://x/c.wasm\", digest = \"sha256:0\" }\n",
                "line 7: component `c`: `source` must be a local file",
            ),
            (
                "[[trigger.http]]\nroute = \"/\"\ncomponent = \"c\"\n[component.c]\nsource = \"c.wasm\"\nsqlite_databases = [\"default\"]\n",
                "line 7: component `c`: `sqlite_databases`",
            ),
            (
                "[[trigger.http]]\nroute = \"/\"\ncomponent = \"c\"\n[component.c]\nsource = \"c.wasm\"\nunknown_key = 1\n",
                "unknown field `unknown_key`",
            ),
            (
                "[[trigger.http]]\nroute = \"/\"\ncomponent = \"missing\"\n",
                "component `missing`, which is not defined",
            ),
        ];
        for (body, expected) in cases {
            let err = app(&format!("{HEAD}{body}")).unwrap_err();
            assert!(err.contains(expected), "{expected:?} not in {err:?}");
        }
        let base = "[application.trigger.http]\nbase = \"/api\"\n[[trigger.http]]\nroute = \"/\"\ncomponent = \"c\"\n[component.c]\nsource = \"c.wasm\"\n";
        let err = app(&format!("{HEAD}{base}")).unwrap_err();
        assert!(err.contains("base = \"/api\"` is not served"), "{err}");
        let root = base.replace("/api", "/");
        assert!(app(&format!("{HEAD}{root}")).is_ok());
        let err = app("spin_manifest_version = \"1\"\n[application]\nname = \"x\"\n").unwrap_err();
        assert!(err.contains("must be 2"), "{err}");
    }
}
