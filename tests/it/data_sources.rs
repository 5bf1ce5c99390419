//! Data a user has: image folders (grey and colour, train/test or one folder with a held-out
//! part), CIFAR-10 binary batches, class names through train, eval and predict, and the
//! errors for corrupt files, wrong sizes, empty classes and labels beyond the model.
use crate::common::{convnet, fails, ok, p};
use convnet::data::dataset::{embedded, load_dir};
use convnet::data::image::luma;
use convnet::data::LoadOptions;
use std::path::{Path, PathBuf};

const NAMES: [&str; 10] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
];

/// The embedded digits `range` of a split as (28×28 bytes, label).
fn digits(test: bool, range: std::ops::Range<usize>) -> Vec<(Vec<u8>, usize)> {
    let split = embedded().unwrap();
    let set = if test {
        split.test.unwrap()
    } else {
        split.train
    };
    let mut px = vec![0.0f32; 784];
    range
        .map(|i| {
            set.gather(&[i], &mut px).unwrap();
            let bytes = px.iter().map(|&v| (v * 255.0).round() as u8).collect();
            (bytes, set.labels[i] as usize)
        })
        .collect()
}

/// Writes digits as PNG files under root/<class name>/NNNN.png, grey or tinted colour.
fn write_folder(root: &Path, items: &[(Vec<u8>, usize)], colour: bool) {
    for (i, (px, label)) in items.iter().enumerate() {
        let dir = root.join(NAMES[*label]);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{i:04}.png"));
        if colour {
            let rgb: Vec<u8> = px.iter().flat_map(|&v| [v, v / 2, 255 - v]).collect();
            image::RgbImage::from_raw(28, 28, rgb)
                .unwrap()
                .save(&path)
                .unwrap();
        } else {
            image::GrayImage::from_raw(28, 28, px.clone())
                .unwrap()
                .save(&path)
                .unwrap();
        }
    }
}

/// Sorted folder names number the classes, as torchvision's ImageFolder does.
fn sorted_names() -> Vec<&'static str> {
    let mut n = NAMES.to_vec();
    n.sort();
    n
}

#[test]
fn image_folder_trains_with_class_names_through_eval_and_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("digits");
    write_folder(&data.join("train"), &digits(false, 0..1500), false);
    write_folder(&data.join("test"), &digits(true, 0..300), false);
    let run = tmp.path().join("run");
    let out = ok(&convnet(&[
        "train",
        "--quiet",
        "--epochs",
        "3",
        "--data",
        p(&data),
        "--out",
        p(&run),
    ]));
    assert!(out.contains("1500 train / 300 test"), "{out}");
    // The run records the class names, in sorted folder order.
    let model = std::fs::read_to_string(run.join("model.toml")).unwrap();
    let want = sorted_names()
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    assert!(model.contains(&format!("classes = [{want}]")), "{model}");
    let eval = ok(&convnet(&["eval", "--model", p(&run), "--data", p(&data)]));
    let acc: f64 = eval
        .lines()
        .find_map(|l| l.strip_prefix("accuracy: "))
        .and_then(|l| l.split('%').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(acc > 85.0, "a correct loader learns the digits: {eval}");
    assert!(
        eval.contains("\n  seven: ") && eval.contains("classes: 0 eight, 1 five"),
        "{eval}"
    );
    assert!(run.join("confusion.png").is_file());
    // predict names the class ("seven 97.1 %").
    let seven = data.join("test/seven").join(format!(
        "{:04}.png",
        digits(true, 0..300).iter().position(|d| d.1 == 7).unwrap()
    ));
    let line = ok(&convnet(&[
        "predict",
        "--model",
        p(&run),
        "--input",
        p(&seven),
    ]));
    let said = line.split(": ").nth(1).unwrap().trim_end();
    let (name, pct) = said.split_once(' ').unwrap();
    assert!(NAMES.contains(&name) && pct.ends_with(" %"), "{line}");
    assert_eq!(name, "seven", "{line}");

    // The library reads the folder with the same numbering.
    let split = load_dir(&data, &LoadOptions::default()).unwrap();
    assert_eq!(split.classes, sorted_names());
    assert_eq!(split.train.sample_shape, [1, 28, 28]);
    let first_seven = sorted_names().iter().position(|&n| n == "seven").unwrap() as u32;
    assert_eq!(
        split
            .train
            .labels
            .iter()
            .filter(|&&l| l == first_seven)
            .count(),
        digits(false, 0..1500).iter().filter(|d| d.1 == 7).count()
    );
}

