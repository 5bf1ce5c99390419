//! Labelled image sets: a directory in IDX or npy layout, or the embedded MNIST subset.
use super::idx::{parse_idx, read_idx_file, IdxArray};
use super::npy::{read_npy, NpyData};
use super::stream::ImageFiles;
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Pixel storage: bytes stay bytes (4× less memory), scaled to [0, 1] when a batch is gathered;
/// image files beyond the cache budget stay on disk and are decoded at each gather.
#[derive(Clone, Debug, PartialEq)]
pub enum Pixels {
    U8(Vec<u8>),
    F32(Vec<f32>),
    Files(Arc<ImageFiles>),
}

/// N images of one shape with their class labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Where it came from, for messages.
    pub source: PathBuf,
    pixels: Pixels,
    /// [C, H, W] of one image.
    pub sample_shape: [usize; 3],
    pub labels: Vec<u32>,
    /// Where the labels came from, in order: (file or folder, how many labels), so that an
    /// error about a label names its file and its place there.
    label_sources: Vec<(PathBuf, usize)>,
}

/// A training set, an optional test set, and the class names (empty when the data has none).
#[derive(Clone, Debug)]
pub struct DataSplit {
    pub train: Dataset,
    pub test: Option<Dataset>,
    pub classes: Vec<String>,
    /// Image files skipped as unreadable (`skip_bad`).
    pub skipped: usize,
}

/// How a data directory is read for a model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadOptions {
    /// Channels of the model's input: image files are decoded to them (1: grey as PIL's "L",
    /// 3: RGB) and 8-bit sets of the other count converted. None: as the data has them (the
    /// first image's, for image files).
    pub channels: Option<usize>,
    /// [H, W] of the model's input that image files must have; None: the first image's size.
    pub size: Option<[usize; 2]>,
    /// Fit images of another size (shorter side to the input size, then centre crop).
    pub resize: bool,
    /// Hold out this fraction of each class of a single image folder as the test set.
    pub val_split: Option<f64>,
    /// Seed of the held-out choice.
    pub seed: u64,
    /// Skip (and count) unreadable image files instead of stopping at the first.
    pub skip_bad: bool,
    /// Image folders whose decoded pixels (train and test) exceed this many MiB are read from
    /// disk at every batch instead of kept; None: [`super::stream::DEFAULT_CACHE_MB`].
    pub cache_mb: Option<usize>,
}

impl Dataset {
    /// Checks that pixels and labels agree in count and that there is at least one image.
    pub fn new(
        source: PathBuf,
        pixels: Pixels,
        sample_shape: [usize; 3],
        labels: Vec<u32>,
    ) -> Result<Dataset> {
        let per: usize = sample_shape.iter().product();
        let n_px = match &pixels {
            Pixels::U8(v) => v.len(),
            Pixels::F32(v) => v.len(),
            Pixels::Files(f) => f.paths.len() * per,
        };
        if labels.is_empty() {
            return Err(Error::format(&source, "the data set is empty"));
        }
        if per == 0 || n_px != labels.len() * per {
            return Err(Error::format(
                &source,
                format!("{} images but {} labels", n_px / per.max(1), labels.len()),
            ));
        }
        let label_sources = vec![(source.clone(), labels.len())];
        Ok(Dataset {
            source,
            pixels,
            sample_shape,
            labels,
            label_sources,
        })
    }

    /// Names where the labels came from: consecutive (source, count) spans covering them all.
    pub fn with_label_sources(mut self, spans: Vec<(PathBuf, usize)>) -> Result<Dataset> {
        let total: usize = spans.iter().map(|s| s.1).sum();
        if total != self.labels.len() {
            return Err(Error::format(
                &self.source,
                format!(
                    "{} labels but {total} in its label files",
                    self.labels.len()
                ),
            ));
        }
        self.label_sources = spans;
        Ok(self)
    }

    /// The file (or folder) label `i` came from, and its place there.
    fn label_source(&self, mut i: usize) -> (&Path, usize) {
        for (p, n) in &self.label_sources {
            if i < *n {
                return (p, i);
            }
            i -= n;
        }
        (&self.source, i)
    }

