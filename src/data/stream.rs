//! Image files as pixels: one file decoded to the set's channels and size (the loader's
//! check and the source of a set too large to keep decoded, read again at every gather).
use super::image::decode_image_u8;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Image budget by default: sets whose decoded pixels fit are decoded once and kept.
pub const DEFAULT_CACHE_MB: usize = 4096;

/// What became of one file.
pub enum Outcome {
    /// [channels, h, w] bytes.
    Pixels(Vec<u8>),
    /// Unreadable or corrupt: skipped under `skip_bad`.
    Bad(Error),
    /// Readable but unfit for the model: always an error.
    Unfit(Error),
}

/// How the files of a set are decoded: to `channels` (1: grey as PIL's "L", 3: RGB) and
/// [h, w], fitted to it (shorter side, centre crop) when `resize`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decode {
    pub channels: usize,
    pub size: [usize; 2],
    pub resize: bool,
}

impl Decode {
    /// Reads and decodes one file.
    pub fn file(&self, path: &Path) -> Outcome {
        self.file_with(path, &mut Vec::new())
    }

    /// [`Decode::file`] reading into `buf`, which a loop over many files reuses (no allocation
    /// and no size query per file).
    pub fn file_with(&self, path: &Path, buf: &mut Vec<u8>) -> Outcome {
        use std::io::Read;
        buf.clear();
        let read = std::fs::File::open(path).and_then(|f| f.take(u64::MAX).read_to_end(buf));
        if let Err(e) = read {
            return Outcome::Bad(Error::io(path, e));
        }
        let [h, w] = self.size;
        let fit = self.resize.then_some(self.size);
        match decode_image_u8(buf, path, self.channels, fit) {
            Err(e) => Outcome::Bad(e),
            Ok((_, ih, iw)) if (ih, iw) != (h, w) => Outcome::Unfit(Error::format(
                path,
                format!(
                    "the image is {iw}×{ih} pixels but the model takes {w}×{h} \
                     (width × height); pass --resize to fit it"
                ),
            )),
            Ok((px, _, _)) => Outcome::Pixels(px),
        }
    }
}

/// Image files read from disk at every gather: the pixels of a set larger than the cache
/// budget, so that memory holds only the batches in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFiles {
    pub paths: Vec<PathBuf>,
    pub decode: Decode,
}

impl ImageFiles {
    /// The pixels of file `i` as [0, 1] floats into `out` (its sample's length).
    pub fn read_into(&self, i: usize, out: &mut [f32]) -> Result<()> {
        match self.decode.file(&self.paths[i]) {
            Outcome::Pixels(px) => {
                out.iter_mut()
                    .zip(&px)
                    .for_each(|(d, &s)| *d = s as f32 / 255.0);
                Ok(())
            }
            Outcome::Bad(e) | Outcome::Unfit(e) => Err(e),
        }
    }
}
