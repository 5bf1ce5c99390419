//! The code behind each subcommand: load inputs, call the library, print results.
use super::model_arg::{load_model, ModelArg};
use super::progress::Progress;
use super::{Cli, Command, ImageArgs, PlotCommand, TrainArgs, TrainedArgs};
use crate::data::idx::read_idx_file;
use crate::data::image::{decode_image_u8, is_image_path};
use crate::data::npy::{read_npy, write_npy_f32, NpyData};
use crate::data::{dataset, DataSplit, LoadOptions};
use crate::dist::Group;
use crate::error::{Error, Result};
use crate::nn::{Init, ModelSpec, Network};
use crate::optim::Optimizer;
use crate::tensor::Tensor;
use crate::train::eval::argmax;
use crate::train::recipe::TrainRecipe;
use crate::train::{evaluate, train, RunPaths, Start, TrainOptions, Trainer};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Runs one parsed command line.
/// Runs a command; `group` is the run's ranks when the process is one of several (`mpirun`),
/// which only `train` uses.
pub fn run(cli: Cli, group: Option<Arc<dyn Group>>) -> Result<()> {
    if let Some(n) = cli.threads {
        if n == 0 {
            return Err(Error::invalid("--threads must be at least 1"));
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| Error::invalid(format!("--threads: {e}")))?;
    }
    match cli.command {
        Command::Summary { model } => summary(&model),
        Command::Predict {
            trained: TrainedArgs { model, weights },
            input,
            resize,
            output,
        } => predict(&model, weights, &input, resize, output.as_deref()),
        Command::Train(args) => train_cmd(*args, group),
        Command::Export {
            trained: TrainedArgs { model, weights },
            output,
            opset,
        } => export_cmd(&model, weights, &output, opset),
        Command::Eval {
            trained: TrainedArgs { model, weights },
            data,
            images,
            plot,
        } => eval_cmd(&model, weights, data.as_deref(), images, plot),
        Command::Filter {
            input,
            kernels,
            mode,
            boundary,
            fill_value,
            method,
            correlate,
            stride,
            output,
        } => {
            let a = super::signal::FilterArgs {
                mode: mode.as_deref(),
                boundary: &boundary,
                fill_value,
                method: &method,
                correlate,
                stride,
            };
            super::signal::filter_cmd(&input, &kernels, &a, &output)
        }
        Command::Pool {
            input,
            kind,
            kernel,
            stride,
            output,
        } => {
            let kernel = parse_pair("--kernel", &kernel)?;
            let stride = stride.map(|s| parse_pair("--stride", &s)).transpose()?;
            super::signal::pool_cmd(&input, kind, kernel, stride, output.as_deref())
        }
        Command::Plot {
            what:
                PlotCommand::Activations {
                    derivatives,
                    functions,
                    output,
                },
        } => {
            let zs: Vec<f64> = (0..=400).map(|i| -5.0 + i as f64 * 0.025).collect();
            let curves = functions
                .split(',')
                .map(|name| {
                    let (spec, f, df) =
                        crate::nn::layers::sample_activation(name, &zs, "--functions")?;
                    Ok(crate::plot::charts::ActivationCurve {
                        name: spec.type_name().to_string(),
                        z: zs.clone(),
                        f,
                        df,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            crate::plot::charts::save_activations(&output, derivatives, &curves)?;
            println!("wrote {}", output.display());
            Ok(())
        }
        Command::Plot {
            what:
                PlotCommand::Filters {
                    trained: TrainedArgs { model, weights },
                    input,
                    output,
                },
        } => {
            let net = load_trained(&model, weights, "plot filters")?;
            super::plots::plot_filters(&net, input.as_deref(), &output)
        }
        Command::Collapse {
            trained: TrainedArgs { model, weights },
            output,
        } => collapse_cmd(&model, weights, &output),
        #[cfg(feature = "serve")]
        Command::Serve {
            trained: TrainedArgs { model, weights },
            data,
            images,
            host,
            port,
            max_body_mb,
            limits,
        } => super::serve::serve_cmd(super::serve::ServeArgs {
            model,
            weights,
            data,
            images,
            config: crate::serve::ServeConfig {
                host,
                port,
                body_limit: max_body_mb.saturating_mul(1 << 20),
                max_connections: limits.max_connections,
                header_timeout: seconds("header-timeout-secs", limits.header_timeout_secs)?,
                body_timeout: seconds("body-timeout-secs", limits.body_timeout_secs)?,
                min_body_rate: limits.min_body_rate,
                idle_timeout: seconds("idle-timeout-secs", limits.idle_timeout_secs)?,
                drain_timeout: seconds("drain-timeout-secs", limits.drain_timeout_secs)?,
            },
        }),
    }
}

/// A flag's seconds as a duration: finite and positive.
#[cfg(feature = "serve")]
fn seconds(flag: &str, s: f64) -> Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            Error::invalid(format!(
                "--{flag}: give a positive number of seconds, not {s}"
            ))
        })
}

/// "3" → (3, 3); "2,3" or "2x3" → (2, 3).
fn parse_pair(flag: &str, s: &str) -> Result<(usize, usize)> {
    let bad = || {
        Error::invalid(format!(
            "{flag}: expected N or H,W with positive integers, got `{s}`"
        ))
    };
    let v: Vec<usize> = s
        .split([',', 'x'])
        .map(|p| p.trim().parse().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    match v[..] {
        [n] if n > 0 => Ok((n, n)),
        [h, w] if h > 0 && w > 0 => Ok((h, w)),
        _ => Err(bad()),
    }
}

fn collapse_cmd(model: &str, weights: Option<PathBuf>, output: &Path) -> Result<()> {
    let net = load_trained(model, weights, "collapse")?;
    let runs = crate::nn::collapse::collapsible_runs(net.spec());
    if runs.is_empty() {
        println!(
            "nothing to collapse: no linear layers follow each other with only identity between"
        );
    }
    let small = crate::nn::collapse::collapse(&net)?;
    std::fs::create_dir_all(output).map_err(|e| Error::io(output, e))?;
    crate::io::write_atomic(
        &output.join("model.toml"),
        small.spec().to_toml().as_bytes(),
    )?;
    small.save_weights(&output.join("model.safetensors"))?;
    println!(
        "collapsed {} run(s): {} → {} layers, {} → {} parameters; saved in {}",
        runs.len(),
        net.spec().layers.len(),
        small.spec().layers.len(),
        thousands(net.param_count()),
        thousands(small.param_count()),
        output.display()
    );
    Ok(())
}

fn export_cmd(model: &str, weights: Option<PathBuf>, output: &Path, opset: i64) -> Result<()> {
    let net = load_trained(model, weights, "export")?;
    let options = crate::onnx::ExportOptions { opset };
    crate::onnx::write(&net, &options, model, output)?;
    let spec = net.spec();
    let [c, h, w] = spec.input;
    println!(
        "wrote {} (ONNX operator set {opset}): input [batch, {c}, {h}, {w}] pixels in [0, 1]{}, output logits [batch, {}]",
        output.display(),
        if spec.mean.is_empty() { "" } else { " (mean/std inside)" },
        net.output_len()
    );
    Ok(())
}

fn shape_text(s: &[usize]) -> String {
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("×")
}

/// 61706 → "61,706".
fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn summary(model: &str) -> Result<()> {
    let m = load_model(model)?;
    let net = Network::<f32>::new(m.spec, Init::Pytorch, 0);
    let spec = net.spec();
    println!("Model: {}   input {}", spec.name, shape_text(&spec.input));
    let rows = net.summary();
    let width = rows.iter().map(|r| r.index.len()).max().unwrap_or(0).max(5);
    let kinds = rows
        .iter()
        .map(|r| r.kind.len() + 2 * r.depth)
        .max()
        .unwrap_or(0)
        .max(5);
    println!(
        "{:<width$}  {:<kinds$} {:>14} {:>10} {:>9}",
        "index", "layer", "output shape", "params", "buffers"
    );
    let rule = "-".repeat(width + kinds + 38);
    println!("{rule}");
    for r in &rows {
        let kind = format!("{}{}", "  ".repeat(r.depth), r.kind);
        let buffers = if r.buffers > 0 {
            thousands(r.buffers)
        } else {
            String::new()
        };
        println!(
            "{:<width$}  {:<kinds$} {:>14} {:>10} {:>9}",
            r.index,
            kind,
            shape_text(&r.output_shape),
            thousands(r.params),
            buffers
        );
    }
    println!("{rule}");
    println!("Total parameters: {}", thousands(net.param_count()));
    let buffers: usize = rows
        .iter()
        .filter(|r| r.depth == 0)
        .map(|r| r.buffers)
        .sum();
    if buffers > 0 {
        println!(
            "Buffers (saved, not trained: running statistics, counters): {}",
            thousands(buffers)
        );
    }
    for (a, b) in crate::nn::collapse::collapsible_runs(net.spec()) {
        println!("note: layers {a}–{b} are linear maps in a row and collapse into one linear layer (convnet collapse)");
    }
    Ok(())
}

/// A network with its weights: from --weights, else the run directory's.
pub(super) fn load_trained(
    model: &str,
    weights: Option<PathBuf>,
    what: &str,
) -> Result<Network<f32>> {
    let ModelArg {
        spec, run_weights, ..
    } = load_model(model)?;
    let w = weights.or(run_weights).ok_or_else(|| {
        Error::invalid(format!(
            "{what} needs weights: pass --weights FILE or a run directory as --model"
        ))
    })?;
    let mut net = Network::<f32>::new(spec, Init::Pytorch, 0);
    net.load_weights(&w)?;
    Ok(net)
}

/// Reads prediction inputs as (N, C, H, W) with a display name per sample.
fn read_inputs(
    paths: &[PathBuf],
    input: [usize; 3],
    resize: bool,
) -> Result<(Tensor<f32>, Vec<String>)> {
    let [c, h, w] = input;
    let size_err = |p: &Path, got: String| {
        Error::format(
            p,
            format!("inputs are {got} but the model takes {c}×{h}×{w} (C×H×W)"),
        )
    };
    if paths.iter().all(|p| is_image_path(p)) {
        let mut data = Vec::with_capacity(paths.len() * c * h * w);
        for p in paths {
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            let (px, ih, iw) = decode_image_u8(&bytes, p, c, resize.then_some([h, w]))?;
            if (ih, iw) != (h, w) {
                return Err(Error::format(
                    p,
                    format!(
                        "the image is {c}×{ih}×{iw} but the model takes {c}×{h}×{w} (C×H×W); \
                         pass --resize to fit it"
                    ),
                ));
            }
            data.extend(px.into_iter().map(|v| v as f32 / 255.0));
        }
        let names = paths.iter().map(|p| p.display().to_string()).collect();
        return Ok((Tensor::from_vec(&[paths.len(), c, h, w], data)?, names));
    }
    let [p] = paths else {
        return Err(Error::invalid(
            "several --input files must all be PNG/JPEG images; give one .npy or IDX file alone",
        ));
    };
    let (data, n) = if p.extension().is_some_and(|e| e == "npy") {
        let a = read_npy(p)?;
        let data = match a.data {
            NpyData::F32(v) => v,
            NpyData::F64(v) => v.into_iter().map(|x| x as f32).collect(),
            _ => {
                return Err(Error::format(
                    p,
                    format!(
                        "dtype {} is not supported; predict takes float32 [N, C, H, W]",
                        a.dtype_name()
                    ),
                ))
            }
        };
        let n = match a.shape[..] {
            [n, ac, ah, aw] if [ac, ah, aw] == input => n,
            _ => return Err(size_err(p, format!("{:?}", a.shape))),
        };
        (data, n)
    } else {
        let a = read_idx_file(p)?;
        let n = match a.dims[..] {
            [n, ah, aw] if c == 1 && [ah, aw] == [h, w] => n,
            [n, ac, ah, aw] if [ac, ah, aw] == input => n,
            _ => return Err(size_err(p, format!("{:?}", a.dims))),
        };
        (a.data.into_iter().map(|v| v as f32 / 255.0).collect(), n)
    };
    let names = (0..n).map(|i| format!("{}[{i}]", p.display())).collect();
    Ok((Tensor::from_vec(&[n, c, h, w], data)?, names))
}

fn predict(
    model: &str,
    weights: Option<PathBuf>,
    input: &[PathBuf],
    resize: bool,
    output: Option<&Path>,
) -> Result<()> {
    let mut net = load_trained(model, weights, "predict")?;
    let (x, names) = read_inputs(input, net.spec().input, resize)?;
    let n = x.shape()[0];
    let k = net.output_len();
    let mut out = Vec::with_capacity(n * k); // (N, K)
    let batch = 500;
    for s in (0..n).step_by(batch) {
        out.extend_from_slice(net.infer_rows(&x, s..(s + batch).min(n))?.data());
    }
    match output {
        Some(path) => {
            write_npy_f32(path, &[n, k], &out)?;
            println!("wrote {n}×{k} outputs to {}", path.display());
        }
        None => {
            for (name, row) in names.iter().zip(out.chunks(k)) {
                let c = argmax(row);
                let m = row[c];
                let z: f64 = row.iter().map(|&v| ((v - m) as f64).exp()).sum();
                println!("{name}: {} {:.1} %", net.spec().class_name(c), 100.0 / z);
            }
        }
    }
    Ok(())
}

/// The data of `dir` (the embedded digits without it) read for a model of `spec`: image
/// files decoded to its channels and size, 8-bit sets converted to its channels. A preset
/// (`adapt`) takes the data as it is instead, unless `--resize` fits the images to it.
/// Prints how many bad files were skipped.
pub(super) fn load_data(
    dir: Option<&Path>,
    spec: &ModelSpec,
    adapt: bool,
    images: ImageArgs,
    val_split: Option<f64>,
    seed: u64,
) -> Result<DataSplit> {
    let Some(d) = dir else {
        if val_split.is_some() {
            return Err(Error::invalid(
                "--val-split holds out part of an image folder given by --data",
            ));
        }
        return dataset::embedded();
    };
    let [c, h, w] = spec.input;
    // A preset fitted with --resize keeps its own input: images are fitted to it.
    let fixed = !adapt || images.resize;
    let o = LoadOptions {
        channels: fixed.then_some(c),
        size: fixed.then_some([h, w]),
        resize: images.resize,
        val_split,
        seed,
        skip_bad: images.skip_bad,
        cache_mb: Some(images.cache_mb),
    };
    let split = dataset::load_dir(d, &o)?;
    if split.skipped > 0 {
        println!(
            "skipped {} unreadable image file(s) in {}",
            split.skipped,
            d.display()
        );
    }
    Ok(split)
}

/// The class names a run records: the model's own, else the data's (padded with index
/// text to the model's outputs). Names that disagree with the model's are an error.
fn run_classes(spec: &ModelSpec, data: &DataSplit, source: &str) -> Result<Vec<String>> {
    if data.classes.is_empty() {
        return Ok(spec.classes.clone());
    }
    let outputs = spec.output_len();
    if !spec.classes.is_empty() {
        if spec.classes[..data.classes.len().min(outputs)] != data.classes[..] {
            return Err(Error::invalid(format!(
                "the model's classes [{}] are not the data's [{}] ({source})",
                spec.classes.join(", "),
                data.classes.join(", ")
            )));
        }
        return Ok(spec.classes.clone());
    }
    if data.classes.len() > outputs {
        return Err(Error::invalid(format!(
            "{source} has {} classes but the model has {outputs} outputs",
            data.classes.len()
        )));
    }
    let names: Vec<String> = (0..outputs)
        .map(|i| {
            data.classes
                .get(i)
                .cloned()
                .unwrap_or_else(|| i.to_string())
        })
        .collect();
    spec.check_classes(&names)
        .map_err(|e| Error::invalid(format!("{source}: {e}")))?;
    Ok(names)
}

fn parse_opt<X: std::str::FromStr<Err = String>>(
    flag: &str,
    v: &Option<String>,
) -> Result<Option<X>> {
    v.as_deref()
        .map(|s| {
            s.parse()
                .map_err(|e| Error::invalid(format!("--{flag}: {e}")))
        })
        .transpose()
}

/// The command line's training options as a recipe layered over the model's.
fn cli_recipe(a: &TrainArgs) -> Result<TrainRecipe> {
    Ok(TrainRecipe {
        optimizer: parse_opt("optimizer", &a.optimizer)?,
        lr: a.lr,
        momentum: a.momentum,
        nesterov: a.nesterov.then_some(true),
        weight_decay: a.weight_decay,
        schedule: parse_opt("schedule", &a.schedule)?,
        epochs: a.epochs,
        batch_size: a.batch_size,
        loss: parse_opt("loss", &a.loss)?,
        augment: a.augment,
        crop_padding: a.crop_padding,
        hflip: a.hflip.then_some(true),
        init: parse_opt("init", &a.init)?,
    })
}

fn train_cmd(a: TrainArgs, group: Option<Arc<dyn Group>>) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // Without a handler Ctrl-C would kill the process mid-write; with it, training stops
        // at the next batch and the last completed epoch stays on disk.
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    // Every rank reads the options and the data; all go on only if all could.
    let setup = train_setup(&a);
    let setup = match &group {
        Some(g) => crate::dist::agree_on(g.as_ref(), setup)?,
        None => setup?,
    };
    let Some((mut start, opts, paths, data)) = setup else {
        return Ok(());
    };
    start.trainer.group = group;
    let leads = start.trainer.leads();
    let mut progress = Progress::new(a.quiet || !leads);
    let started = std::time::Instant::now();
    if let Err(e) = train(start, &data, &opts, &paths, Some(stop), &mut progress) {
        if leads && !paths.checkpoint().exists() {
            // Nothing completed: leave no empty run directory behind (fails harmlessly if not empty).
            let _ = std::fs::remove_dir(&paths.dir);
        }
        return Err(e);
    }
    println!(
        "done in {:.1}s; run saved in {}",
        started.elapsed().as_secs_f64(),
        paths.dir.display()
    );
    println!("  convnet eval --model {}", paths.dir.display());
    Ok(())
}

/// What a run of `convnet train` starts from: the trainer (fresh or resumed), its options,
/// its directory and its data.
/// None when a resumed run has done all its epochs.
fn train_setup(a: &TrainArgs) -> Result<Option<(Start, TrainOptions, RunPaths, DataSplit)>> {
    let cli = cli_recipe(a)?;
    Ok(Some(if let Some(dir) = &a.resume {
        let changed =
            cli != TrainRecipe {
                epochs: cli.epochs,
                ..TrainRecipe::default()
            } || a.seed != 0
                || a.no_shuffle;
        if changed {
            return Err(Error::invalid("--resume continues a run with its own options; only --epochs (and --data) may be given"));
        }
        let paths = RunPaths::new(dir.clone());
        if !paths.checkpoint().is_file() {
            return Err(Error::invalid(format!(
                "{}: holds no run to resume (no checkpoint.safetensors)",
                dir.display()
            )));
        }
        let m = load_model(&dir.display().to_string())?;
        let meta = crate::train::trainer::read_checkpoint_meta(&paths.checkpoint())?;
        let mut recipe = m.recipe.clone();
        if let Some(e) = cli.epochs {
            recipe.epochs = Some(e);
        }
        let opts = TrainOptions::resolve(&[&recipe], meta.seed, meta.shuffle)?;
        let net = Network::<f32>::new(m.spec, opts.init, opts.seed);
        let start = crate::train::trainer::resume(&paths, &opts, net)?;
        if start.epochs_done >= opts.epochs {
            println!(
                "{}: all {} epochs are done; pass --epochs N to train further",
                dir.display(),
                opts.epochs
            );
            return Ok(None);
        }
        println!(
            "resuming {} after epoch {} of {}",
            dir.display(),
            start.epochs_done,
            opts.epochs
        );
        let data = load_data(
            a.data.as_deref(),
            start.trainer.net.spec(),
            false,
            a.images,
            a.val_split,
            meta.seed,
        )?;
        (start, opts, paths, data)
    } else {
        let m = load_model(&a.model)?;
        let opts = TrainOptions::resolve(&[&cli, &m.recipe], a.seed, !a.no_shuffle)?;
        let data = load_data(
            a.data.as_deref(),
            &m.spec,
            m.preset,
            a.images,
            a.val_split,
            a.seed,
        )?;
        let dir = a.out.clone().unwrap_or_else(|| {
            PathBuf::from("runs").join(chrono::Local::now().format("%Y%m%d-%H%M%S").to_string())
        });
        if dir.exists()
            && std::fs::read_dir(&dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
            && !a.force
        {
            return Err(Error::invalid(format!(
                "{}: already exists; choose another --out or pass --force to overwrite",
                dir.display()
            )));
        }
        let mut spec = m.spec;
        if m.preset && data.train.sample_shape != spec.input {
            spec = spec.with_input(data.train.sample_shape)?;
            println!(
                "preset {} takes the data's samples of {}",
                spec.name,
                shape_text(&spec.input)
            );
        }
        let source = a
            .data
            .as_ref()
            .map_or("the embedded digits".to_string(), |d| {
                d.display().to_string()
            });
        spec.classes = run_classes(&spec, &data, &source)?;
        let mut net = Network::<f32>::new(spec, opts.init, opts.seed);
        if let Some(w) = &a.weights {
            net.load_weights(w)?;
        }
        let src = a
            .data
            .as_ref()
            .map_or("embedded MNIST subset".to_string(), |d| {
                d.display().to_string()
            });
        println!(
            "training {} ({} parameters) on {} ({} train / {} test images) for {} epochs into {}",
            net.spec().name,
            thousands(net.param_count()),
            src,
            data.train.len(),
            data.test.as_ref().map_or(0, |t| t.len()),
            opts.epochs,
            dir.display()
        );
        println!(
            "optimizer {} lr {} momentum {} weight decay {} schedule {} loss {} batch {} shifts {}{}",
            opts.optimizer.kind.name(),
            opts.lr,
            opts.optimizer.momentum,
            opts.optimizer.weight_decay,
            opts.schedule,
            opts.loss.name(),
            opts.batch_size,
            opts.shift(),
            if opts.hflip { " flips" } else { "" }
        );
        let trainer = Trainer::new(net, Optimizer::new(opts.optimizer), opts.loss);
        (
            Start {
                trainer,
                epochs_done: 0,
                history: Vec::new(),
            },
            opts,
            RunPaths::new(dir),
            data,
        )
    }))
}

fn eval_cmd(
    model: &str,
    weights: Option<PathBuf>,
    data: Option<&Path>,
    images: ImageArgs,
    plot: Option<PathBuf>,
) -> Result<()> {
    let mut net = load_trained(model, weights, "eval")?;
    let split = load_data(data, net.spec(), false, images, None, 0)?;
    let (set, which) = match &split.test {
        Some(t) => (t, "test"),
        None => (&split.train, "training (no test set found)"),
    };
    set.check_fits(net.spec().input, net.output_len())?;
    let names = net.spec().class_names();
    let e = evaluate(&mut net, set, crate::loss::LossKind::CrossEntropy)?;
    println!("{which} set: {} images", set.len());
    println!(
        "accuracy: {:.2}%  (cross-entropy {:.4})",
        100.0 * e.accuracy,
        e.loss
    );
    println!("per-class accuracy:");
    let width = names
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(1)
        .max(3);
    for (c, a) in e.per_class_accuracy().iter().enumerate() {
        println!(
            "  {:>width$}: {}",
            names.get(c).cloned().unwrap_or_else(|| c.to_string()),
            if a.is_nan() {
                "   n/a".to_string()
            } else {
                format!("{:6.2}%", 100.0 * a)
            }
        );
    }
    println!("confusion matrix (rows: true class, columns: predicted):");
    let k = e.confusion.len();
    print!("     ");
    for c in 0..k {
        print!("{c:>5}");
    }
    println!();
    for (t, row) in e.confusion.iter().enumerate() {
        print!("{t:>5}");
        for v in row {
            print!("{v:>5}");
        }
        println!();
    }
    if !net.spec().classes.is_empty() {
        let key: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{i} {n}"))
            .collect();
        println!("classes: {}", key.join(", "));
    }
    let plot = plot.or_else(|| {
        Path::new(model)
            .is_dir()
            .then(|| Path::new(model).join("confusion.png"))
    });
    if let Some(p) = plot {
        crate::plot::charts::save_confusion(&p, &e.confusion, &names)?;
        println!("confusion matrix image: {}", p.display());
    }
    Ok(())
}
