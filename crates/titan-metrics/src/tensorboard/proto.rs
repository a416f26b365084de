//! The few protobuf messages of a TensorBoard event file, encoded by hand:
//!
//! ```text
//! Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//! Summary { repeated Value value = 1; }
//! Value   { string tag = 1; float simple_value = 2; }
//! ```
//!
//! Fields holding their proto3 default (step 0, empty string) are left out, as protobuf does.

/// Wire types used here.
const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// One scalar of a summary.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryValue {
    pub tag: String,
    pub simple_value: f32,
}

/// What an event carries: the file header or a summary of scalars.
#[derive(Debug, Clone, PartialEq)]
pub enum EventPayload {
    FileVersion(String),
    Summary(Vec<SummaryValue>),
}

/// A TensorBoard `Event`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub payload: EventPayload,
}

impl Event {
    /// The protobuf encoding of this event.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        put_key(&mut out, 1, WIRE_FIXED64);
        out.extend_from_slice(&self.wall_time.to_le_bytes());
        if self.step != 0 {
            put_key(&mut out, 2, WIRE_VARINT);
            // int64 encodes negatives as their 64-bit two's complement (10 bytes).
            put_varint(&mut out, self.step as u64);
        }
        match &self.payload {
            EventPayload::FileVersion(version) => put_bytes(&mut out, 3, version.as_bytes()),
            EventPayload::Summary(values) => {
                let mut summary = Vec::with_capacity(32 * values.len());
                for value in values {
                    put_bytes(&mut summary, 1, &encode_value(value));
                }
                put_bytes(&mut out, 5, &summary);
            }
        }
        out
    }
}

fn encode_value(value: &SummaryValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.tag.len() + 8);
    if !value.tag.is_empty() {
        put_bytes(&mut out, 1, value.tag.as_bytes());
    }
    put_key(&mut out, 2, WIRE_FIXED32);
    out.extend_from_slice(&value.simple_value.to_le_bytes());
    out
}

fn put_key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, WIRE_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Base-128 varint, least-significant group first, high bit set on all but the last byte.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7F) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let encode = |v: u64| {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            out
        };
        assert_eq!(encode(0), [0x00]);
        assert_eq!(encode(1), [0x01]);
        assert_eq!(encode(127), [0x7F]);
        assert_eq!(encode(128), [0x80, 0x01]);
        assert_eq!(encode(300), [0xAC, 0x02]);
        assert_eq!(encode(u64::MAX).len(), 10);
    }

    #[test]
    fn file_version_event_bytes() {
        let event = Event {
            wall_time: 1.5,
            step: 0,
            payload: EventPayload::FileVersion("brain.Event:2".to_string()),
        };
        let mut expected = vec![0x09];
        expected.extend_from_slice(&1.5f64.to_le_bytes());
        expected.extend_from_slice(&[0x1A, 13]);
        expected.extend_from_slice(b"brain.Event:2");
        assert_eq!(event.encode(), expected);
    }

    #[test]
    fn scalar_event_bytes() {
        let event = Event {
            wall_time: 2.0,
            step: 300,
            payload: EventPayload::Summary(vec![SummaryValue {
                tag: "lr".to_string(),
                simple_value: 0.5,
            }]),
        };
        let mut expected = vec![0x09];
        expected.extend_from_slice(&2.0f64.to_le_bytes());
        expected.extend_from_slice(&[0x10, 0xAC, 0x02]); // step = 300
                                                         // summary (field 5) { value (field 1) { tag "lr", simple_value 0.5 } }
        let mut value = vec![0x0A, 2, b'l', b'r', 0x15];
        value.extend_from_slice(&0.5f32.to_le_bytes());
        expected.extend_from_slice(&[0x2A, value.len() as u8 + 2, 0x0A, value.len() as u8]);
        expected.extend_from_slice(&value);
        assert_eq!(event.encode(), expected);
    }
}
