//! npy arrays (C order, little- or big-endian) read through `npyz`, sized against the file first.
use crate::error::{Error, Result};
use crate::io::write_atomic_with;
use npyz::{DType, Order, TypeChar, WriterBuilder};
use std::path::Path;

/// The element data of an npy file, in the widest type of its kind.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    U8(Vec<u8>),
    /// Any other integer dtype.
    Int(Vec<i64>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

impl NpyArray {
    /// The dtype as numpy names it, for messages.
    pub fn dtype_name(&self) -> &'static str {
        match self.data {
            NpyData::F32(_) => "float32",
            NpyData::F64(_) => "float64",
            NpyData::U8(_) => "uint8",
            NpyData::Int(_) => "integer",
        }
    }
}

/// Reads an npy file; Fortran order, structured and non-numeric dtypes are errors.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let read = || -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        let len = f.metadata()?.len() as usize;
        let mut bytes = Vec::with_capacity(len);
        crate::alloc::advise_huge_pages(bytes.spare_capacity_mut());
        f.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    let bytes = read().map_err(|e| Error::io(path, e))?;
    parse_npy(&bytes, path)
}

/// The header dictionary of an npy file, as numpy writes it:
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
#[derive(Debug, PartialEq)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<u64>,
    /// Offset of the data: the end of the header.
    data_start: usize,
}

/// Checks the header with a small strict parser before npyz sees it: npyz parses the header as
/// a general Python literal with a backtracking grammar that a crafted header of a few hundred
/// bytes can keep busy for minutes (found by fuzzing).
fn check_header(bytes: &[u8]) -> Result<Header, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not an npy file (no \\x93NUMPY magic)".into());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("npy format version {v} is not supported")),
    };
    if len > 65536 || start + len > bytes.len() {
        return Err(format!("header length {len} is out of range"));
    }
    let text = std::str::from_utf8(&bytes[start..start + len])
        .map_err(|_| "header is not text".to_string())?;
    let mut p = HeaderParser {
        s: text.trim_end().as_bytes(),
        i: 0,
    };
    p.header().map(|h| Header {
        data_start: start + len,
        ..h
    })
}

struct HeaderParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl HeaderParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!(
                "malformed header: expected `{}` at byte {}",
                c as char, self.i
            ))
        }
    }
    fn string(&mut self) -> Result<String, String> {
        self.ws();
        let q = *self
            .s
            .get(self.i)
            .ok_or("malformed header: unexpected end")?;
        if q != b'\'' && q != b'"' {
            return Err(format!(
                "malformed header: expected a string at byte {}",
                self.i
            ));
        }
        let start = self.i + 1;
        let end = self.s[start..]
            .iter()
            .position(|&c| c == q)
            .ok_or("malformed header: unterminated string")?
            + start;
        self.i = end + 1;
        Ok(String::from_utf8_lossy(&self.s[start..end]).into_owned())
    }
    fn word(&mut self) -> &[u8] {
        self.ws();
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_alphanumeric() {
            self.i += 1;
        }
        &self.s[start..self.i]
    }
    fn shape(&mut self) -> Result<Vec<u64>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            if self.eat(b')') {
                return Ok(dims);
            }
            let w = self.word();
            let d = std::str::from_utf8(w)
                .ok()
                .and_then(|w| w.trim_end_matches('L').parse::<u64>().ok())
                .ok_or("malformed header: bad shape")?;
            dims.push(d);
            if dims.len() > 32 {
                return Err("malformed header: more than 32 dimensions".into());
            }
            if !self.eat(b',') {
                self.expect(b')')?;
                return Ok(dims);
            }
        }
    }
    fn header(&mut self) -> Result<Header, String> {
        self.expect(b'{')?;
        let (mut descr, mut fortran, mut shape) = (None, None, None);
        loop {
            if self.eat(b'}') {
                break;
            }
            let key = self.string()?;
            self.expect(b':')?;
            match key.as_str() {
                "descr" => descr = Some(self.string()?),
                "fortran_order" => {
                    fortran = Some(match self.word() {
                        b"True" => true,
                        b"False" => false,
                        _ => {
                            return Err(
                                "malformed header: fortran_order must be True or False".into()
                            )
                        }
                    })
                }
                "shape" => shape = Some(self.shape()?),
                k => return Err(format!("unexpected header key `{k}`")),
            }
            if !self.eat(b',') {
                self.expect(b'}')?;
                break;
            }
        }
        self.ws();
        if self.i != self.s.len() {
            return Err("malformed header: text after the dictionary".into());
        }
        match (descr, fortran, shape) {
            (Some(descr), Some(fortran_order), Some(shape)) => Ok(Header {
                descr,
                fortran_order,
                shape,
                data_start: 0,
            }),
            _ => Err("header lacks descr, fortran_order or shape".into()),
        }
    }
}

