//! The pipe between the supervisor (`--processes`) and each serving
//! process, over the serving process's stdin and stdout: the serving side
//! answers `metrics N` with `# reply N` and its metrics text (ending in
//! `# EOF`), and shuts down when stdin closes; the supervisor side asks, and
//! sums the answers for its admin endpoint.

use std::future::Future;
use std::io::{BufRead, Write};
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, Lines};
use tokio::sync::{Mutex, oneshot};
use tracing::warn;

use super::metrics_sum;
use crate::metrics::METRICS;

/// How long a serving process may take to send its metrics. It answers from
/// a thread of its own, at once; a process that does not is stuck.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// In a serving process: answers the supervisor's requests for metrics on a
/// thread of its own (reading stdin blocks). Resolves when stdin closes,
/// that is when the supervisor is gone.
pub fn answer_supervisor() -> Pin<Box<dyn Future<Output = ()> + Send>> {
    let (gone, orphaned) = oneshot::channel::<()>();
    let link = std::thread::Builder::new()
        .name("supervisor-link".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                if let Some(id) = line.strip_prefix("metrics ") {
                    let reply = format!("# reply {id}\n{}", METRICS.encode());
                    let mut stdout = std::io::stdout().lock();
                    if stdout.write_all(reply.as_bytes()).is_err() || stdout.flush().is_err() {
                        break;
                    }
                }
            }
            drop(gone);
        });
    match link {
        Ok(_) => Box::pin(async move {
            let _ = orphaned.await;
        }),
        Err(err) => {
            warn!("cannot watch the supervisor: {err}");
            Box::pin(std::future::pending())
        }
    }
}

/// The supervisor's end of a serving process's stdin: a spawned process's
/// or the forked first one's pipe.
pub type Stdin = Box<dyn AsyncWrite + Send + Unpin>;

/// The supervisor's end of a serving process's stdout.
pub type Stdout = Box<dyn AsyncRead + Send + Unpin>;

/// The supervisor's end of a serving process's stdin and stdout.
pub struct Link {
    stdin: Stdin,
    stdout: Lines<BufReader<Stdout>>,
    /// The number of the last request, so that the rest of a reply that
    /// came too late is skipped.
    asked: u64,
}

impl Link {
    /// Wraps a serving process's stdin and stdout.
    pub fn new(stdin: Stdin, stdout: Lines<BufReader<Stdout>>) -> Self {
        Self {
            stdin,
            stdout,
            asked: 0,
        }
    }

    async fn metrics(&mut self) -> std::io::Result<String> {
        self.asked += 1;
        let request = format!("metrics {}\n", self.asked);
        self.stdin.write_all(request.as_bytes()).await?;
        self.stdin.flush().await?;
        let header = format!("# reply {}", self.asked);
        let mut text = None;
        while let Some(line) = self.stdout.next_line().await? {
            match &mut text {
                None if line == header => text = Some(String::new()),
                None => {}
                Some(text) => {
                    text.push_str(&line);
                    text.push('\n');
                    if line == "# EOF" {
                        return Ok(std::mem::take(text));
                    }
                }
            }
        }
        Err(std::io::ErrorKind::UnexpectedEof.into())
    }
}

/// The metrics of every serving process that answers, summed, and how
/// many answered (`serving_processes_up`). While a process is down its
/// counts are missing from the sum, and the gauge says so: a scrape during
/// an incident still shows everything the live processes know.
pub async fn scrape(links: &[Mutex<Option<Link>>]) -> String {
    let mut texts = Vec::with_capacity(links.len());
    for (index, link) in links.iter().enumerate() {
        let mut link = link.lock().await;
        let Some(link) = link.as_mut() else {
            continue;
        };
        match tokio::time::timeout(SCRAPE_TIMEOUT, link.metrics()).await {
            Ok(Ok(text)) => texts.push(text),
            Ok(Err(err)) => warn!("serving process {index} sent no metrics: {err}"),
            Err(_) => warn!("serving process {index} sent no metrics within {SCRAPE_TIMEOUT:?}"),
        }
    }
    metrics_sum::with_processes_up(metrics_sum::sum(&texts), texts.len())
}
