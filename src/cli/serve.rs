//! `convnet serve`: loads a trained model, its run's curves and example images, and serves them.
use super::commands::{load_data, load_trained};
use super::ImageArgs;
use crate::data::dataset;
use crate::error::Result;
use crate::serve::{bind, Examples, ServeConfig, ServedModel};
use crate::train::trainer::parse_metrics;
use std::path::{Path, PathBuf};

/// Example images the page offers at most.
const EXAMPLES: usize = 64;

pub struct ServeArgs {
    pub model: String,
    pub weights: Option<PathBuf>,
    pub data: Option<PathBuf>,
    pub images: ImageArgs,
    pub config: ServeConfig,
}

pub fn serve_cmd(a: ServeArgs) -> Result<()> {
    let net = load_trained(&a.model, a.weights, "serve")?;
    let run_metrics = Path::new(&a.model).join("metrics.csv");
    let metrics = if run_metrics.is_file() {
        parse_metrics(&run_metrics)?
    } else {
        Vec::new()
    };
    let input = net.spec().input;
    let classes = net.spec().classes.clone();
    // The test images of --data (its training images when it has none); without --data the
    // embedded test digits, when the model takes 1×28×28.
    let examples = match &a.data {
        Some(dir) => {
            let split = load_data(Some(dir), net.spec(), false, a.images, None, 0)?;
            let set = split.test.unwrap_or(split.train);
            set.check_fits(input, net.output_len())?;
            Some(Examples::from_dataset(&set, EXAMPLES, &classes)?)
        }
        None => dataset::embedded()?
            .test
            .filter(|t| t.sample_shape == input)
            .map(|t| Examples::from_dataset(&t, EXAMPLES, &classes))
            .transpose()?,
    };
    let model = ServedModel::new(net, &metrics, examples)?;
    let name = model.info().name.clone();
    let server = bind(model, &a.config)?;
    println!(
        "serving model `{name}` at http://{}/ (Ctrl-C or SIGTERM stops)",
        server.addr()
    );
    println!(
        "at most {} connections; timeouts: head {} s, body {} s + 1 s per {} bytes, idle {} s",
        server.max_connections(),
        a.config.header_timeout.as_secs_f64(),
        a.config.body_timeout.as_secs_f64(),
        a.config.min_body_rate,
        a.config.idle_timeout.as_secs_f64()
    );
    server.run_until_ctrl_c()?;
    println!("stopped");
    Ok(())
}
