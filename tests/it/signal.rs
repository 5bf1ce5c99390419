//! `convnet filter` and `convnet pool` against scipy.signal fixtures and the lecture's examples,
//! and smoke tests of every figure.
use crate::common;
use crate::common::convnet;
use convnet::data::npy::{read_npy, write_npy_f64, NpyData};
use std::path::{Path, PathBuf};

fn scipy(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scipy")
        .join(name)
}

fn values(p: &Path) -> (Vec<usize>, Vec<f64>, bool) {
    let a = read_npy(p).unwrap();
    match a.data {
        NpyData::F64(v) => (a.shape, v, true),
        NpyData::F32(v) => (a.shape, v.into_iter().map(f64::from).collect(), false),
        _ => panic!("dtype"),
    }
}

#[test]
fn filter_matches_scipy_for_every_mode_boundary_method_and_correlate() {
    let text = std::fs::read_to_string(scipy("cases.toml")).unwrap();
    let cases: toml::Table = text.parse().unwrap();
    let cases = cases["case"].as_array().unwrap();
    assert!(cases.len() >= 200);
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (i, c) in cases.iter().enumerate() {
        let c = c.as_table().unwrap();
        let s = |k: &str| c[k].as_str().unwrap().to_string();
        let boundary = s("boundary");
        let fill = c["fill_value"].as_float().unwrap();
        let zero_fill = boundary == "fill" && fill == 0.0;
        let methods: &[&str] = if zero_fill {
            &["direct", "fft", "auto"]
        } else {
            &["direct", "auto"]
        };
        let (want_shape, want, want_f64) = values(&scipy(&s("output")));
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
        for m in methods {
            let out = dir.path().join(format!("o{i}_{m}.npy"));
            let (input, kernel) = (scipy(&s("input")), scipy(&s("kernel")));
            let fill_s = fill.to_string();
            let mut args = vec![
                "filter",
                input.to_str().unwrap(),
                "--kernel",
                kernel.to_str().unwrap(),
                "--mode",
            ];
            let mode = s("mode");
            args.extend([
                mode.as_str(),
                "--boundary",
                &boundary,
                "--fill-value",
                &fill_s,
                "--method",
                m,
                "--output",
                out.to_str().unwrap(),
            ]);
            if c["correlate"].as_bool().unwrap() {
                args.push("--correlate");
            }
            let o = convnet(&args);
            assert!(
                o.status.success(),
                "case {i} {m}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let (shape, got, got_f64) = values(&out);
            assert_eq!(shape, want_shape, "case {i} {m}");
            assert_eq!(got_f64, want_f64, "case {i} {m}: dtype");
            let err = got
                .iter()
                .zip(&want)
                .fold(0.0f64, |e, (a, b)| e.max((a - b).abs()))
                / scale;
            let tol = if want_f64 { 1e-9 } else { 1e-5 };
            assert!(err <= tol, "case {i} {m} {c:?}: relative error {err}");
            checked += 1;
        }
    }
    assert!(checked > 400);
}

#[test]
fn fft_with_a_non_zero_boundary_is_refused() {
    let x = scipy("x2.npy");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("y.npy");
    let o = convnet(&[
        "filter",
        x.to_str().unwrap(),
        "--kernel",
        "sobel-x",
        "--boundary",
        "wrap",
        "--method",
        "fft",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("FFT"));
    assert!(!out.exists(), "no partial output");
}

#[test]
fn lecture_pooling_example_and_stride() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.npy");
    let lecture = [
        21., 8., 8., 12., 12., 19., 9., 7., 8., 10., 4., 3., 18., 12., 9., 10.,
    ];
    write_npy_f64(&m, &[4, 4], &lecture).unwrap();
    for (kind, want) in [
        ("max", [21., 12., 18., 10.]),
        ("avg", [15., 9., 12., 6.5]),
        ("subsample", [21., 8., 8., 4.]),
    ] {
        let out = dir.path().join(format!("{kind}.npy"));
        let o = convnet(&[
            "pool",
            m.to_str().unwrap(),
            "--kind",
            kind,
            "--kernel",
            "2",
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(values(&out).1, want);
        let printed = String::from_utf8_lossy(&o.stdout);
        assert!(
            printed.contains(&format!("{}", want[0])) && printed.lines().count() == 2,
            "{printed}"
        );
    }
    // --stride 2 keeps every other response: valid correlation with [[1]] is the subsampling.
    let out = dir.path().join("s.npy");
    let o = convnet(&[
        "filter",
        m.to_str().unwrap(),
        "--kernel",
        "1",
        "--mode",
        "valid",
        "--stride",
        "2",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(values(&out), (vec![2, 2], vec![21., 8., 8., 4.], true));
}

fn png_size(p: &Path) -> (u32, u32) {
    image::image_dimensions(p).unwrap()
}

#[test]
fn figures_decode_as_images_of_the_expected_size() {
    let dir = tempfile::tempdir().unwrap();
    let astronaut =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/images/astronaut.png");
    let img = if astronaut.is_file() {
        astronaut
    } else {
        let p = dir.path().join("img.png");
        image::GrayImage::from_fn(64, 48, |x, y| image::Luma([((x * 7 + y * 3) % 256) as u8]))
            .save(&p)
            .unwrap();
        p
    };
    let (iw, ih) = png_size(&img);
    let fig = dir.path().join("fig.png");
    let o = convnet(&[
        "filter",
        img.to_str().unwrap(),
        "--kernel",
        "sobel-x",
        "--kernel",
        "sobel-y",
        "--output",
        fig.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (w, h) = png_size(&fig);
    // Three panels of the image's size side by side (same mode), with margins and titles.
    assert!(w >= 3 * iw.min(512) && w < 3 * iw.max(512) + 100, "{w}×{h}");
    assert!(h > ih.min(512) && h < ih.max(512) + 100, "{w}×{h}");

    for (args, name, size) in [
        (vec!["plot", "activations"], "act.png", Some((1000, 800))),
        (
            vec!["plot", "activations", "--derivatives"],
            "act2.png",
            Some((1000, 800)),
        ),
        (vec!["plot", "activations"], "act.svg", None),
    ] {
        let p = dir.path().join(name);
        let mut a = args.clone();
        a.extend(["--output", p.to_str().unwrap()]);
        let o = convnet(&a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        match size {
            Some(s) => assert_eq!(png_size(&p), s),
            None => {
                let svg = std::fs::read_to_string(&p).unwrap();
                assert!(
                    svg.starts_with("<svg")
                        && svg.contains("input to activation function")
                        && svg.contains("tanh")
                );
            }
        }
    }
    let o = convnet(&[
        "plot",
        "activations",
        "--output",
        dir.path().join("a.gif").to_str().unwrap(),
    ]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains(".png or .svg"));
}

#[test]
fn training_figures_and_collapse() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let model = dir.path().join("deep-linear.toml");
    std::fs::write(
        &model,
        "name = \"deep-linear\"\ninput = [1, 28, 28]\n[[layers]]\ntype = \"conv2d\"\nout_channels = 4\nkernel = 5\nstride = 2\n[[layers]]\ntype = \"relu\"\n[[layers]]\ntype = \"flatten\"\n[[layers]]\ntype = \"linear\"\nout_features = 32\n[[layers]]\ntype = \"identity\"\n[[layers]]\ntype = \"linear\"\nout_features = 16\n[[layers]]\ntype = \"linear\"\nout_features = 10\n",
    )
    .unwrap();
    let o = convnet(&["summary", "--model", model.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("layers 3–6"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = convnet(&[
        "train",
        "--quiet",
        "--model",
        model.to_str().unwrap(),
        "--epochs",
        "2",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(png_size(&run.join("curves.png")), (1000, 420));
    let o = convnet(&["eval", "--model", run.to_str().unwrap()]);
    assert!(o.status.success());
    let (w, h) = png_size(&run.join("confusion.png"));
    assert!(w > 480 && h > 480);
    let filters = dir.path().join("filters.png");
    let o = convnet(&[
        "plot",
        "filters",
        "--model",
        run.to_str().unwrap(),
        "--output",
        filters.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (w, h) = png_size(&filters);
    assert!(w > 4 * 100 && h > 3 * 100, "{w}×{h}");

    // Collapse: fewer layers and parameters, the same outputs.
    let small = dir.path().join("small");
    let o = convnet(&[
        "collapse",
        "--model",
        run.to_str().unwrap(),
        "--output",
        small.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let x = common::tensors("fwd_lenet5_io.safetensors")["x"].clone();
    let xs = dir.path().join("x.npy");
    convnet::data::npy::write_npy_f32(&xs, x.shape(), x.data()).unwrap();
    let (ya, yb) = (dir.path().join("a.npy"), dir.path().join("b.npy"));
    for (m, y) in [(&run, &ya), (&small, &yb)] {
        let o = convnet(&[
            "predict",
            "--model",
            m.to_str().unwrap(),
            "--input",
            xs.to_str().unwrap(),
            "--output",
            y.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let (a, b) = (values(&ya).1, values(&yb).1);
    let scale = a.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() <= 1e-5 * scale));
    let o = convnet(&["summary", "--model", small.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("Total parameters") && !text.contains("collapse into"),
        "{text}"
    );
}
