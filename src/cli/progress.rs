//! Progress display for training: an indicatif bar per epoch, one summary line per epoch, and
//! the run's `curves.png` redrawn after every saved epoch.
use crate::error::Result;
use crate::plot::charts::{save_curves, Curves};
use crate::train::trainer::{EpochMetrics, Observer, RunPaths};
use crate::train::Evaluation;
use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    epochs: usize,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Progress {
            bar: None,
            quiet,
            epochs: 0,
        }
    }
}

impl Observer for Progress {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, batches: usize) {
        self.epochs = epochs;
        if self.quiet {
            return;
        }
        let bar = ProgressBar::new(batches as u64);
        let style =
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("{epoch}/{epochs}"));
        self.bar = Some(bar);
    }
    fn batch(&mut self, done: usize, running_loss: f64, ips: f64) {
        if let Some(b) = &self.bar {
            b.set_position(done as u64);
            b.set_message(format!("loss {running_loss:.4}, {ips:.0} img/s"));
        }
    }
    fn epoch_end(&mut self, m: &EpochMetrics) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        let test = m.test.as_ref().map_or(String::new(), |t| {
            format!(
                "  test loss {:.4}  test acc {:.2}%",
                t.loss,
                100.0 * t.accuracy
            )
        });
        println!(
            "epoch {:>3}/{}  train loss {:.4}{test}  {:.1}s  {:.0} img/s",
            m.epoch, self.epochs, m.train_loss, m.seconds, m.images_per_second
        );
    }

    fn epoch_saved(&mut self, history: &[EpochMetrics], paths: &RunPaths) -> Result<()> {
        let test = |f: fn(&Evaluation) -> f64| {
            history
                .iter()
                .filter_map(|m| m.test.as_ref().map(f))
                .collect::<Vec<f64>>()
        };
        let train_loss: Vec<f64> = history.iter().map(|m| m.train_loss).collect();
        let (test_loss, test_accuracy) = (test(|e| e.loss), test(|e| e.accuracy));
        save_curves(
            &paths.curves(),
            &Curves {
                train_loss: &train_loss,
                test_loss: &test_loss,
                test_accuracy: &test_accuracy,
            },
        )
    }
}