/// Parses npy bytes; `path` names the source in errors.
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<NpyArray> {
    let bad = |m: String| Error::format(path, m);
    let header = check_header(bytes).map_err(|m| bad(format!("not a valid npy file: {m}")))?;
    if header.descr.len() > 8
        || !header
            .descr
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"<>|=".contains(&c))
    {
        return Err(bad(format!(
            "dtype {} is not supported (float32, float64 or integers)",
            header.descr
        )));
    }
    let file = npyz::NpyFile::new(bytes).map_err(|e| bad(format!("not a valid npy file: {e}")))?;
    if file.order() == Order::Fortran {
        return Err(bad(
            "Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into(),
        ));
    }
    let shape: Vec<usize> = file.shape().iter().map(|&d| d as usize).collect();
    let DType::Plain(ts) = file.dtype() else {
        return Err(bad("structured dtypes are not supported".into()));
    };
    let (kind, size) = (ts.type_char(), ts.size_field() as usize);
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    // Refuse a header that claims more than the file holds before anything is allocated.
    if n.checked_mul(size).is_none_or(|b| b > bytes.len()) {
        return Err(bad(format!("truncated: shape {shape:?} of {size}-byte elements needs more than the {} bytes in the file", bytes.len())));
    }
    let read = |e: std::io::Error| bad(format!("cannot read npy data: {e}"));
    // Little-endian floats, the common case, straight from the bytes into a buffer on huge
    // pages (npyz's element-by-element reader faults in a fresh buffer page by page).
    let raw = &bytes[header.data_start..];
    match header.descr.as_str() {
        "<f8" if raw.len() >= n * 8 => {
            let mut v = crate::alloc::filled(n, 0f64);
            for (d, c) in v.iter_mut().zip(raw.chunks_exact(8)) {
                *d = f64::from_le_bytes(c.try_into().expect("8 bytes"));
            }
            return Ok(NpyArray {
                shape,
                data: NpyData::F64(v),
            });
        }
        "<f4" if raw.len() >= n * 4 => {
            let mut v = crate::alloc::filled(n, 0f32);
            for (d, c) in v.iter_mut().zip(raw.chunks_exact(4)) {
                *d = f32::from_le_bytes(c.try_into().expect("4 bytes"));
            }
            return Ok(NpyArray {
                shape,
                data: NpyData::F32(v),
            });
        }
        _ => {}
    }
    let data = match (kind, size) {
        (TypeChar::Float, 4) => NpyData::F32(file.into_vec().map_err(read)?),
        (TypeChar::Float, 8) => NpyData::F64(file.into_vec().map_err(read)?),
        (TypeChar::Uint, 1) => NpyData::U8(file.into_vec().map_err(read)?),
        (TypeChar::Int, 1) => NpyData::Int(
            file.into_vec::<i8>()
                .map_err(read)?
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        (TypeChar::Int, 2) => NpyData::Int(
            file.into_vec::<i16>()
                .map_err(read)?
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        (TypeChar::Int, 4) => NpyData::Int(
            file.into_vec::<i32>()
                .map_err(read)?
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        (TypeChar::Int, 8) => NpyData::Int(file.into_vec::<i64>().map_err(read)?),
        (TypeChar::Uint, 2) => NpyData::Int(
            file.into_vec::<u16>()
                .map_err(read)?
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        (TypeChar::Uint, 4) => NpyData::Int(
            file.into_vec::<u32>()
                .map_err(read)?
                .into_iter()
                .map(i64::from)
                .collect(),
        ),
        (TypeChar::Uint, 8) => {
            let v = file.into_vec::<u64>().map_err(read)?;
            NpyData::Int(
                v.into_iter()
                    .map(|x| i64::try_from(x).unwrap_or(i64::MAX))
                    .collect(),
            )
        }
        _ => {
            return Err(bad(format!(
                "dtype {ts} is not supported (float32, float64 or integers)"
            )))
        }
    };
    let len = match &data {
        NpyData::F32(v) => v.len(),
        NpyData::F64(v) => v.len(),
        NpyData::U8(v) => v.len(),
        NpyData::Int(v) => v.len(),
    };
    if len != n {
        return Err(bad(format!(
            "holds {len} elements, its shape {shape:?} says {n}"
        )));
    }
    Ok(NpyArray { shape, data })
}

/// A float that npy stores as little-endian bytes ('<f4', '<f8').
trait LeFloat: npyz::AutoSerialize + Copy {
    const SIZE: usize;
    fn put(self, out: &mut [u8]);
}

impl LeFloat for f32 {
    const SIZE: usize = 4;
    fn put(self, out: &mut [u8]) {
        out.copy_from_slice(&self.to_le_bytes())
    }
}

impl LeFloat for f64 {
    const SIZE: usize = 8;
    fn put(self, out: &mut [u8]) {
        out.copy_from_slice(&self.to_le_bytes())
    }
}

fn encode<T: LeFloat>(
    out: &mut dyn std::io::Write,
    shape: &[usize],
    data: &[T],
) -> std::io::Result<()> {
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    // npyz writes the header as the writer begins; the data follows as raw little-endian bytes
    // in blocks (npyz's element-by-element writer took 7 % of a 2048² filter process). The
    // writer is dropped unfinished: with items missing, its finish writes nothing more.
    let mut header = Vec::new();
    drop(
        npyz::WriteOptions::<T>::new()
            .default_dtype()
            .shape(&shape)
            .writer(&mut header)
            .begin_nd()?,
    );
    out.write_all(&header)?;
    let mut block = vec![0u8; 8192 * T::SIZE];
    for chunk in data.chunks(8192) {
        let bytes = &mut block[..chunk.len() * T::SIZE];
        for (v, b) in chunk.iter().zip(bytes.chunks_exact_mut(T::SIZE)) {
            v.put(b);
        }
        out.write_all(bytes)?;
    }
    Ok(())
}

/// Writes a float32 array atomically.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write_atomic_with(path, |w| encode(w, shape, data))
}

/// Writes a float64 array atomically.
pub fn write_npy_f64(path: &Path, shape: &[usize], data: &[f64]) -> Result<()> {
    write_atomic_with(path, |w| encode(w, shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 npy preamble followed by `header`.
    fn with_header(header: &str) -> Vec<u8> {
        let mut v = b"\x93NUMPY\x01\x00".to_vec();
        v.extend((header.len() as u16).to_le_bytes());
        v.extend(header.as_bytes());
        v
    }

    #[test]
    fn strict_header() {
        let text = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }      \n";
        let h = check_header(&with_header(text)).unwrap();
        assert_eq!(
            h,
            Header {
                descr: "<f4".into(),
                fortran_order: false,
                shape: vec![2, 3],
                data_start: 10 + text.len(),
            }
        );
        let h = check_header(&with_header(
            "{\"shape\": (), \"descr\": \"|u1\", \"fortran_order\": True}\n",
        ))
        .unwrap();
        assert_eq!((h.shape, h.fortran_order), (Vec::<u64>::new(), true));
        assert_eq!(
            check_header(&with_header(
                "{'descr': '<i8', 'fortran_order': False, 'shape': (7,), }"
            ))
            .unwrap()
            .shape,
            [7]
        );
        for bad in [
            "{'descr': 1e999999}",
            "{'descr': '<f4', 'x': ((((((}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)} extra",
            "{'descr': '<f4'",
        ] {
            assert!(check_header(&with_header(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        write_npy_f32(&p, &[2, 3], &[1., 2., 3., 4., 5., 6.]).unwrap();
        let a = read_npy(&p).unwrap();
        assert_eq!(a.shape, [2, 3]);
        assert_eq!(a.data, NpyData::F32(vec![1., 2., 3., 4., 5., 6.]));
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 4]).unwrap();
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.contains("a.npy"), "{e}");
    }
}
