//! A TCP proxy between the engine and Redis (or Postgres) whose faults are switched at run
//! time: cut every open connection at once, refuse new ones for a while,
//! delay every chunk each way, or cut the connection of chosen script calls
//! right before or right after they reach Redis. Real sockets, real resets:
//! the engine sees what it would see from a flaky network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

/// Which script calls (client chunks holding `EVALSHA` and a needle) have
/// their connection cut: `Before`, the call never reaches Redis; `After`,
/// Redis runs it and its reply is never passed back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallCuts {
    /// Every call passes.
    None,
    /// Of the calls holding the needle, every fifth is cut after it is
    /// forwarded, every fifth (offset by two) before; the rest pass.
    Mixed,
    /// The next call holding the needle is cut after it is forwarded; then
    /// back to `None`.
    OnceAfter,
}

enum Cut {
    No,
    Before,
    After,
}

struct CallRule {
    cuts: CallCuts,
    needle: Vec<u8>,
    /// Calls holding the needle seen in `Mixed`.
    seen: usize,
}

pub struct Proxy {
    inner: Arc<Inner>,
    pub addr: SocketAddr,
    accepting: JoinHandle<()>,
}

struct Inner {
    upstream: SocketAddr,
    /// Bumped by `cut_all`: every connection opened before it ends.
    generation: watch::Sender<u64>,
    refuse_until: std::sync::Mutex<Option<Instant>>,
    latency_us: AtomicU64,
    /// Chunks read but not yet written on (delayed by the latency).
    in_flight: AtomicUsize,
    open: AtomicUsize,
    cut: AtomicU64,
    refused: AtomicU64,
    calls: std::sync::Mutex<CallRule>,
    calls_cut_before: AtomicU64,
    calls_cut_after: AtomicU64,
}

impl Inner {
    fn decide(&self, chunk: &[u8]) -> Cut {
        let mut rule = self.calls.lock().expect("lock");
        if rule.cuts == CallCuts::None || !contains(chunk, b"EVALSHA") || !contains(chunk, &rule.needle) {
            return Cut::No;
        }
        let cut = match rule.cuts {
            CallCuts::None => Cut::No,
            CallCuts::OnceAfter => {
                rule.cuts = CallCuts::None;
                Cut::After
            }
            CallCuts::Mixed => {
                rule.seen += 1;
                match (rule.seen - 1) % 5 {
                    0 => Cut::After,
                    2 => Cut::Before,
                    _ => Cut::No,
                }
            }
        };
        match cut {
            Cut::After => self.calls_cut_after.fetch_add(1, Ordering::SeqCst),
            Cut::Before => self.calls_cut_before.fetch_add(1, Ordering::SeqCst),
            Cut::No => 0,
        };
        cut
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len().max(1)).any(|w| w == needle)
}

