//! The TCP backend: one process per rank, a full mesh of sockets.
//!
//! Each rank listens on an ephemeral port, publishes `ip:port` in the rendezvous store, dials
//! every peer (one outgoing connection per peer, used only for sending) and accepts one
//! incoming connection per peer (read by a thread that files messages into the mailbox). A
//! closed incoming connection marks the peer gone — "left" if it said goodbye first, "died"
//! otherwise — so collectives fail at once instead of waiting for the timeout.

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::comm::mailbox::Mailbox;
use crate::comm::payload::Payload;
use crate::comm::transport::{Body, Failure, Tag, Transport};
use crate::store::{StoreClient, StoreServer};
use crate::{Error, Result};

const MAGIC: u32 = 0x314e_5454; // "TTN1"
const KIND_DATA: u8 = 1;
const KIND_ABORT: u8 = 2;
const KIND_BYE: u8 = 3;
const HEADER: usize = 4 + 1 + 8 + 8 + 4 + 8;

/// One rank's end of a TCP world.
#[derive(Debug)]
pub(crate) struct TcpTransport {
    rank: usize,
    size: usize,
    /// Outgoing stream to each peer (`None` for self).
    out: Vec<Mutex<Option<TcpStream>>>,
    /// Clones of the incoming streams, to unblock their readers on drop.
    incoming: Arc<Mutex<Vec<TcpStream>>>,
    mailbox: Arc<Mailbox>,
    timeout_ms: AtomicU64,
    shutdown: Arc<AtomicBool>,
    /// Rank 0 hosts the store for as long as the world lives.
    _store_server: Option<Arc<StoreServer>>,
}

fn frame(kind: u8, tag: Tag, body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER + body.len());
    buf.extend_from_slice(&MAGIC.to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(&tag.group.to_le_bytes());
    buf.extend_from_slice(&tag.seq.to_le_bytes());
    buf.extend_from_slice(&tag.phase.to_le_bytes());
    buf.extend_from_slice(&(body.len() as u64).to_le_bytes());
    buf.extend_from_slice(body);
    buf
}

enum Incoming {
    Msg(Tag, Body),
    Bye,
}

fn read_message(stream: &mut TcpStream) -> std::io::Result<Incoming> {
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let mut h = [0u8; HEADER];
    stream.read_exact(&mut h)?;
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or([0; 8]));
    if u32::from_le_bytes(h[0..4].try_into().unwrap_or([0; 4])) != MAGIC {
        return Err(bad("bad frame magic".into()));
    }
    let kind = h[4];
    let tag = Tag {
        group: u64_at(5),
        seq: u64_at(13),
        phase: u32::from_le_bytes(h[21..25].try_into().unwrap_or([0; 4])),
    };
    let len = u64_at(25) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    match kind {
        KIND_DATA => {
            let (p, _) = Payload::decode(&body).map_err(bad)?;
            Ok(Incoming::Msg(tag, Body::Data(p)))
        }
        KIND_ABORT => Ok(Incoming::Msg(
            tag,
            Body::Abort(Failure::decode(&body).map_err(bad)?),
        )),
        KIND_BYE => Ok(Incoming::Bye),
        other => Err(bad(format!("unknown frame kind {other}"))),
    }
}

/// Files a peer's messages into the mailbox until its connection closes.
fn reader_loop(mut stream: TcpStream, src: usize, mailbox: Arc<Mailbox>) {
    let mut said_bye = false;
    loop {
        match read_message(&mut stream) {
            Ok(Incoming::Msg(tag, body)) => mailbox.deliver(src, tag, body),
            Ok(Incoming::Bye) => said_bye = true,
            Err(e) => {
                let how = if said_bye {
                    "left the group (it shut down its communicator)".to_string()
                } else if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    "died (its connection closed without a goodbye: crash, kill or early exit)"
                        .to_string()
                } else {
                    format!("died (connection error: {e})")
                };
                tracing::debug!(peer = src, %how, "peer connection closed");
                mailbox.mark_gone(src, how);
                return;
            }
        }
    }
}

