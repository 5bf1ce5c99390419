//! Image folders as torchvision's `ImageFolder` reads them: DIR/<class>/**/*.png|jpg|jpeg,
//! classes numbered in the sorted order of their folder names, decoded on all cores (and kept,
//! or read again at each gather when larger than the cache budget).
use super::dataset::{DataSplit, Dataset, LoadOptions, Pixels};
use super::image::is_image_path;
use super::stream::{Decode, ImageFiles, Outcome, DEFAULT_CACHE_MB};
use crate::error::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Whether a directory entry is a folder (`dir`) or a file, following symbolic links; the
/// entry's own type costs no system call, only a link needs one.
fn entry_is(e: &std::fs::DirEntry, dir: bool) -> bool {
    match e.file_type() {
        Ok(t) if !t.is_symlink() => (dir && t.is_dir()) || (!dir && t.is_file()),
        _ => {
            let p = e.path();
            if dir {
                p.is_dir()
            } else {
                p.is_file()
            }
        }
    }
}

/// The class folders of `root`, sorted by name.
fn class_dirs(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).map_err(|e| Error::io(root, e))? {
        let e = e.map_err(|e| Error::io(root, e))?;
        let p = e.path();
        if entry_is(&e, true) {
            out.push((e.file_name().to_string_lossy().into_owned(), p));
        }
    }
    out.sort();
    Ok(out)
}

/// The image files under `dir`, in torchvision's order: folders by their path, and within a
/// folder files by name (`sorted(os.walk(dir))`, then `sorted(fnames)`).
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut folders = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < folders.len() {
        let d = folders[i].clone();
        for e in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let e = e.map_err(|e| Error::io(&d, e))?;
            if entry_is(&e, true) {
                folders.push(e.path());
            }
        }
        i += 1;
    }
    folders.sort_by_key(|p| p.to_string_lossy().into_owned());
    let mut files = Vec::new();
    for d in folders {
        let mut here: Vec<PathBuf> = std::fs::read_dir(&d)
            .map_err(|e| Error::io(&d, e))?
            .filter_map(|e| e.ok().filter(|e| entry_is(e, false)).map(|e| e.path()))
            .filter(|p| is_image_path(p))
            .collect();
        here.sort_by_key(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        files.extend(here);
    }
    Ok(files)
}

/// True when `root` has a class folder holding an image somewhere below it.
fn looks_like_folder_set(root: &Path) -> bool {
    class_dirs(root).is_ok_and(|classes| {
        classes
            .iter()
            .any(|(_, d)| image_files(d).is_ok_and(|f| !f.is_empty()))
    })
}

/// (file, label) of each image of a split.
type Items = Vec<(PathBuf, u32)>;
/// (class folder, how many images) of each class of a split, in label order.
type Spans = Vec<(PathBuf, usize)>;

/// The files of one split, labelled by `classes` (the training split's names), and the
/// folder of each class present.
fn list(root: &Path, classes: &[String]) -> Result<(Items, Spans)> {
    let mut items = Vec::new();
    let mut spans = Vec::new();
    for (name, dir) in class_dirs(root)? {
        let label = classes.iter().position(|c| *c == name).ok_or_else(|| {
            Error::format(
                &dir,
                format!(
                    "class `{name}` is not among the training classes ({})",
                    classes.join(", ")
                ),
            )
        })?;
        let files = image_files(&dir)?;
        if files.is_empty() {
            return Err(Error::format(
                &dir,
                "class folder holds no .png, .jpg or .jpeg file",
            ));
        }
        spans.push((dir, files.len()));
        items.extend(files.into_iter().map(|f| (f, label as u32)));
    }
    Ok((items, spans))
}

/// Decodes the files of a split on all cores into one 8-bit set, or with `keep` false checks
/// them only and gives a set that decodes its files at every gather (bounded memory).
/// Unreadable files are an error naming the first of them in file order, or with `skip_bad`
/// are left out and counted. Returns the set and how many files were skipped.
fn decode(
    root: &Path,
    items: &[(PathBuf, u32)],
    spans: &[(PathBuf, usize)],
    dec: Decode,
    skip_bad: bool,
    keep: bool,
) -> Result<(Dataset, usize)> {
    let outcomes: Vec<Outcome> = items
        .par_iter()
        .map_init(Vec::new, |buf, (path, _)| match dec.file_with(path, buf) {
            Outcome::Pixels(_) if !keep => Outcome::Pixels(Vec::new()),
            o => o,
        })
        .collect();
    let [h, w] = dec.size;
    let per = dec.channels * h * w;
    let mut pixels = Vec::with_capacity(if keep { items.len() * per } else { 0 });
    let mut paths = Vec::new();
    let mut labels = Vec::with_capacity(items.len());
    let mut kept = Vec::with_capacity(spans.len());
    let mut skipped = 0;
    let mut outcomes = outcomes.into_iter().zip(items);
    for (dir, n) in spans {
        let mut count = 0;
        for (outcome, (path, label)) in outcomes.by_ref().take(*n) {
            match outcome {
                Outcome::Pixels(px) => {
                    if keep {
                        pixels.extend_from_slice(&px);
                    } else {
                        paths.push(path.clone());
                    }
                    labels.push(*label);
                    count += 1;
                }
                Outcome::Bad(e) if !skip_bad => return Err(e),
                Outcome::Bad(_) => skipped += 1,
                Outcome::Unfit(e) => return Err(e),
            }
        }
        if count == 0 {
            return Err(Error::format(
                dir,
                "no file of this class could be read (--skip-bad skipped them all)",
            ));
        }
        kept.push((dir.clone(), count));
    }
    let pixels = if keep {
        Pixels::U8(pixels)
    } else {
        Pixels::Files(Arc::new(ImageFiles { paths, decode: dec }))
    };
    let set = Dataset::new(root.to_path_buf(), pixels, [dec.channels, h, w], labels)?
        .with_label_sources(kept)?;
    Ok((set, skipped))
}