/// One proxied connection's own end: a call cut ends it alone.
#[derive(Default)]
struct Connection {
    /// Set once a call is cut: nothing more is passed back to the client.
    severed: AtomicBool,
    closed: Notify,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let inner = Arc::new(Inner {
            upstream,
            generation: watch::channel(0).0,
            refuse_until: std::sync::Mutex::new(None),
            latency_us: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            cut: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            calls: std::sync::Mutex::new(CallRule {
                cuts: CallCuts::None,
                needle: Vec::new(),
                seen: 0,
            }),
            calls_cut_before: AtomicU64::new(0),
            calls_cut_after: AtomicU64::new(0),
        });
        let accepting = tokio::spawn(accept(listener, inner.clone()));
        Self { inner, addr, accepting }
    }

    /// The URL the engine is given instead of Redis's own.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Resets every open connection, both sides, at once; returns how many.
    pub fn cut_all(&self) -> usize {
        let open = self.inner.open.load(Ordering::SeqCst);
        self.inner.generation.send_modify(|g| *g += 1);
        self.inner.cut.fetch_add(open as u64, Ordering::SeqCst);
        open
    }

    /// New connections are reset as soon as accepted, for `how_long`.
    pub fn refuse_for(&self, how_long: Duration) {
        *self.inner.refuse_until.lock().expect("lock") = Some(Instant::now() + how_long);
    }

    /// Every chunk, each way, waits `latency` before it is passed on.
    pub fn set_latency(&self, latency: Duration) {
        self.inner
            .latency_us
            .store(latency.as_micros() as u64, Ordering::SeqCst);
    }

    /// Waits until no delayed chunk is left to pass on: after it, every
    /// command the engine sent has reached Redis (or was cut on the way).
    pub async fn wait_idle(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while self.inner.in_flight.load(Ordering::SeqCst) > 0 {
            assert!(
                Instant::now() < deadline,
                "the proxy still holds chunks after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// From now on, cuts the connection of script calls holding `needle` as
    /// `cuts` says.
    pub fn cut_calls(&self, cuts: CallCuts, needle: &str) {
        let mut rule = self.inner.calls.lock().expect("lock");
        rule.cuts = cuts;
        rule.needle = needle.as_bytes().to_vec();
    }

    /// Script calls whose connection was cut after they were forwarded (Redis
    /// ran them; their reply was lost).
    pub fn calls_cut_after(&self) -> u64 {
        self.inner.calls_cut_after.load(Ordering::SeqCst)
    }

    /// Script calls whose connection was cut before they were forwarded.
    pub fn calls_cut_before(&self) -> u64 {
        self.inner.calls_cut_before.load(Ordering::SeqCst)
    }

    /// Connections cut so far.
    pub fn cut_count(&self) -> u64 {
        self.inner.cut.load(Ordering::SeqCst)
    }

    /// Connections refused so far.
    pub fn refused_count(&self) -> u64 {
        self.inner.refused.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accepting.abort();
        self.inner.generation.send_modify(|g| *g += 1);
    }
}

async fn accept(listener: TcpListener, inner: Arc<Inner>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let refusing = inner
            .refuse_until
            .lock()
            .expect("lock")
            .is_some_and(|t| Instant::now() < t);
        if refusing {
            inner.refused.fetch_add(1, Ordering::SeqCst);
            reset(&client);
            continue;
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(inner.upstream).await else {
                reset(&client);
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            inner.open.fetch_add(1, Ordering::SeqCst);
            let mut cut = inner.generation.subscribe();
            let connection = Arc::new(Connection::default());
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            let up = pipe(client_read, server_write, inner.clone(), connection.clone(), true);
            let down = pipe(server_read, client_write, inner.clone(), connection.clone(), false);
            tokio::select! {
                _ = async { tokio::join!(up, down) } => {}
                _ = cut.changed() => {}
                _ = connection.closed.notified() => {}
            }
            inner.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// A connection reset (RST), not an orderly close.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// A chunk on its way; no longer in flight once written or dropped (a cut
/// drops the chunks still queued: they never reach the other side).
struct Chunk {
    due: Instant,
    bytes: Bytes,
    inner: Arc<Inner>,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.inner.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, each chunk delayed by the latency of the moment it
/// was read, in order; passes the end of the stream on. Dropped by a cut,
/// which closes both sockets. Going `up` (client to Redis), a script call
/// may cut its connection (see [`CallCuts`]).
async fn pipe(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    inner: Arc<Inner>,
    connection: Arc<Connection>,
    up: bool,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Chunk>();
    let severed = connection.clone();
    let writer = async move {
        while let Some(chunk) = rx.recv().await {
            tokio::time::sleep_until(chunk.due.into()).await;
            // Going down, a severed connection passes no reply back.
            if !up && severed.severed.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&chunk.bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            let cut = if up { inner.decide(&buf[..n]) } else { Cut::No };
            if matches!(cut, Cut::Before) {
                // The call never arrives: both sockets close.
                connection.severed.store(true, Ordering::SeqCst);
                connection.closed.notify_one();
                break;
            }
            let delay = Duration::from_micros(inner.latency_us.load(Ordering::SeqCst));
            inner.in_flight.fetch_add(1, Ordering::SeqCst);
            let chunk = Chunk {
                due: Instant::now() + delay,
                bytes: Bytes::copy_from_slice(&buf[..n]),
                inner: inner.clone(),
            };
            if matches!(cut, Cut::After) {
                // Redis gets the call and runs it; its reply is dropped,
                // then both sockets close.
                connection.severed.store(true, Ordering::SeqCst);
                let _ = tx.send(chunk);
                tokio::time::sleep(delay + Duration::from_millis(50)).await;
                connection.closed.notify_one();
                break;
            }
            if tx.send(chunk).is_err() {
                break;
            }
        }
    };
    tokio::join!(reader, writer);
}