/// Handshake a dialing rank sends: magic, its rank, the world size.
fn handshake(rank: usize, size: usize) -> Vec<u8> {
    let mut b = MAGIC.to_le_bytes().to_vec();
    b.extend_from_slice(&(rank as u64).to_le_bytes());
    b.extend_from_slice(&(size as u64).to_le_bytes());
    b
}

fn accept_loop(
    listener: TcpListener,
    size: usize,
    mailbox: Arc<Mailbox>,
    incoming: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut stream, peer)) => {
                let mut h = [0u8; 20];
                let ok = stream.set_nonblocking(false).is_ok()
                    && stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .is_ok()
                    && stream.read_exact(&mut h).is_ok()
                    && stream.set_read_timeout(None).is_ok();
                let magic = u32::from_le_bytes(h[0..4].try_into().unwrap_or([0; 4]));
                let src = u64::from_le_bytes(h[4..12].try_into().unwrap_or([0; 8])) as usize;
                let their_size =
                    u64::from_le_bytes(h[12..20].try_into().unwrap_or([0; 8])) as usize;
                if !ok || magic != MAGIC || their_size != size || src >= size {
                    tracing::warn!(%peer, "ignoring a connection that is not a Titan rank of this world");
                    continue;
                }
                if let Ok(clone) = stream.try_clone() {
                    incoming
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(clone);
                }
                let mailbox = mailbox.clone();
                let spawned = std::thread::Builder::new()
                    .name(format!("titan-recv-{src}"))
                    .spawn(move || reader_loop(stream, src, mailbox.clone()));
                if let Err(e) = spawned {
                    tracing::error!(peer = src, error = %e, "cannot start a receiver thread");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn addr_key(rank: usize) -> String {
    format!("titan/tcp/addr/{rank}")
}

fn ready_key(rank: usize) -> String {
    format!("titan/tcp/ready/{rank}")
}

/// Waits for `keys` (one per rank in `ranks`) in the store; a timeout names the missing ranks.
fn wait_ranks(
    store: &StoreClient,
    ranks: &[usize],
    key: fn(usize) -> String,
    timeout: Duration,
    what: &str,
) -> Result<()> {
    let keys: Vec<String> = ranks.iter().map(|&r| key(r)).collect();
    let start = Instant::now();
    let missing = store.wait(&keys, timeout)?;
    if missing.is_empty() {
        return Ok(());
    }
    let missing_ranks = ranks
        .iter()
        .zip(&keys)
        .filter(|(_, k)| missing.contains(k))
        .map(|(&r, _)| r)
        .collect();
    Err(Error::Timeout {
        op: format!("rendezvous ({what})"),
        group: "world".into(),
        missing: missing_ranks,
        waited_s: start.elapsed().as_secs_f64(),
    })
}

impl TcpTransport {
    /// Joins the world of `size` ranks through `store`; listens on `bind_ip`.
    pub fn connect(
        store: &StoreClient,
        store_server: Option<Arc<StoreServer>>,
        rank: usize,
        size: usize,
        bind_ip: IpAddr,
        timeout: Duration,
    ) -> Result<Arc<Self>> {
        let deadline = Instant::now() + timeout;
        let listener = TcpListener::bind(SocketAddr::new(bind_ip, 0))
            .map_err(|e| Error::io(format!("rank {rank}: listening for peers on {bind_ip}"), e))?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("reading the listener's address", e))?
            .port();
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("configuring the peer listener", e))?;
        let mailbox = Arc::new(Mailbox::new());
        let incoming = Arc::new(Mutex::new(Vec::new()));
        let shutdown = Arc::new(AtomicBool::new(false));
        {
            let (mailbox, incoming, stop) = (mailbox.clone(), incoming.clone(), shutdown.clone());
            std::thread::Builder::new()
                .name("titan-accept".into())
                .spawn(move || accept_loop(listener, size, mailbox, incoming, stop))
                .map_err(|e| Error::io("spawning the accept thread", e))?;
        }
        let transport = Arc::new(Self {
            rank,
            size,
            out: (0..size).map(|_| Mutex::new(None)).collect(),
            incoming,
            mailbox,
            timeout_ms: AtomicU64::new(timeout.as_millis() as u64),
            shutdown,
            _store_server: store_server,
        });

        let advertised = SocketAddr::new(store.local_ip(), port);
        store.set(&addr_key(rank), advertised.to_string().as_bytes())?;
        let peers: Vec<usize> = (0..size).filter(|&r| r != rank).collect();
        let left = deadline.saturating_duration_since(Instant::now());
        wait_ranks(store, &peers, addr_key, left, "publishing peer addresses")?;

        for &peer in &peers {
            let raw = store.get(&addr_key(peer))?.unwrap_or_default();
            let text = String::from_utf8_lossy(&raw).to_string();
            let addr: SocketAddr = text.parse().map_err(|_| Error::Store {
                addr: store.addr().to_string(),
                detail: format!("rank {peer} published an unreadable address {text:?}"),
            })?;
            let stream = dial(addr, rank, peer, deadline)?;
            let mut s = &stream;
            s.write_all(&handshake(rank, size))
                .map_err(|e| Error::io(format!("greeting rank {peer} at {addr}"), e))?;
            *transport.out[peer]
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(stream);
        }

        // Everyone has dialed everyone: from here on, a closed connection means a gone peer.
        store.set(&ready_key(rank), b"1")?;
        let left = deadline.saturating_duration_since(Instant::now());
        wait_ranks(store, &peers, ready_key, left, "connecting to peers")?;
        tracing::debug!(rank, size, "TCP world connected");
        Ok(transport)
    }
}

