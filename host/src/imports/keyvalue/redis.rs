//! A key-value store on Redis (or Valkey): shared by every server that names
//! it, for deployments with several servers behind a load balancer.
//!
//! One multiplexed connection per store, kept by redis-rs's connection
//! manager: it connects on first use, and after a failure reconnects by
//! itself on the next call, so a Redis restart needs nothing from us. While
//! Redis is away, calls fail fast (connect and response timeouts below) and
//! the guest gets an error.
//!
//! Every call runs on the store's own runtime (`keyvalue-io`), so the
//! connection and its reconnections live there, never on whichever serving
//! thread used it first. A connection that stops answering (a Redis that
//! failed over, a network that drops its packets) is not waited on: a
//! response that times out replaces the connection, and TCP keepalive and
//! `TCP_USER_TIMEOUT` end one the kernel would otherwise retransmit on for
//! a quarter of an hour.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::TcpSettings;
use redis::{FromRedisValue, IntoConnectionInfo, RedisError};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::Failure;

/// How long connecting may take. Redis on a LAN answers in a millisecond; a
/// second means it is not there, and a guest waiting longer for an error
/// only holds its slot.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long one command may take before it fails: Redis commands on single
/// keys take microseconds, so two seconds means Redis is stuck.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Reconnection attempts after a failure, before calls fail until the next
/// one. Few, and short, since every call retries anyway.
const RECONNECT_RETRIES: usize = 2;
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

/// An idle connection is probed after this long, then every
/// [`KEEPALIVE_INTERVAL`], and given up after [`KEEPALIVE_PROBES`]
/// unanswered probes: a peer that vanished is noticed within half a minute,
/// not the two hours of the kernel's default.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;

/// How long data sent may go unacknowledged before the kernel ends the
/// connection (`TCP_USER_TIMEOUT`), instead of retransmitting for ~15 min.
const USER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Redis {
    /// The URL as logs show it: without its password.
    url: String,
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// The connection now; replaced whole when it stops answering.
    manager: ArcSwap<ConnectionManager>,
    /// The store's runtime, where every call runs.
    runtime: Handle,
}

