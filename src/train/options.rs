//! Resolved training options: command line over the model's [train] table over plain defaults.
use super::recipe::TrainRecipe;
use crate::error::{Error, Result};
use crate::loss::LossKind;
use crate::nn::Init;
use crate::optim::{OptimizerConfig, OptimizerKind, Schedule};

/// Everything that determines a training run (with the seed, the run is reproducible).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    pub epochs: usize,
    pub batch_size: usize,
    pub optimizer: OptimizerConfig,
    pub lr: f64,
    pub schedule: Schedule,
    pub loss: LossKind,
    /// Largest random shift in pixels (0: no augmentation).
    pub augment: usize,
    /// RandomCrop's zero padding: shifts of up to this many pixels (0: none).
    pub crop_padding: usize,
    /// Mirror each training image with probability 1/2.
    pub hflip: bool,
    pub init: Init,
    pub seed: u64,
    /// Batches in random order each epoch (false: file order, last batch may be smaller).
    pub shuffle: bool,
}

impl Default for TrainOptions {
    /// The plain defaults: SGD, lr 0.01, no momentum or decay, constant, cross-entropy, batch 64, 10 epochs.
    fn default() -> Self {
        TrainOptions {
            epochs: 10,
            batch_size: 64,
            optimizer: OptimizerConfig::default(),
            lr: 0.01,
            schedule: Schedule::Constant,
            loss: LossKind::CrossEntropy,
            augment: 0,
            crop_padding: 0,
            hflip: false,
            init: Init::Pytorch,
            seed: 0,
            shuffle: true,
        }
    }
}

impl TrainOptions {
    /// Fills each option from the first recipe that sets it (command line first, then the
    /// model's table), else the plain default; then validates.
    pub fn resolve(layers: &[&TrainRecipe], seed: u64, shuffle: bool) -> Result<TrainOptions> {
        macro_rules! pick {
            ($f:ident, $default:expr) => {
                layers.iter().find_map(|r| r.$f).unwrap_or($default)
            };
        }
        let d = TrainOptions::default();
        let kind = pick!(optimizer, OptimizerKind::Sgd);
        // AdamW's decoupled decay defaults to 0.01, as PyTorch's.
        let wd_default = if kind == OptimizerKind::AdamW {
            0.01
        } else {
            0.0
        };
        let opts = TrainOptions {
            epochs: pick!(epochs, d.epochs),
            batch_size: pick!(batch_size, d.batch_size),
            optimizer: OptimizerConfig {
                kind,
                momentum: pick!(momentum, 0.0),
                nesterov: pick!(nesterov, false),
                weight_decay: pick!(weight_decay, wd_default),
                ..OptimizerConfig::default()
            },
            lr: pick!(lr, d.lr),
            schedule: pick!(schedule, d.schedule),
            loss: pick!(loss, d.loss),
            augment: pick!(augment, d.augment),
            crop_padding: pick!(crop_padding, d.crop_padding),
            hflip: pick!(hflip, d.hflip),
            init: pick!(init, d.init),
            seed,
            shuffle,
        };
        opts.validate()?;
        Ok(opts)
    }

    /// Rejects values no run can use.
    pub fn validate(&self) -> Result<()> {
        let o = &self.optimizer;
        let bad = |m: String| Err(Error::invalid(m));
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if self.batch_size == 0 {
            return bad("batch size must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!(
                "learning rate must be a positive finite number, got {}",
                self.lr
            ));
        }
        if !(o.momentum.is_finite() && (0.0..1.0).contains(&o.momentum)) {
            return bad(format!("momentum must be in [0, 1), got {}", o.momentum));
        }
        if o.nesterov && (o.kind != OptimizerKind::Sgd || o.momentum == 0.0) {
            return bad("nesterov needs the sgd optimizer with a momentum above 0".into());
        }
        if self.augment > 0 && self.crop_padding > 0 {
            return bad(format!(
                "augment {} and crop_padding {} are the same random shifts: give one of them",
                self.augment, self.crop_padding
            ));
        }
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return bad(format!(
                "weight decay must be a non-negative finite number, got {}",
                o.weight_decay
            ));
        }
        Ok(())
    }

    /// Largest random shift of the augmentation: `augment` or `crop_padding`, whichever is set.
    pub fn shift(&self) -> usize {
        self.augment.max(self.crop_padding)
    }

    /// The options as a [train] recipe (every field set), stored with a run for --resume.
    pub fn to_recipe(&self) -> TrainRecipe {
        TrainRecipe {
            optimizer: Some(self.optimizer.kind),
            lr: Some(self.lr),
            momentum: Some(self.optimizer.momentum),
            nesterov: Some(self.optimizer.nesterov),
            weight_decay: Some(self.optimizer.weight_decay),
            schedule: Some(self.schedule),
            epochs: Some(self.epochs),
            batch_size: Some(self.batch_size),
            loss: Some(self.loss),
            augment: Some(self.augment),
            crop_padding: Some(self.crop_padding),
            hflip: Some(self.hflip),
            init: Some(self.init),
        }
    }
}