fn dial(addr: SocketAddr, rank: usize, peer: usize, deadline: Instant) -> Result<TcpStream> {
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(Error::io(
                    format!("rank {rank}: connecting to rank {peer} at {addr}"),
                    e,
                ));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Transport for TcpTransport {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn send(&self, dst: usize, tag: Tag, body: Body) -> std::result::Result<(), String> {
        if let Some(how) = self.mailbox.gone(dst) {
            return Err(how);
        }
        let bytes = match &body {
            Body::Data(p) => {
                let mut b = Vec::new();
                p.encode(&mut b);
                frame(KIND_DATA, tag, &b)
            }
            Body::Abort(f) => {
                let mut b = Vec::new();
                f.encode(&mut b);
                frame(KIND_ABORT, tag, &b)
            }
        };
        let slot = self
            .out
            .get(dst)
            .ok_or_else(|| format!("no rank {dst} in this world"))?;
        let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
        let stream = guard
            .as_mut()
            .ok_or_else(|| "is not connected".to_string())?;
        // Bounded: a peer that stops reading cannot block us past the timeout.
        let _ = stream.set_write_timeout(Some(self.timeout().max(Duration::from_millis(10))));
        stream
            .write_all(&bytes)
            .map_err(|e| format!("died (sending to it failed: {e})"))
    }
    fn mailbox(&self) -> &Mailbox {
        &self.mailbox
    }
    fn backend(&self) -> &'static str {
        "tcp"
    }
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }
    fn set_timeout(&self, timeout: Duration) {
        self.timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for TcpTransport {
    /// Says goodbye to every peer, so they report "left" rather than "died".
    fn drop(&mut self) {
        let bye = frame(
            KIND_BYE,
            Tag {
                group: 0,
                seq: 0,
                phase: 0,
            },
            &[],
        );
        for slot in &self.out {
            if let Some(s) = slot.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
                let _ = s.write_all(&bye);
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        for s in self
            .incoming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.shutdown.store(true, Ordering::Relaxed);
    }
}
