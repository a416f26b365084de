//! CRC-32C (Castagnoli), the checksum of TFRecord framing, table-driven, one byte at a time.
//! Metrics records are a few hundred bytes, so the 256-entry table is fast enough.

/// The Castagnoli polynomial, bit-reversed (the CRC is computed least-significant bit first).
const POLY_REVERSED: u32 = 0x82F6_3B78;

/// `TABLE[b]` is the CRC of the single byte `b`, built at compile time.
const TABLE: [u32; 256] = build_table();

const fn build_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = byte as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY_REVERSED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[byte] = crc;
        byte += 1;
    }
    table
}

/// CRC-32C of `data` (initial value and final xor `0xFFFF_FFFF`, as in iSCSI and TFRecord).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc = TABLE[((crc ^ u32::from(byte)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC: rotate right by 15 and add a constant, so that a CRC stored inside
/// checksummed data does not make the outer checksum degenerate.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xA282_EAD8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_check_values() {
        // The standard CRC-32C check value, and vectors from RFC 3720 appendix B.4.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn mask_is_rotate_and_add() {
        // 0xE3069283 rotated right by 15 is 0x2507C60D; + 0xA282EAD8 wraps to 0xC78AB0E5.
        assert_eq!(0xE306_9283u32.rotate_right(15), 0x2507_C60D);
        assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
    }
}