impl Redis {
    /// Prepares the connection on the current runtime, which becomes the
    /// store's; nothing is sent until a guest uses the store.
    pub fn new(url: &str) -> Result<Self, String> {
        let shown = redacted(url);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(KEEPALIVE_IDLE)
            .with_interval(KEEPALIVE_INTERVAL)
            .with_retries(KEEPALIVE_PROBES);
        let tcp = TcpSettings::default()
            .set_nodelay(true)
            .set_keepalive(keepalive)
            .set_user_timeout(USER_TIMEOUT);
        let info = url
            .into_connection_info()
            .map_err(|err| format!("`{shown}`: {err}"))?
            .set_tcp_settings(tcp);
        let client = redis::Client::open(info).map_err(|err| format!("`{shown}`: {err}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|err| format!("`{shown}`: {err}"))?;
        Ok(Self {
            url: shown,
            client,
            config,
            manager: ArcSwap::from_pointee(manager),
            runtime: Handle::current(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `command` on the store's runtime. A response that timed out
    /// replaces the connection it was sent on: the next call connects anew.
    async fn query<T: FromRedisValue + Send + 'static>(
        &self,
        command: redis::Cmd,
    ) -> Result<T, Failure> {
        let used = self.manager.load_full();
        let mut conn = (*used).clone();
        let call = self
            .runtime
            .spawn(async move { command.query_async::<T>(&mut conn).await });
        let result = match AbortOnDrop(call).await {
            Ok(result) => result,
            Err(err) => return Err(Failure::Down(format!("the call failed: {err}"))),
        };
        if let Err(err) = &result
            && err.is_timeout()
        {
            self.replace(&used);
        }
        result.map_err(failure)
    }

    /// Swaps in a new connection for `stale`, unless another call has.
    fn replace(&self, stale: &Arc<ConnectionManager>) {
        let _on_store_runtime = self.runtime.enter();
        if let Ok(fresh) =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
        {
            self.manager.rcu(|current| {
                if Arc::ptr_eq(current, stale) {
                    Arc::new(fresh.clone())
                } else {
                    current.clone()
                }
            });
        }
    }

    /// `GET`, in a script that checks the value's size (`STRLEN`) inside
    /// Redis first, so a value over `max_value` never crosses the network.
    pub async fn get(&self, key: String, max_value: usize) -> Result<Option<Vec<u8>>, Failure> {
        let mut values = self.get_many(vec![key], max_value, max_value).await?;
        Ok(values.pop().flatten())
    }

    /// `GET` of each key, in one script that refuses the call when a value
    /// is over `max_value` or all of them together over `max_total`, before
    /// any of them is sent.
    pub async fn get_many(
        &self,
        keys: Vec<String>,
        max_value: usize,
        max_total: usize,
    ) -> Result<Vec<Option<Vec<u8>>>, Failure> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut command = redis::cmd("EVAL");
        command.arg(GET_BOUNDED).arg(keys.len()).arg(&keys);
        command.arg(max_value).arg(max_total);
        self.query(command).await
    }

    pub async fn set(&self, key: String, value: Vec<u8>) -> Result<(), Failure> {
        self.query(redis::cmd("SET").arg(key).arg(value).clone())
            .await
    }

    /// `MSET`: every pair at once, atomically.
    pub async fn set_many(&self, pairs: Vec<(String, Vec<u8>)>) -> Result<(), Failure> {
        if pairs.is_empty() {
            return Ok(());
        }
        self.query(redis::cmd("MSET").arg(&pairs).clone()).await
    }

    pub async fn delete_many(&self, keys: Vec<String>) -> Result<(), Failure> {
        if keys.is_empty() {
            return Ok(());
        }
        self.query(redis::cmd("DEL").arg(keys).clone()).await
    }

    pub async fn exists(&self, key: String) -> Result<bool, Failure> {
        self.query(redis::cmd("EXISTS").arg(key).clone()).await
    }

    /// `SCAN`: Redis's own cursor is the guest's cursor; 0 means done. Run
    /// in a script that refuses a page holding a key over `max_key` before
    /// it is sent.
    pub async fn list_keys(
        &self,
        cursor: Option<u64>,
        page: usize,
        max_key: usize,
    ) -> Result<(Vec<String>, Option<u64>), Failure> {
        let mut command = redis::cmd("EVAL");
        command.arg(SCAN_BOUNDED).arg(0).arg(cursor.unwrap_or(0));
        command.arg(page).arg(max_key);
        let (next, keys): (u64, Vec<String>) = self.query(command).await?;
        Ok((keys, (next != 0).then_some(next)))
    }

    /// `INCRBY`, atomic in Redis whatever the number of servers.
    pub async fn increment(&self, key: String, delta: i64) -> Result<i64, Failure> {
        self.query(redis::cmd("INCRBY").arg(&key).arg(delta).clone())
            .await
    }

    /// Sets `key` to `value` if its value is still `expected` (`None`:
    /// absent), by a script Redis runs atomically; false if it is not.
    pub async fn compare_and_swap(
        &self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
    ) -> Result<bool, Failure> {
        const SWAP: &str = "local current = redis.call('GET', KEYS[1]) \
            if (ARGV[1] == '0' and current == false) or (ARGV[1] == '1' and current == ARGV[2]) \
            then redis.call('SET', KEYS[1], ARGV[3]) return 1 else return 0 end";
        let (present, expected) = match expected {
            Some(bytes) => ("1", bytes),
            None => ("0", Vec::new()),
        };
        let mut command = redis::cmd("EVAL");
        command
            .arg(SWAP)
            .arg(1)
            .arg(&key)
            .arg(present)
            .arg(expected)
            .arg(value);
        let swapped: i64 = self.query(command).await?;
        Ok(swapped == 1)
    }
}

/// `url` with its password, if it has one, replaced by `***`, for logs and
/// errors: `redis://user:secret@host/` becomes `redis://user:***@host/`.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// `GET` of every key in `KEYS`, refused with an error reply naming the
/// size when a value is over `ARGV[1]` bytes or all together over
/// `ARGV[2]`. A missing key is `false`, which Redis sends as nil.
const GET_BOUNDED: &str = r"
local total = 0
for _, key in ipairs(KEYS) do
  local size = redis.call('STRLEN', key)
  total = total + size
  if size > tonumber(ARGV[1]) or total > tonumber(ARGV[2]) then
    return redis.error_reply('TOOBIG the value at ' .. key .. ' (' .. size .. ' bytes) is over the ' .. ARGV[1] .. ' bytes a value may have, or the ' .. ARGV[2] .. ' of one call')
  end
end
local values = {}
for i, key in ipairs(KEYS) do
  values[i] = redis.call('GET', key)
end
return values
";

/// `SCAN ARGV[1] COUNT ARGV[2]`, refused with an error reply when a key is
/// longer than `ARGV[3]` bytes.
const SCAN_BOUNDED: &str = r"
local page = redis.call('SCAN', ARGV[1], 'COUNT', ARGV[2])
for _, key in ipairs(page[2]) do
  if #key > tonumber(ARGV[3]) then
    return redis.error_reply('TOOBIG a key of ' .. #key .. ' bytes is over the ' .. ARGV[3] .. ' bytes a key may have')
  end
end
return page
";

/// A call on the store's runtime, aborted if its request goes away.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connection trouble is an outage; an error Redis answered with (a value
/// that is not a number, say) is the call's own.
fn failure(err: RedisError) -> Failure {
    if err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_timeout()
        || err.is_unrecoverable_error()
    {
        Failure::Down(err.to_string())
    } else {
        Failure::Refused(err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    /// Passwords never reach a log line; everything else of the URL does.
    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("redis://:s3cret@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(redacted("redis://me:s3:cr@t@host/"), "redis://me:***@host/");
        assert_eq!(redacted("redis://me@host/"), "redis://me@host/");
        assert_eq!(redacted("redis://host:6379"), "redis://host:6379");
        assert_eq!(redacted("redis://host/a@b"), "redis://host/a@b");
    }
}
