//! CIFAR-10's binary files: records of one label byte and 3,072 bytes of R, G, B planes (32×32).
use super::dataset::{read_class_names, Dataset, Pixels};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

const SIDE: usize = 32;
const RECORD: usize = 1 + 3 * SIDE * SIDE;
const CLASSES: usize = 10;

/// The folder holding the batches: DIR itself or DIR/cifar-10-batches-bin.
pub fn find(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.join("cifar-10-batches-bin")]
        .into_iter()
        .find(|d| d.join("data_batch_1.bin").is_file())
}

/// The training batches data_batch_1.bin … data_batch_5.bin (all five), the test batch
/// test_batch.bin if present, and the class names of batches.meta.txt (none without it).
pub fn load(dir: &Path) -> Result<(Dataset, Option<Dataset>, Vec<String>)> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    let mut spans = Vec::new(); // (file, records) of each batch, for errors about a label
    for i in 1..=5 {
        let p = dir.join(format!("data_batch_{i}.bin"));
        if !p.is_file() {
            return Err(Error::format(
                &p,
                "missing: CIFAR-10 has five training batches, data_batch_1.bin … data_batch_5.bin",
            ));
        }
        let before = labels.len();
        read_batch(&p, &mut pixels, &mut labels)?;
        spans.push((p, labels.len() - before));
    }
    let train = Dataset::new(
        dir.to_path_buf(),
        Pixels::U8(pixels),
        [3, SIDE, SIDE],
        labels,
    )?
    .with_label_sources(spans)?;
    let test_path = dir.join("test_batch.bin");
    let test = if test_path.is_file() {
        let (mut px, mut ls) = (Vec::new(), Vec::new());
        read_batch(&test_path, &mut px, &mut ls)?;
        Some(Dataset::new(
            test_path,
            Pixels::U8(px),
            [3, SIDE, SIDE],
            ls,
        )?)
    } else {
        None
    };
    let meta = dir.join("batches.meta.txt");
    let classes = if meta.is_file() {
        let names = read_class_names(&meta)?;
        if names.len() != CLASSES {
            return Err(Error::format(
                &meta,
                format!("lists {} class names; CIFAR-10 has {CLASSES}", names.len()),
            ));
        }
        names
    } else {
        Vec::new()
    };
    Ok((train, test, classes))
}

/// Appends the records of one batch file: (3, 32, 32) pixels and labels.
fn read_batch(path: &Path, pixels: &mut Vec<u8>, labels: &mut Vec<u32>) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        return Err(Error::format(
            path,
            format!(
                "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records",
                bytes.len()
            ),
        ));
    }
    pixels.reserve(bytes.len() / RECORD * (RECORD - 1));
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] as usize >= CLASSES {
            return Err(Error::format(
                path,
                format!("record {i} has label {}; CIFAR-10 labels are 0–9", rec[0]),
            ));
        }
        labels.push(rec[0] as u32);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok(())
}
