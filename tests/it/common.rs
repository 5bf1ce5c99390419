//! Helpers shared by the integration tests: fixture paths, loading, comparisons.
#![allow(dead_code)]
use convnet::nn::weights::{read_state, read_tensors, StateDict};
use convnet::{ModelSpec, Network, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `convnet` binary.
pub fn convnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_convnet"))
        .args(args)
        .output()
        .unwrap()
}

/// A successful run's standard output.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A failed run: non-zero exit, one clear message, no panic.
pub fn fails(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        !o.status.success(),
        "expected failure, got: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    err
}

/// A path as a command-line argument.
pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/torch")
        .join(name)
}

pub fn spec(name: &str) -> ModelSpec {
    let p = fixture(name);
    ModelSpec::parse(
        &std::fs::read_to_string(&p).unwrap(),
        &p.display().to_string(),
    )
    .unwrap()
}

pub fn tensors(name: &str) -> BTreeMap<String, Tensor<f32>> {
    read_tensors(&fixture(name)).unwrap()
}

/// Every tensor of a fixture, float32 and int64 counters.
pub fn state(name: &str) -> StateDict {
    read_state(&fixture(name)).unwrap()
}

/// A network from a fixture model file with a fixture's weights.
pub fn net(model: &str, weights: &str) -> Network<f32> {
    let mut n = Network::<f32>::new(spec(model), Default::default(), 0);
    n.load_weights(&fixture(weights)).unwrap();
    n
}

/// max |a − b| / max |b|.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-30);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()))
        / scale
}

/// The first `train` training and `test` test digits of the embedded set, in memory.
pub fn embedded_cut(train: usize, test: usize) -> convnet::data::DataSplit {
    use convnet::data::{dataset, Dataset};
    let all = dataset::embedded().unwrap();
    let cut = |d: &Dataset, n: usize| {
        let per: usize = d.sample_shape.iter().product();
        let mut px = vec![0.0f32; n * per];
        d.gather(&(0..n).collect::<Vec<_>>(), &mut px).unwrap();
        let pixels = dataset::Pixels::F32(px);
        let labels = d.labels[..n].to_vec();
        Dataset::new(d.source.clone(), pixels, d.sample_shape, labels).unwrap()
    };
    convnet::data::DataSplit {
        train: cut(&all.train, train),
        test: all.test.as_ref().map(|t| cut(t, test)),
        classes: Vec::new(),
        skipped: 0,
    }
}

/// A PNG whose header says w×h (of colour type `colour`) and holds one empty data chunk.
pub fn lying_png(w: u32, h: u32, colour: u8) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, colour, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A baseline JPEG header saying w×h grey pixels, with no image data.
pub fn lying_jpeg(w: u16, h: u16) -> Vec<u8> {
    let mut out = vec![0xFF, 0xD8];
    // A quantisation table of ones.
    out.extend_from_slice(&[0xFF, 0xDB, 0x00, 0x43, 0x00]);
    out.extend_from_slice(&[1u8; 64]);
    // Start of frame: 8 bits, h, w, one component.
    out.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 0x08]);
    out.extend_from_slice(&h.to_be_bytes());
    out.extend_from_slice(&w.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x01, 0x11, 0x00]);
    out.extend_from_slice(&[0xFF, 0xD9]);
    out
}
