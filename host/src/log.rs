//! The server's logs: the subscriber and the non-blocking writer every line
//! goes through, and each request's identity in them. A request is a
//! `tracing` span (its id, method and path) entered for its whole life,
//! including the guest's task, so every line logged while serving it (a
//! host call's, a key-value store's, an outbound request's) carries it.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io::IsTerminal;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::task::{Context, Poll};

use tracing::{Event, Span, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::trace;

/// Log lines waiting for stderr. When stderr falls this far behind, new
/// lines are dropped instead of making the server wait: at most
/// 16 KiB each (a guest's output line is cut at that), so the queue holds
/// 32 MiB at worst.
const LOG_QUEUE_LINES: usize = 2048;

/// How log lines are written to stderr (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Where guests' lines go as plain text (`--log-format text`): the log's
/// writer. Unset, they go out as log events.
static TEXT_SINK: OnceLock<NonBlocking> = OnceLock::new();

/// What starts a guest's text line: the serving process's name, if this is
/// one.
static TEXT_PREFIX: OnceLock<String> = OnceLock::new();

/// Sets up logging to stderr in `format`, filtered by `RUST_LOG` (default
/// `info`), and, with `traces`, the OpenTelemetry layer beside it: the log
/// never shows the trace spans, and traces take only the log's warnings and
/// errors (as span events). Lines are written by a thread of their own: a stderr nobody
/// reads fills its pipe, and a worker that wrote to it directly would stop
/// serving. The guards flush what is queued when dropped.
///
/// A supervisor's serving processes all write to its stderr, so each line
/// of serving process `process` says which it is, and its pid (which `ps`,
/// `kill` and the kernel's own messages use): `process=1 pid=4242` after a
/// text line's time, `"process":1,"pid":4242` first in a JSON object.
pub fn init(
    format: LogFormat,
    process: Option<usize>,
    traces: Option<trace::Settings>,
) -> (WorkerGuard, anyhow::Result<Option<trace::Guard>>) {
    let (writer, flush_on_exit) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let logs = tracing_subscriber::fmt::layer().with_writer(writer.clone());
    let pid = std::process::id();
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match (format, process) {
        (LogFormat::Text, None) => {
            let _ = TEXT_SINK.set(writer);
            logs.with_ansi(std::io::stderr().is_terminal()).boxed()
        }
        (LogFormat::Text, Some(index)) => {
            let _ = TEXT_SINK.set(writer);
            let _ = TEXT_PREFIX.set(format!("process={index} pid={pid} "));
            logs.with_ansi(std::io::stderr().is_terminal())
                .with_timer(TimeAndProcess(format!(" process={index} pid={pid}")))
                .boxed()
        }
        (LogFormat::Json, None) => logs.json().boxed(),
        (LogFormat::Json, Some(index)) => logs
            .json()
            .event_format(JsonWithProcess {
                json: tracing_subscriber::fmt::format().json(),
                fields: format!("\"process\":{index},\"pid\":{pid},"),
            })
            .boxed(),
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(
            format!("{}=off", trace::TARGET)
                .parse()
                .expect("a valid directive"),
        );
    let traced = traces.map(trace::layer).transpose();
    let (traces, guard) = match traced {
        Ok(Some((layer, guard))) => (Some(layer.boxed()), Ok(Some(guard))),
        Ok(None) => (None, Ok(None)),
        Err(err) => (None, Err(err)),
    };
    let mut layers = vec![logs.with_filter(filter).boxed()];
    layers.extend(traces);
    tracing_subscriber::registry().with(layers).init();
    (flush_on_exit, guard)
}

/// A text line's time, followed by the serving process's name.
struct TimeAndProcess(String);

impl FormatTime for TimeAndProcess {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        SystemTime.format_time(w)?;
        w.write_str(&self.0)
    }
}

/// A JSON line with the serving process's fields first.
struct JsonWithProcess<F> {
    json: F,
    /// `"process":N,"pid":N,`
    fields: String,
}

impl<S, N, F> FormatEvent<S, N> for JsonWithProcess<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut line = String::new();
        self.json.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => {
                writer.write_char('{')?;
                writer.write_str(&self.fields)?;
                writer.write_str(rest)
            }
            None => writer.write_str(&line),
        }
    }
}

/// Where guest output goes as text, `[id stream] line`, if the log is text;
/// `None` means each line is a log event.
pub fn text_sink() -> Option<&'static NonBlocking> {
    TEXT_SINK.get()
}

/// What starts a guest's text line: a serving process's name and a space,
/// or nothing.
pub fn text_prefix() -> &'static str {
    TEXT_PREFIX.get().map_or("", String::as_str)
}

/// Identifies one request in the logs: a per-process random prefix (so ids
/// from different runs or processes do not collide) and a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId(u64);

/// Random per process, from the OS-seeded keys of std's hasher.
static PROCESS: LazyLock<u32> = LazyLock::new(|| {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish() as u32
});
static NEXT: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The id of the request whose future this thread is polling. Only
    /// guest output's text lines need it as a value; every log event gets it
    /// from the span.
    static CURRENT: Cell<Option<RequestId>> = const { Cell::new(None) };
}

impl RequestId {
    pub fn next() -> Self {
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The request being served on this thread, or a new id for work that
    /// is no request's (the trial instantiation of a component).
    pub fn current() -> Self {
        CURRENT.get().unwrap_or_else(Self::next)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}-{}", *PROCESS, self.0)
    }
}

/// A request's span: every line logged inside it says which request.
pub fn request_span(id: RequestId) -> Span {
    tracing::info_span!("request", %id)
}

pin_project_lite::pin_project! {
    /// A future of one request, polled inside its spans and with its id
    /// current.
    pub struct InRequest<F> {
        id: RequestId,
        span: Span,
        // The request's trace span ([`crate::trace::spans::server`]), entered
        // before the log's: spans made inside are its children.
        trace: Span,
        #[pin]
        inner: F,
    }
}

impl<F> InRequest<F> {
    pub fn new(id: RequestId, span: Span, trace: Span, inner: F) -> Self {
        Self {
            id,
            span,
            trace,
            inner,
        }
    }

    /// `inner` in the request being served now: for work a request moves
    /// onto a task of its own. (Its trace spans are entered by the futures
    /// that made them.)
    pub fn current(inner: F) -> Self {
        Self::new(RequestId::current(), Span::current(), Span::none(), inner)
    }
}

impl<F: Future> Future for InRequest<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _traced = this.trace.enter();
        let _entered = this.span.enter();
        let outer = CURRENT.replace(Some(*this.id));
        let poll = this.inner.poll(cx);
        CURRENT.set(outer);
        poll
    }
}