    /// The samples at `indices` (in that order), with their label sources.
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        let per: usize = self.sample_shape.iter().product();
        let pixels = match &self.pixels {
            Pixels::U8(v) => Pixels::U8(
                indices
                    .iter()
                    .flat_map(|&i| &v[i * per..(i + 1) * per])
                    .copied()
                    .collect(),
            ),
            Pixels::F32(v) => Pixels::F32(
                indices
                    .iter()
                    .flat_map(|&i| &v[i * per..(i + 1) * per])
                    .copied()
                    .collect(),
            ),
            Pixels::Files(f) => Pixels::Files(Arc::new(ImageFiles {
                paths: indices.iter().map(|&i| f.paths[i].clone()).collect(),
                decode: f.decode,
            })),
        };
        let mut spans: Vec<(PathBuf, usize)> = Vec::new();
        for &i in indices {
            let (p, _) = self.label_source(i);
            match spans.last_mut() {
                Some((q, n)) if q.as_path() == p => *n += 1,
                _ => spans.push((p.to_path_buf(), 1)),
            }
        }
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        Dataset::new(self.source.clone(), pixels, self.sample_shape, labels)?
            .with_label_sources(spans)
    }

    /// Pixels of 1 or 3 channels as the other (grey as PIL's "L"; grey copied into R, G and
    /// B); float pixels and other channel counts stay as they are.
    pub fn with_channels(mut self, channels: usize) -> Dataset {
        let [c, h, w] = self.sample_shape;
        if let Pixels::Files(f) = &self.pixels {
            if matches!((c, channels), (3, 1) | (1, 3)) {
                let mut files = ImageFiles::clone(f);
                files.decode.channels = channels;
                self.pixels = Pixels::Files(Arc::new(files));
                self.sample_shape = [channels, h, w];
            }
            return self;
        }
        let Pixels::U8(v) = &self.pixels else {
            return self;
        };
        let plane = h * w;
        let converted: Vec<u8> = match (c, channels) {
            (3, 1) => v
                .chunks_exact(3 * plane)
                .flat_map(|img| {
                    (0..plane).map(move |i| {
                        super::image::luma(img[i], img[plane + i], img[2 * plane + i])
                    })
                })
                .collect(),
            (1, 3) => v
                .chunks_exact(plane)
                .flat_map(|img| img.iter().chain(img).chain(img).copied())
                .collect(),
            _ => return self,
        };
        self.pixels = Pixels::U8(converted);
        self.sample_shape = [channels, h, w];
        self
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Copies the images at `indices` into `out` (B, C, H, W) as floats (bytes scaled by 1/255);
    /// image files are decoded on all cores, and one that no longer decodes is an error.
    pub fn gather(&self, indices: &[usize], out: &mut [f32]) -> Result<()> {
        let per: usize = self.sample_shape.iter().product();
        let samples = out.chunks_exact_mut(per).zip(indices);
        match &self.pixels {
            Pixels::U8(v) => samples.for_each(|(dst, &i)| {
                dst.iter_mut()
                    .zip(&v[i * per..(i + 1) * per])
                    .for_each(|(d, &s)| *d = s as f32 / 255.0)
            }),
            Pixels::F32(v) => {
                samples.for_each(|(dst, &i)| dst.copy_from_slice(&v[i * per..(i + 1) * per]))
            }
            Pixels::Files(f) => {
                return out
                    .par_chunks_exact_mut(per)
                    .zip(indices)
                    .try_for_each(|(dst, &i)| f.read_into(i, dst))
            }
        }
        Ok(())
    }

    /// Whether the pixels are read from disk at each gather (a set beyond the cache budget).
    pub fn streamed(&self) -> bool {
        matches!(self.pixels, Pixels::Files(_))
    }

    /// The largest label plus one.
    pub fn classes(&self) -> usize {
        self.labels.iter().max().map_or(0, |&m| m as usize + 1)
    }

    /// Checks the set against a model's input shape and number of outputs.
    pub fn check_fits(&self, input: [usize; 3], outputs: usize) -> Result<()> {
        if self.sample_shape != input {
            return Err(Error::format(
                &self.source,
                format!(
                    "images are {:?} (C, H, W) but the model takes {:?}",
                    self.sample_shape, input
                ),
            ));
        }
        if let Some((i, &l)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= outputs)
        {
            let (file, at) = self.label_source(i);
            return Err(Error::format(
                file,
                format!("label {l} (item {at}) is beyond the model's {outputs} outputs"),
            ));
        }
        Ok(())
    }
}

