//! What the host backends exchange: tagged messages between global ranks, and the
//! [`Transport`] that carries them (shared memory between threads, or TCP sockets).

use std::time::Duration;

use crate::comm::mailbox::Mailbox;
use crate::comm::payload::Payload;
use crate::Error;

/// Identifies one message of one operation: the group, the operation's sequence number in
/// that group, and the step within the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Tag {
    pub group: u64,
    pub seq: u64,
    pub phase: u32,
}

/// Contributions flowing to the group root.
pub(crate) const PHASE_UP: u32 = 0;
/// Results flowing from the root (or a broadcast root) to the members.
pub(crate) const PHASE_DOWN: u32 = 1;
/// Point-to-point messages (their `seq` counts messages per ordered pair of ranks).
pub(crate) const PHASE_P2P: u32 = 2;

/// A message body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Body {
    Data(Payload),
    /// The root could not complete the operation; every member fails with this.
    Abort(Failure),
}

/// Why a collective failed, as the group root tells the other members.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Failure {
    Timeout { missing: Vec<usize>, waited_ms: u64 },
    PeerGone { rank: usize, how: String },
    Mismatch { detail: String },
}

impl Failure {
    /// The error a member raises for this failure of operation `op` on group `group`.
    pub fn into_error(self, op: &str, group: &str) -> Error {
        match self {
            Failure::Timeout { missing, waited_ms } => Error::Timeout {
                op: op.to_string(),
                group: group.to_string(),
                missing,
                waited_s: waited_ms as f64 / 1000.0,
            },
            Failure::PeerGone { rank, how } => Error::PeerDied {
                op: op.to_string(),
                group: group.to_string(),
                rank,
                how,
            },
            Failure::Mismatch { detail } => Error::Mismatch {
                op: op.to_string(),
                group: group.to_string(),
                detail,
            },
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Failure::Timeout { missing, waited_ms } => {
                out.push(1);
                out.extend_from_slice(&waited_ms.to_le_bytes());
                out.extend_from_slice(&(missing.len() as u32).to_le_bytes());
                for r in missing {
                    out.extend_from_slice(&(*r as u64).to_le_bytes());
                }
            }
            Failure::PeerGone { rank, how } => {
                out.push(2);
                out.extend_from_slice(&(*rank as u64).to_le_bytes());
                put_str(out, how);
            }
            Failure::Mismatch { detail } => {
                out.push(3);
                put_str(out, detail);
            }
        }
    }

    pub fn decode(bytes: &[u8]) -> std::result::Result<Failure, String> {
        let mut r = Reader { bytes, at: 0 };
        match r.u8()? {
            1 => {
                let waited_ms = r.u64()?;
                let n = r.u32()? as usize;
                let missing = (0..n)
                    .map(|_| r.u64().map(|v| v as usize))
                    .collect::<Result<_, _>>()?;
                Ok(Failure::Timeout { missing, waited_ms })
            }
            2 => {
                let rank = r.u64()? as usize;
                Ok(Failure::PeerGone {
                    rank,
                    how: r.string()?,
                })
            }
            3 => Ok(Failure::Mismatch {
                detail: r.string()?,
            }),
            other => Err(format!("unknown failure code {other}")),
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A cursor over little-endian bytes.
pub(crate) struct Reader<'a> {
    pub bytes: &'a [u8],
    pub at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or("truncated message")?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    pub fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    pub fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| "bad u32")?,
        ))
    }
    pub fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| "bad u64")?,
        ))
    }
    pub fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "invalid UTF-8".to_string())
    }
}

/// Moves tagged messages between the global ranks of one world.
pub(crate) trait Transport: Send + Sync + std::fmt::Debug {
    /// This process's global rank.
    fn rank(&self) -> usize;
    /// Number of global ranks.
    fn size(&self) -> usize;
    /// Sends `body` to global rank `dst`; `Err(how)` when `dst` is gone.
    fn send(&self, dst: usize, tag: Tag, body: Body) -> std::result::Result<(), String>;
    /// Where messages for this rank arrive.
    fn mailbox(&self) -> &Mailbox;
    /// Backend name for messages.
    fn backend(&self) -> &'static str;
    /// Current collective timeout.
    fn timeout(&self) -> Duration;
    /// Changes the collective timeout.
    fn set_timeout(&self, timeout: Duration);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_roundtrip() {
        for f in [
            Failure::Timeout {
                missing: vec![3, 5],
                waited_ms: 1500,
            },
            Failure::PeerGone {
                rank: 2,
                how: "died".into(),
            },
            Failure::Mismatch {
                detail: "rank 1 sent F32[3]".into(),
            },
        ] {
            let mut b = Vec::new();
            f.encode(&mut b);
            assert_eq!(Failure::decode(&b).unwrap(), f);
        }
        assert!(Failure::decode(&[9]).is_err());
        assert!(Failure::decode(&[2, 1]).is_err());
    }
}