#[test]
fn colour_folders_feed_grey_and_rgb_models() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("colour");
    let items = digits(false, 0..40);
    write_folder(&data, &items, true);
    // A grey model: ITU-R 601-2 luma of each pixel, as PIL's "L".
    let grey = LoadOptions {
        channels: Some(1),
        size: Some([28, 28]),
        ..Default::default()
    };
    let split = load_dir(&data, &grey).unwrap();
    assert!(split.test.is_none());
    let names = sorted_names();
    let (px, label) = &items[0];
    let i = (0..split.train.len())
        .find(|&i| names[split.train.labels[i] as usize] == NAMES[*label])
        .unwrap();
    // Samples are in class order, then file order: the first of its class is item 0's class's
    // first file, which is item 0 itself when it comes first in its folder.
    let mut got = vec![0.0f32; 784];
    split.train.gather(&[i], &mut got).unwrap();
    let want: Vec<f32> = px
        .iter()
        .map(|&v| luma(v, v / 2, 255 - v) as f32 / 255.0)
        .collect();
    assert_eq!(got, want);
    // An RGB model: planar R, G, B.
    let rgb = LoadOptions {
        channels: Some(3),
        ..grey.clone()
    };
    let split = load_dir(&data, &rgb).unwrap();
    assert_eq!(split.train.sample_shape, [3, 28, 28]);
    let mut got = vec![0.0f32; 3 * 784];
    split.train.gather(&[i], &mut got).unwrap();
    assert_eq!(got[784 + 100], (px[100] / 2) as f32 / 255.0);
    assert_eq!(got[2 * 784 + 100], (255 - px[100]) as f32 / 255.0);
    // Without a model's say, colour images stay colour.
    let split = load_dir(&data, &LoadOptions::default()).unwrap();
    assert_eq!(split.train.sample_shape, [3, 28, 28]);
}

#[test]
fn one_folder_with_a_held_out_part_is_seeded_and_stratified() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("one");
    write_folder(&data, &digits(false, 0..500), false);
    let o = |seed| LoadOptions {
        val_split: Some(0.2),
        seed,
        ..Default::default()
    };
    let a = load_dir(&data, &o(1)).unwrap();
    let b = load_dir(&data, &o(1)).unwrap();
    let c = load_dir(&data, &o(2)).unwrap();
    let (at, bt) = (a.test.as_ref().unwrap(), b.test.as_ref().unwrap());
    assert_eq!(a.train.len() + at.len(), 500);
    assert_eq!(at.labels, bt.labels);
    let mut x = vec![0.0; 784 * at.len()];
    let mut y = vec![0.0; 784 * at.len()];
    let idx: Vec<usize> = (0..at.len()).collect();
    at.gather(&idx, &mut x).unwrap();
    bt.gather(&idx, &mut y).unwrap();
    assert_eq!(x, y, "the same seed holds out the same images");
    let ct = c.test.unwrap();
    let mut z = vec![0.0; 784 * ct.len()];
    ct.gather(&(0..ct.len()).collect::<Vec<_>>(), &mut z)
        .unwrap();
    assert_ne!(x, z, "another seed, other images");
    // 20 % of each class, rounded.
    let all = load_dir(&data, &LoadOptions::default()).unwrap().train;
    for class in 0..10u32 {
        let n = all.labels.iter().filter(|&&l| l == class).count();
        let held = at.labels.iter().filter(|&&l| l == class).count();
        assert_eq!(held, (n as f64 * 0.2).round() as usize, "class {class}");
    }
    let e = fails(&convnet(&[
        "train",
        "--quiet",
        "--data",
        p(&data),
        "--val-split",
        "1.5",
        "--epochs",
        "1",
        "--out",
        p(&tmp.path().join("r")),
    ]));
    assert!(e.contains("--val-split 1.5"), "{e}");
}

