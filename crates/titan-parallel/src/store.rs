//! A small key/value store over TCP, for rendezvous (torch's `TCPStore`): rank 0 hosts it on
//! `MASTER_ADDR:MASTER_PORT`; every rank connects, publishes its address, and waits for the
//! others' with a bounded timeout, so a rank that never arrives is named, not waited for forever.
//! The NCCL backend will publish its unique id here too.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::comm::transport::Reader;
use crate::{Error, Result};

const OP_SET: u8 = 1;
const OP_GET: u8 = 2;
const OP_ADD: u8 = 3;
const OP_WAIT: u8 = 4;

/// Largest request or response accepted (a guard against garbage on the port).
const MAX_FRAME: usize = 64 << 20;

#[derive(Debug, Default)]
struct Table {
    values: Mutex<HashMap<String, Vec<u8>>>,
    changed: Condvar,
}

/// The store's server: a thread accepting connections, one thread per client.
#[derive(Debug)]
pub struct StoreServer {
    addr: SocketAddr,
    shutdown: Arc<AtomicBool>,
}

impl StoreServer {
    /// Listens on `bind` (port 0 picks a free port) and serves until dropped.
    pub fn start(bind: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(bind).map_err(|e| {
            Error::io(
                format!("rank 0 hosting the rendezvous store on {bind} (MASTER_ADDR/MASTER_PORT): is the port already in use? pick another MASTER_PORT"),
                e,
            )
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the store's address", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("configuring the store's listener", e))?;
        let shutdown = Arc::new(AtomicBool::new(false));
        let table = Arc::new(Table::default());
        let stop = shutdown.clone();
        std::thread::Builder::new()
            .name("titan-store".into())
            .spawn(move || accept_loop(listener, table, stop))
            .map_err(|e| Error::io("spawning the store thread", e))?;
        tracing::debug!(%addr, "rendezvous store listening");
        Ok(Self { addr, shutdown })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Relaxed);
    }
}

fn accept_loop(listener: TcpListener, table: Arc<Table>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let table = table.clone();
                let spawned = std::thread::Builder::new()
                    .name("titan-store-conn".into())
                    .spawn(move || serve_client(stream, table));
                if let Err(e) = spawned {
                    tracing::warn!(%peer, error = %e, "store: cannot serve a client");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => {
                tracing::warn!(error = %e, "store: accept failed");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn serve_client(mut stream: TcpStream, table: Arc<Table>) {
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    // Ends when the client disconnects (or sends garbage).
    while let Ok(req) = read_frame(&mut stream) {
        let Ok(resp) = handle(&req, &table) else {
            return;
        };
        if write_frame(&mut stream, &resp).is_err() {
            return;
        }
    }
}

fn handle(req: &[u8], table: &Table) -> std::result::Result<Vec<u8>, String> {
    let mut r = Reader { bytes: req, at: 0 };
    let lock = || table.values.lock().unwrap_or_else(|e| e.into_inner());
    match r.u8()? {
        OP_SET => {
            let key = r.string()?;
            let value = read_bytes(&mut r)?;
            lock().insert(key, value);
            table.changed.notify_all();
            Ok(vec![0])
        }
        OP_GET => {
            let key = r.string()?;
            Ok(match lock().get(&key) {
                Some(v) => {
                    let mut out = vec![1];
                    put_bytes(&mut out, v);
                    out
                }
                None => vec![0],
            })
        }
        OP_ADD => {
            let key = r.string()?;
            let delta = r.u64()? as i64;
            let mut values = lock();
            let cur = values
                .get(&key)
                .and_then(|v| v.as_slice().try_into().ok())
                .map(i64::from_le_bytes)
                .unwrap_or(0);
            let new = cur.wrapping_add(delta);
            values.insert(key, new.to_le_bytes().to_vec());
            drop(values);
            table.changed.notify_all();
            Ok(new.to_le_bytes().to_vec())
        }
        OP_WAIT => {
            let timeout = Duration::from_millis(r.u64()?);
            let n = r.u32()? as usize;
            let keys = (0..n)
                .map(|_| r.string())
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let deadline = Instant::now() + timeout;
            let mut values = lock();
            loop {
                let missing: Vec<&String> =
                    keys.iter().filter(|k| !values.contains_key(*k)).collect();
                let now = Instant::now();
                if missing.is_empty() || now >= deadline {
                    let mut out = Vec::new();
                    out.extend_from_slice(&(missing.len() as u32).to_le_bytes());
                    for k in missing {
                        put_str(&mut out, k);
                    }
                    return Ok(out);
                }
                values = table
                    .changed
                    .wait_timeout(values, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        other => Err(format!("unknown store op {other}")),
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u64).to_le_bytes());
    out.extend_from_slice(b);
}

fn read_bytes(r: &mut Reader<'_>) -> std::result::Result<Vec<u8>, String> {
    let n = r.u64()? as usize;
    let end =
        r.at.checked_add(n)
            .filter(|&e| e <= r.bytes.len())
            .ok_or("truncated value")?;
    let v = r.bytes[r.at..end].to_vec();
    r.at = end;
    Ok(v)
}

fn write_frame(stream: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(body);
    stream.write_all(&buf)
}

fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("store frame of {n} bytes"),
        ));
    }
    let mut body = vec![0u8; n];
    stream.read_exact(&mut body)?;
    Ok(body)
}

/// A connection to the store.
#[derive(Debug)]
pub struct StoreClient {
    addr: String,
    stream: Mutex<TcpStream>,
    local_ip: IpAddr,
}

impl StoreClient {
    /// Connects to `host:port`, retrying until `timeout` (rank 0 may start last).
    pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<Self> {
        let addr = format!("{host}:{port}");
        let deadline = Instant::now() + timeout;
        let mut last_err = String::from("no address");
        loop {
            let resolved: Vec<SocketAddr> = match (host, port).to_socket_addrs() {
                Ok(a) => a.collect(),
                Err(e) => {
                    last_err = format!("cannot resolve {host}: {e}");
                    Vec::new()
                }
            };
            for sa in &resolved {
                match TcpStream::connect_timeout(sa, Duration::from_millis(500)) {
                    Ok(stream) => {
                        let local_ip = stream
                            .local_addr()
                            .map_err(|e| Error::io("reading the local address", e))?
                            .ip();
                        let _ = stream.set_nodelay(true);
                        return Ok(Self {
                            addr,
                            stream: Mutex::new(stream),
                            local_ip,
                        });
                    }
                    Err(e) => last_err = e.to_string(),
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Store {
                    addr,
                    detail: format!(
                        "no store answered within {:.1}s ({last_err}): rank 0 hosts it, so rank 0 did not start, crashed, \
                         or MASTER_ADDR/MASTER_PORT differ between ranks",
                        timeout.as_secs_f64()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The address of this host as seen on the route to the store: what peers should dial.
    pub fn local_ip(&self) -> IpAddr {
        self.local_ip
    }

    /// `host:port` of the store.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn request(&self, req: &[u8], read_timeout: Duration) -> Result<Vec<u8>> {
        let mut stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        let lost = |e: std::io::Error| Error::Store {
            addr: self.addr.clone(),
            detail: format!("connection lost ({e}): rank 0, which hosts the store, may have died"),
        };
        stream.set_read_timeout(Some(read_timeout)).map_err(lost)?;
        stream.set_write_timeout(Some(read_timeout)).map_err(lost)?;
        write_frame(&mut stream, req).map_err(lost)?;
        read_frame(&mut stream).map_err(lost)
    }

    fn bad_reply(&self, detail: String) -> Error {
        Error::Store {
            addr: self.addr.clone(),
            detail: format!("malformed reply: {detail}"),
        }
    }

    /// Sets `key` to `value`.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let mut req = vec![OP_SET];
        put_str(&mut req, key);
        put_bytes(&mut req, value);
        self.request(&req, Duration::from_secs(60))?;
        Ok(())
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let mut req = vec![OP_GET];
        put_str(&mut req, key);
        let resp = self.request(&req, Duration::from_secs(60))?;
        let mut r = Reader {
            bytes: &resp,
            at: 0,
        };
        match r.u8().map_err(|e| self.bad_reply(e))? {
            0 => Ok(None),
            _ => Ok(Some(read_bytes(&mut r).map_err(|e| self.bad_reply(e))?)),
        }
    }

    /// Adds `delta` to the counter `key` (0 when unset) and returns the new value.
    pub fn add(&self, key: &str, delta: i64) -> Result<i64> {
        let mut req = vec![OP_ADD];
        put_str(&mut req, key);
        req.extend_from_slice(&(delta as u64).to_le_bytes());
        let resp = self.request(&req, Duration::from_secs(60))?;
        let bytes: [u8; 8] = resp
            .as_slice()
            .try_into()
            .map_err(|_| self.bad_reply("counter size".into()))?;
        Ok(i64::from_le_bytes(bytes))
    }

    /// Waits until every key is set or `timeout` passes; returns the keys still missing.
    pub fn wait(&self, keys: &[String], timeout: Duration) -> Result<Vec<String>> {
        let mut req = vec![OP_WAIT];
        req.extend_from_slice(&(timeout.as_millis() as u64).to_le_bytes());
        req.extend_from_slice(&(keys.len() as u32).to_le_bytes());
        for k in keys {
            put_str(&mut req, k);
        }
        let resp = self.request(&req, timeout + Duration::from_secs(10))?;
        let mut r = Reader {
            bytes: &resp,
            at: 0,
        };
        let n = r.u32().map_err(|e| self.bad_reply(e))? as usize;
        (0..n)
            .map(|_| r.string().map_err(|e| self.bad_reply(e)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_add_wait() -> Result<()> {
        let server = StoreServer::start(
            "127.0.0.1:0"
                .parse()
                .map_err(|_| Error::Launch("addr".into()))?,
        )?;
        let port = server.addr().port();
        let a = StoreClient::connect("127.0.0.1", port, Duration::from_secs(5))?;
        let b = StoreClient::connect("localhost", port, Duration::from_secs(5))?;
        a.set("x", b"hello")?;
        assert_eq!(b.get("x")?.as_deref(), Some(&b"hello"[..]));
        assert_eq!(b.get("y")?, None);
        assert_eq!(a.add("n", 2)?, 2);
        assert_eq!(b.add("n", 3)?, 5);
        let keys = vec!["x".to_string(), "late".to_string(), "never".to_string()];
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                a.set("late", b"1")
            });
            let missing = b.wait(&keys, Duration::from_millis(400))?;
            assert_eq!(missing, vec!["never".to_string()]);
            Ok(())
        })
    }

    #[test]
    fn connect_names_the_store_when_nobody_listens() {
        // Bind then drop to get a port that nobody listens on.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(1);
        let err = StoreClient::connect("127.0.0.1", port, Duration::from_millis(200)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("rank 0") && msg.contains(&port.to_string()),
            "{msg}"
        );
    }
}