/// The real MNIST subset shipped inside the binary: 4,000 training and 1,000 test digits.
pub fn embedded() -> Result<DataSplit> {
    const TRAIN_X: &[u8] = include_bytes!("../../data/mnist-5k/train-images-idx3-ubyte.gz");
    const TRAIN_Y: &[u8] = include_bytes!("../../data/mnist-5k/train-labels-idx1-ubyte.gz");
    const TEST_X: &[u8] = include_bytes!("../../data/mnist-5k/t10k-images-idx3-ubyte.gz");
    const TEST_Y: &[u8] = include_bytes!("../../data/mnist-5k/t10k-labels-idx1-ubyte.gz");
    let src = PathBuf::from("<embedded mnist-5k>");
    let train = from_idx(parse_idx(TRAIN_X, &src)?, parse_idx(TRAIN_Y, &src)?, &src)?;
    let test = from_idx(parse_idx(TEST_X, &src)?, parse_idx(TEST_Y, &src)?, &src)?;
    Ok(DataSplit {
        train,
        test: Some(test),
        classes: Vec::new(),
        skipped: 0,
    })
}

fn from_idx(images: IdxArray, labels: IdxArray, source: &Path) -> Result<Dataset> {
    let shape = match images.dims[..] {
        [_, h, w] => [1, h, w],
        [_, c, h, w] => [c, h, w],
        _ => {
            return Err(Error::format(
                source,
                format!(
                    "IDX images must have 3 or 4 dimensions, got {:?}",
                    images.dims
                ),
            ))
        }
    };
    if labels.dims.len() != 1 {
        return Err(Error::format(
            source,
            format!("IDX labels must have 1 dimension, got {:?}", labels.dims),
        ));
    }
    if images.dims[0] != labels.dims[0] {
        return Err(Error::format(
            source,
            format!("{} images but {} labels", images.dims[0], labels.dims[0]),
        ));
    }
    Dataset::new(
        source.to_path_buf(),
        Pixels::U8(images.data),
        shape,
        labels.data.into_iter().map(u32::from).collect(),
    )
}

/// `dir/name` or `dir/name.gz`, whichever exists.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    [dir.join(name), dir.join(format!("{name}.gz"))]
        .into_iter()
        .find(|p| p.is_file())
}

fn load_idx_pair(images: &Path, labels: &Path) -> Result<Dataset> {
    let x = read_idx_file(images)?;
    let y = read_idx_file(labels)?;
    if x.dims.first() != y.dims.first() {
        return Err(Error::format(
            images,
            format!(
                "{} images but {} labels in {}",
                x.dims.first().unwrap_or(&0),
                y.dims.first().unwrap_or(&0),
                labels.display()
            ),
        ));
    }
    let n = y.dims.first().copied().unwrap_or(0);
    from_idx(x, y, images)?.with_label_sources(vec![(labels.to_path_buf(), n)])
}

fn load_npy_pair(images: &Path, labels: &Path) -> Result<Dataset> {
    let x = read_npy(images)?;
    let (pixels, shape) = match (x.data, &x.shape[..]) {
        (NpyData::F32(v), &[_, c, h, w]) => (Pixels::F32(v), [c, h, w]),
        (NpyData::U8(v), &[_, h, w]) => (Pixels::U8(v), [1, h, w]),
        (NpyData::U8(v), &[_, c, h, w]) => (Pixels::U8(v), [c, h, w]),
        (d, s) => {
            let dt = match d {
                NpyData::F32(_) => "float32",
                NpyData::F64(_) => "float64",
                NpyData::U8(_) => "uint8",
                NpyData::Int(_) => "integer",
            };
            return Err(Error::format(images, format!("images must be float32 [N, C, H, W] or uint8 [N, H, W] / [N, C, H, W]; got {dt} {s:?}")));
        }
    };
    let y = read_npy(labels)?;
    let labels_v: Vec<i64> = match (y.data, y.shape.len()) {
        (NpyData::U8(v), 1) => v.into_iter().map(i64::from).collect(),
        (NpyData::Int(v), 1) => v,
        (_, _) => {
            return Err(Error::format(
                labels,
                format!(
                    "labels must be a 1-D integer array, got shape {:?}",
                    y.shape
                ),
            ))
        }
    };
    if let Some(bad) = labels_v.iter().find(|&&l| l < 0 || l > u32::MAX as i64) {
        return Err(Error::format(
            labels,
            format!("label {bad} is not a class index"),
        ));
    }
    let n = x.shape[0];
    if n != labels_v.len() {
        return Err(Error::format(
            images,
            format!(
                "{n} images but {} labels in {}",
                labels_v.len(),
                labels.display()
            ),
        ));
    }
    Dataset::new(
        images.to_path_buf(),
        pixels,
        shape,
        labels_v.into_iter().map(|l| l as u32).collect(),
    )?
    .with_label_sources(vec![(labels.to_path_buf(), n)])
}