/// The channels and size the set is read at: the options', else those of its first image
/// that decodes (the very first unless `skip_bad`).
fn set_shape(items: &Items, o: &LoadOptions) -> Result<(usize, [usize; 2])> {
    if let (Some(c), Some(size)) = (o.channels, o.size) {
        return Ok((c, size));
    }
    let decode = |path: &Path| -> Result<image::DynamicImage> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        image::ImageReader::new(std::io::Cursor::new(&bytes))
            .with_guessed_format()
            .map_err(|e| Error::io(path, e))?
            .decode()
            .map_err(|e| Error::format(path, format!("cannot decode image: {e}")))
    };
    let mut first_err = None;
    for (path, _) in items {
        match decode(path) {
            Ok(img) => {
                let channels = o
                    .channels
                    .unwrap_or(if img.color().has_color() { 3 } else { 1 });
                let size = o
                    .size
                    .unwrap_or([img.height() as usize, img.width() as usize]);
                return Ok((channels, size));
            }
            Err(e) if o.skip_bad => {
                first_err.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(first_err.unwrap_or_else(|| Error::invalid("no image to read")))
}

/// Loads DIR/train/<class>/ (with DIR/test/<class>/ or DIR/val/<class>/ as the test set), or
/// DIR/<class>/ alone (a test set only by `val_split`). None when DIR is neither.
pub fn load(dir: &Path, o: &LoadOptions) -> Result<Option<DataSplit>> {
    let train_root = dir.join("train");
    let (train_root, test_root) = if train_root.is_dir() && looks_like_folder_set(&train_root) {
        let test = ["test", "val"]
            .iter()
            .map(|t| dir.join(t))
            .find(|p| p.is_dir());
        (train_root, test)
    } else if looks_like_folder_set(dir) {
        (dir.to_path_buf(), None)
    } else {
        return Ok(None);
    };
    if test_root.is_some() && o.val_split.is_some() {
        return Err(Error::invalid(format!(
            "{}: has its own test set ({}); --val-split is for a single image folder",
            dir.display(),
            test_root.as_deref().unwrap_or(dir).display()
        )));
    }
    let classes: Vec<String> = class_dirs(&train_root)?.into_iter().map(|c| c.0).collect();
    let (items, spans) = list(&train_root, &classes)?;
    let (channels, size) = set_shape(&items, o)?;
    let dec = Decode {
        channels,
        size,
        resize: o.resize,
    };
    let test_items = match &test_root {
        Some(t) => {
            let (items, spans) = list(t, &classes)?;
            if items.is_empty() {
                return Err(Error::format(t, "holds no class folder with images"));
            }
            Some((t, items, spans))
        }
        None => None,
    };
    // Kept decoded when train and test together fit the cache budget, else read at each gather.
    let files = items.len() + test_items.as_ref().map_or(0, |t| t.1.len());
    let budget = o
        .cache_mb
        .unwrap_or(DEFAULT_CACHE_MB)
        .saturating_mul(1 << 20);
    let keep = files.saturating_mul(channels * size[0] * size[1]) <= budget;
    let (mut train, mut skipped) = decode(&train_root, &items, &spans, dec, o.skip_bad, keep)?;
    let test = match (test_items, o.val_split) {
        (Some((t, items, spans)), _) => {
            let (set, s) = decode(t, &items, &spans, dec, o.skip_bad, keep)?;
            skipped += s;
            Some(set)
        }
        (None, Some(f)) => {
            let (rest, held) = hold_out(&train, f, o.seed)?;
            train = rest;
            Some(held)
        }
        (None, None) => None,
    };
    Ok(Some(DataSplit {
        train,
        test,
        classes,
        skipped,
    }))
}

/// Splits off a fraction `f` of each class (seeded, stratified): (the rest, the held-out part),
/// each in the set's order. Every class keeps at least one training image.
fn hold_out(set: &Dataset, f: f64, seed: u64) -> Result<(Dataset, Dataset)> {
    if !(f > 0.0 && f < 1.0) {
        return Err(Error::invalid(format!(
            "--val-split {f}: give a fraction between 0 and 1"
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut held = vec![false; set.len()];
    let mut start = 0;
    while start < set.len() {
        let label = set.labels[start];
        let end = start
            + set.labels[start..]
                .iter()
                .take_while(|&&l| l == label)
                .count();
        let mut idx: Vec<usize> = (start..end).collect();
        idx.shuffle(&mut rng);
        let k = ((idx.len() as f64 * f).round() as usize).min(idx.len() - 1);
        for &i in &idx[..k] {
            held[i] = true;
        }
        start = end;
    }
    let pick = |want: bool| -> Vec<usize> { (0..set.len()).filter(|&i| held[i] == want).collect() };
    Ok((set.subset(&pick(false))?, set.subset(&pick(true))?))
}