/// CIFAR-10's binary layout: a label byte, then R, G and B planes of 32×32.
fn write_cifar(dir: &Path, per_batch: usize, bad_label_at: Option<usize>) {
    std::fs::create_dir_all(dir).unwrap();
    let items = digits(false, 0..6 * per_batch);
    let record = |(px, label): &(Vec<u8>, usize)| {
        let mut r = vec![*label as u8];
        for c in 0..3u8 {
            for y in 0..32 {
                for x in 0..32 {
                    let v = if (2..30).contains(&y) && (2..30).contains(&x) {
                        px[(y - 2) * 28 + (x - 2)]
                    } else {
                        0
                    };
                    r.push(v / (c + 1));
                }
            }
        }
        r
    };
    for b in 0..6 {
        let name = if b < 5 {
            format!("data_batch_{}.bin", b + 1)
        } else {
            "test_batch.bin".to_string()
        };
        let mut bytes: Vec<u8> = items[b * per_batch..(b + 1) * per_batch]
            .iter()
            .flat_map(record)
            .collect();
        if let (Some(at), 2) = (bad_label_at, b) {
            bytes[at * 3073] = 12;
        }
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    std::fs::write(dir.join("batches.meta.txt"), NAMES.join("\n") + "\n\n").unwrap();
}

#[test]
fn cifar_batches_load_with_their_class_names() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar(&tmp.path().join("cifar-10-batches-bin"), 100, None);
    let split = load_dir(tmp.path(), &LoadOptions::default()).unwrap();
    assert_eq!(split.train.len(), 500);
    assert_eq!(split.test.as_ref().unwrap().len(), 100);
    assert_eq!(split.classes, NAMES);
    assert_eq!(split.train.sample_shape, [3, 32, 32]);
    let items = digits(false, 0..600);
    assert_eq!(split.train.labels[123] as usize, items[123].1);
    let mut px = vec![0.0; 3 * 1024];
    split.train.gather(&[123], &mut px).unwrap();
    let v = items[123].0[14 * 28 + 14];
    assert_eq!(px[16 * 32 + 16], v as f32 / 255.0);
    assert_eq!(px[2 * 1024 + 16 * 32 + 16], (v / 3) as f32 / 255.0);
    // A grey model reads them as luma.
    let grey = load_dir(
        tmp.path(),
        &LoadOptions {
            channels: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(grey.train.sample_shape, [1, 32, 32]);
    let mut g = vec![0.0; 1024];
    grey.train.gather(&[123], &mut g).unwrap();
    assert_eq!(g[16 * 32 + 16], luma(v, v / 2, v / 3) as f32 / 255.0);

    // Trained through the command line: class names in predict's output.
    let run = tmp.path().join("run");
    let model = tmp.path().join("small.toml");
    std::fs::write(
        &model,
        "input = [3, 32, 32]\n[[layers]]\ntype = \"conv2d\"\nout_channels = 4\nkernel = 5\nstride = 2\n[[layers]]\ntype = \"relu\"\n[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"linear\"\nout_features = 10\n",
    )
    .unwrap();
    ok(&convnet(&[
        "train",
        "--quiet",
        "--epochs",
        "1",
        "--model",
        p(&model),
        "--data",
        p(tmp.path()),
        "--out",
        p(&run),
    ]));
    let toml = std::fs::read_to_string(run.join("model.toml")).unwrap();
    assert!(toml.contains("classes = [\"zero\", \"one\""), "{toml}");

    // A label byte beyond CIFAR-10's classes names its batch file and record.
    let bad = tmp.path().join("bad");
    write_cifar(&bad, 20, Some(7));
    let e = load_dir(&bad, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("data_batch_3.bin") && e.contains("record 7"),
        "{e}"
    );
    // A model with fewer outputs than the labels: the error names the batch of the label.
    let two = tmp.path().join("two.toml");
    std::fs::write(
        &two,
        "input = [3, 32, 32]\n[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"linear\"\nout_features = 2\n",
    )
    .unwrap();
    let e = fails(&convnet(&[
        "train",
        "--quiet",
        "--model",
        p(&two),
        "--data",
        p(tmp.path()),
        "--out",
        p(&tmp.path().join("r2")),
    ]));
    assert!(e.contains("classes but the model has 2 outputs"), "{e}");
}

#[test]
fn bad_images_sizes_and_classes_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    write_folder(&data, &digits(false, 0..60), false);
    let run = |extra: &[&str]| {
        let mut args = vec!["train", "--quiet", "--epochs", "1", "--data", p(&data)];
        args.extend_from_slice(extra);
        let out = tmp.path().join(format!("run{}", extra.len()));
        convnet(&[&args[..], &["--force", "--out", p(&out)]].concat())
    };
    ok(&run(&[]));
    // A corrupt file: named; with --skip-bad, skipped and counted.
    let corrupt = data.join("three").join("zz-corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let e = fails(&run(&[]));
    assert!(
        e.contains("zz-corrupt.png") && e.contains("cannot decode"),
        "{e}"
    );
    let out = ok(&run(&["--skip-bad"]));
    assert!(out.contains("skipped 1 unreadable image file(s)"), "{out}");
    // The same when the corrupt file is the very first of the set, and the set's shape
    // comes from the data (a preset).
    let first = data.join("eight").join("0000-corrupt.png");
    std::fs::write(&first, b"not a png").unwrap();
    let out = ok(&run(&["--skip-bad", "--model", "mlp"]));
    assert!(out.contains("skipped 2 unreadable image file(s)"), "{out}");
    std::fs::remove_file(&first).unwrap();
    std::fs::remove_file(&corrupt).unwrap();
    // An image of another size: named, with the way out; --resize fits it.
    let big = data.join("four").join("big.png");
    image::GrayImage::from_fn(56, 40, |x, _| image::Luma([(x * 4) as u8]))
        .save(&big)
        .unwrap();
    let e = fails(&run(&[]));
    assert!(
        e.contains("big.png") && e.contains("56×40") && e.contains("--resize"),
        "{e}"
    );
    ok(&run(&["--resize"]));
    // predict likewise.
    let trained = tmp.path().join("run1");
    let e = fails(&convnet(&[
        "predict",
        "--model",
        p(&trained),
        "--input",
        p(&big),
    ]));
    assert!(e.contains("big.png") && e.contains("--resize"), "{e}");
    let line = ok(&convnet(&[
        "predict",
        "--model",
        p(&trained),
        "--input",
        p(&big),
        "--resize",
    ]));
    assert!(line.trim_end().ends_with(" %"), "{line}");
    std::fs::remove_file(&big).unwrap();
    // An empty class folder.
    std::fs::create_dir_all(data.join("ten")).unwrap();
    let e = fails(&run(&[]));
    assert!(e.contains("ten") && e.contains("holds no"), "{e}");
    std::fs::remove_dir(data.join("ten")).unwrap();
    // A directory with no data set at all lists what was looked for.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = fails(&convnet(&["train", "--quiet", "--data", p(&empty)]));
    assert!(
        e.contains("IDX") && e.contains("CIFAR-10") && e.contains("image folders"),
        "{e}"
    );
}

#[test]
fn a_label_beyond_the_model_names_the_labels_file() {
    let tmp = tempfile::tempdir().unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/mnist-5k");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, tmp.path().join(f.file_name().unwrap())).unwrap();
    }
    let model = tmp.path().join("five.toml");
    std::fs::write(
        &model,
        "input = [1, 28, 28]\n[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"linear\"\nout_features = 5\n",
    )
    .unwrap();
    let e = fails(&convnet(&[
        "train",
        "--quiet",
        "--model",
        p(&model),
        "--data",
        p(tmp.path()),
        "--out",
        p(&tmp.path().join("r")),
    ]));
    assert!(
        e.contains("train-labels-idx1-ubyte") && e.contains("beyond the model's 5 outputs"),
        "{e}"
    );
    // A model whose class names differ from the data's.
    let named = tmp.path().join("named.toml");
    std::fs::write(
        &named,
        "input = [1, 28, 28]\nclasses = [\"a\", \"b\", \"c\", \"d\", \"e\", \"f\", \"g\", \"h\", \"i\", \"j\"]\n[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"linear\"\nout_features = 10\n",
    )
    .unwrap();
    let folder = tmp.path().join("f");
    write_folder(&folder, &digits(false, 0..30), false);
    let e = fails(&convnet(&[
        "train",
        "--quiet",
        "--model",
        p(&named),
        "--data",
        p(&folder),
        "--out",
        p(&tmp.path().join("r3")),
    ]));
    assert!(e.contains("are not the data's"), "{e}");
}

#[test]
fn a_folder_beyond_the_cache_budget_streams_from_disk_with_the_same_results() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("digits");
    write_folder(&data.join("train"), &digits(false, 0..600), false);
    write_folder(&data.join("test"), &digits(true, 0..100), false);

    // The library: 700 images of 784 bytes do not fit 0 MiB; the streamed set gathers the
    // same pixels as the kept one.
    let kept = load_dir(&data, &LoadOptions::default()).unwrap();
    let o = LoadOptions {
        cache_mb: Some(0),
        ..LoadOptions::default()
    };
    let streamed = load_dir(&data, &o).unwrap();
    assert!(!kept.train.streamed() && streamed.train.streamed());
    assert_eq!(streamed.train.labels, kept.train.labels);
    let idx: Vec<usize> = (0..600).rev().step_by(7).collect();
    let (mut a, mut b) = (vec![0f32; idx.len() * 784], vec![0f32; idx.len() * 784]);
    kept.train.gather(&idx, &mut a).unwrap();
    streamed.train.gather(&idx, &mut b).unwrap();
    assert_eq!(a, b);

    // Training: the same weights, bit for bit, with shuffling and augmentation on.
    let train = |run: &Path, cache: &str| {
        ok(&convnet(&[
            "train",
            "--quiet",
            "--epochs",
            "2",
            "--hflip",
            "--augment",
            "2",
            "--data",
            p(&data),
            "--cache-mb",
            cache,
            "--out",
            p(run),
        ]))
    };
    let (r1, r2) = (tmp.path().join("kept"), tmp.path().join("streamed"));
    train(&r1, "4096");
    train(&r2, "0");
    assert_eq!(
        std::fs::read(r1.join("model.safetensors")).unwrap(),
        std::fs::read(r2.join("model.safetensors")).unwrap()
    );

    // A file that disappears after loading is an error naming it, not a panic.
    let gone = data
        .join("train/seven")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_file(&gone).unwrap();
    let all: Vec<usize> = (0..600).collect();
    let mut x = vec![0f32; 600 * 784];
    let e = streamed.train.gather(&all, &mut x).unwrap_err().to_string();
    assert!(e.contains(p(&gone)), "{e}");
}