/// What `load_dir` looks for, for its error when a directory holds none of them.
const LAYOUTS: &str =
    "MNIST IDX files (train-images-idx3-ubyte[.gz] + train-labels-idx1-ubyte[.gz]), \
npy arrays (train_images.npy + train_labels.npy), CIFAR-10 binary batches (data_batch_1.bin … \
in DIR or DIR/cifar-10-batches-bin), or image folders (DIR/train/<class>/*.png|jpg, or \
DIR/<class>/*.png|jpg)";

/// Loads a data directory, its layout detected from what it holds: MNIST's IDX files, npy
/// arrays (with an optional classes.txt), CIFAR-10's binary batches, or image folders as
/// torchvision's `ImageFolder` reads them. 8-bit sets are converted to `o.channels`.
pub fn load_dir(dir: &Path, o: &LoadOptions) -> Result<DataSplit> {
    if !dir.is_dir() {
        return Err(Error::format(
            dir,
            format!("not a directory (expected {LAYOUTS})"),
        ));
    }
    let mut split = load_layout(dir, o)?;
    if let Some(c) = o.channels {
        split.train = split.train.with_channels(c);
        split.test = split.test.map(|t| t.with_channels(c));
    }
    Ok(split)
}

fn load_layout(dir: &Path, o: &LoadOptions) -> Result<DataSplit> {
    // Sets of these layouts come with their test set (or none): a held-out part is for a
    // single image folder.
    let split = |train, test, classes| {
        if o.val_split.is_some() {
            return Err(Error::invalid(format!(
                "{}: --val-split holds out part of a single image folder (DIR/<class>/*), not of this layout",
                dir.display()
            )));
        }
        Ok(DataSplit {
            train,
            test,
            classes,
            skipped: 0,
        })
    };
    if let (Some(x), Some(y)) = (
        find(dir, "train-images-idx3-ubyte"),
        find(dir, "train-labels-idx1-ubyte"),
    ) {
        let train = load_idx_pair(&x, &y)?;
        let test = match (
            find(dir, "t10k-images-idx3-ubyte"),
            find(dir, "t10k-labels-idx1-ubyte"),
        ) {
            (Some(x), Some(y)) => Some(load_idx_pair(&x, &y)?),
            (None, None) => None,
            _ => {
                return Err(Error::format(
                    dir,
                    "has only one of t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte",
                ))
            }
        };
        return split(train, test, classes_txt(dir)?);
    }
    let (x, y) = (dir.join("train_images.npy"), dir.join("train_labels.npy"));
    if x.is_file() && y.is_file() {
        let train = load_npy_pair(&x, &y)?;
        let (tx, ty) = (dir.join("test_images.npy"), dir.join("test_labels.npy"));
        let test = match (tx.is_file(), ty.is_file()) {
            (true, true) => Some(load_npy_pair(&tx, &ty)?),
            (false, false) => None,
            _ => {
                return Err(Error::format(
                    dir,
                    "has only one of test_images.npy and test_labels.npy",
                ))
            }
        };
        return split(train, test, classes_txt(dir)?);
    }
    if let Some(d) = super::cifar::find(dir) {
        let (train, test, classes) = super::cifar::load(&d)?;
        return split(train, test, classes);
    }
    if let Some(s) = super::folder::load(dir, o)? {
        return Ok(s);
    }
    Err(Error::format(
        dir,
        format!("holds no data set: expected {LAYOUTS}"),
    ))
}

/// The class names of `dir/classes.txt` (none without the file).
fn classes_txt(dir: &Path) -> Result<Vec<String>> {
    let p = dir.join("classes.txt");
    if !p.is_file() {
        return Ok(Vec::new());
    }
    read_class_names(&p)
}

/// Class names, one per line of a text file (blank lines and surrounding spaces ignored).
pub fn read_class_names(p: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        return Err(Error::format(p, "lists no class names"));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_set_is_the_real_subset() {
        let d = embedded().unwrap();
        assert_eq!(d.train.len(), 4000);
        let test = d.test.unwrap();
        assert_eq!(test.len(), 1000);
        assert_eq!(d.train.sample_shape, [1, 28, 28]);
        // 500 of each class overall, as the subset was drawn.
        let mut counts = [0; 10];
        d.train
            .labels
            .iter()
            .chain(&test.labels)
            .for_each(|&l| counts[l as usize] += 1);
        assert_eq!(counts, [500; 10]);
        let mut px = vec![0.0; 784];
        d.train.gather(&[0], &mut px).unwrap();
        assert!(px.iter().all(|&v| (0.0..=1.0).contains(&v)) && px.contains(&1.0));
    }
}
