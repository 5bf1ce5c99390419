//! The IDX format of MNIST (raw or gzip), checked against the file's length before allocating.
use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// An unsigned-byte IDX array: dims (e.g. [N, H, W] for images, [N] for labels) and data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads an IDX file from disk; gzip is detected by its magic bytes.
pub fn read_idx_file(path: &Path) -> Result<IdxArray> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_idx(&bytes, path)
}

/// Parses IDX bytes (gzip or raw); `path` names the source in errors.
pub fn parse_idx(bytes: &[u8], path: &Path) -> Result<IdxArray> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut dec = flate2::read::GzDecoder::new(bytes);
        parse_idx_stream(&mut dec, path)
    } else {
        parse_idx_stream(&mut &bytes[..], path)
    }
}

fn parse_idx_stream(r: &mut dyn Read, path: &Path) -> Result<IdxArray> {
    let io = |e: std::io::Error| Error::format(path, format!("cannot read IDX data: {e}"));
    let mut magic = [0u8; 4];
    r.read_exact(&mut magic)
        .map_err(|_| Error::format(path, "too short for an IDX header"))?;
    if magic[0] != 0 || magic[1] != 0 {
        return Err(Error::format(
            path,
            format!(
                "not an IDX file (magic bytes {:02x} {:02x} {:02x} {:02x})",
                magic[0], magic[1], magic[2], magic[3]
            ),
        ));
    }
    if magic[2] != 0x08 {
        return Err(Error::format(
            path,
            format!(
                "IDX element type 0x{:02x} is not supported (only unsigned bytes, 0x08)",
                magic[2]
            ),
        ));
    }
    let nd = magic[3] as usize;
    if nd == 0 || nd > 4 {
        return Err(Error::format(
            path,
            format!("IDX with {nd} dimensions is not supported (1 to 4)"),
        ));
    }
    let mut dims = Vec::with_capacity(nd);
    for _ in 0..nd {
        let mut d = [0u8; 4];
        r.read_exact(&mut d)
            .map_err(|_| Error::format(path, "truncated IDX header"))?;
        dims.push(u32::from_be_bytes(d) as usize);
    }
    let want = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::format(path, format!("IDX dimensions {dims:?} overflow")))?;
    // Read at most one byte more than claimed: memory grows with the data actually present,
    // never with what a (possibly hostile) header claims.
    let mut data = Vec::new();
    r.take(want as u64 + 1).read_to_end(&mut data).map_err(io)?;
    if data.len() < want {
        return Err(Error::format(
            path,
            format!(
                "truncated: the header claims {dims:?} = {want} bytes of data, the file holds {}",
                data.len()
            ),
        ));
    }
    if data.len() > want {
        return Err(Error::format(
            path,
            format!("{dims:?} needs {want} bytes of data but the file holds more"),
        ));
    }
    Ok(IdxArray { dims, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend(data);
        v
    }

    #[test]
    fn parses_and_rejects() {
        let p = Path::new("x.idx");
        let a = parse_idx(&idx(&[2, 2], &[1, 2, 3, 4]), p).unwrap();
        assert_eq!(a.dims, [2, 2]);
        assert_eq!(a.data, [1, 2, 3, 4]);
        let e = parse_idx(&idx(&[2, 3], &[1, 2, 3, 4]), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.idx") && e.contains("truncated"), "{e}");
        assert!(parse_idx(&[1, 2, 8, 1], p)
            .unwrap_err()
            .to_string()
            .contains("not an IDX"));
        // A hostile header claiming 4e9 × 4e9 elements is refused without allocating.
        let e = parse_idx(&idx(&[u32::MAX, u32::MAX, 1000], &[]), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("overflow") || e.contains("truncated"), "{e}");
        assert!(parse_idx(&idx(&[60000, 28, 28], &[0; 10]), p)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }
}
