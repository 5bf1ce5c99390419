//! `convnet serve`: the JSON API (answers, every bad request, 200 concurrent predictions)
//! and the page driven in headless Chromium through real input events.
use convnet::data::dataset;
use convnet::serve::{bind, Examples, ServeConfig, ServedModel};
use convnet::train::trainer::parse_metrics;
use convnet::{Network, Tensor};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A LeNet-5 run of 3 epochs on the embedded digits, trained once for all tests here.
fn trained_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("convnet-serve-run-{}", std::process::id()));
        let out = Command::new(env!("CARGO_BIN_EXE_convnet"))
            .args(["train", "--quiet", "--force", "--epochs", "3", "--out"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
}

fn load_net(run: &Path) -> Network<f32> {
    let text = std::fs::read_to_string(run.join("model.toml")).unwrap();
    let spec = convnet::train::ModelFile::parse(&text, "model.toml")
        .unwrap()
        .spec;
    let mut net = Network::<f32>::new(spec, Default::default(), 0);
    net.load_weights(&run.join("model.safetensors")).unwrap();
    net
}

fn examples() -> Examples {
    let test = dataset::embedded().unwrap().test.unwrap();
    Examples::from_dataset(&test, 64, &[]).unwrap()
}

/// A server for the trained run on a free port, answering until the test process ends.
fn start(body_limit: usize) -> SocketAddr {
    start_with(ServeConfig {
        body_limit,
        ..Default::default()
    })
}

/// [`start`] with `config` (on a free port whatever it says).
fn start_with(config: ServeConfig) -> SocketAddr {
    let run = trained_run();
    let metrics = parse_metrics(&run.join("metrics.csv")).unwrap();
    let model = ServedModel::new(load_net(run), &metrics, Some(examples())).unwrap();
    let server = bind(model, &ServeConfig { port: 0, ..config }).unwrap();
    let addr = server.addr();
    std::thread::spawn(move || server.run_until(std::future::pending()));
    addr
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// (status, body) of a request.
fn request(
    method: &str,
    url: &str,
    content_type: Option<&str>,
    body: Option<&[u8]>,
) -> (u16, String) {
    let a = agent();
    let mut r = match (method, body) {
        ("GET", _) => a.get(url).call(),
        ("DELETE", _) => a.delete(url).call(),
        ("POST", body) => {
            let mut req = a.post(url);
            if let Some(ct) = content_type {
                req = req.header("Content-Type", ct);
            }
            match body {
                Some(b) => req.send(b),
                None => req.send_empty(),
            }
        }
        _ => unreachable!("the tests use GET, DELETE and POST"),
    }
    .unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (status, text)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn example_png(addr: SocketAddr, k: usize) -> Vec<u8> {
    let mut r = agent()
        .get(&format!("http://{addr}/api/examples/{k}"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    r.body_mut().read_to_vec().unwrap()
}

/// What the library itself gives for a PNG: (top class, its probability).
fn expected(net: &mut Network<f32>, png: &[u8]) -> (usize, f64) {
    let (px, h, w) = convnet::data::image::decode_image(png, Path::new("example"), 1).unwrap();
    let y = net
        .forward(Tensor::from_vec(&[1, 1, h, w], px).unwrap(), false)
        .unwrap();
    let z = y.data();
    let top = (0..z.len()).max_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap();
    let sum: f64 = z.iter().map(|&v| ((v - z[top]) as f64).exp()).sum();
    (top, 1.0 / sum)
}

#[test]
fn api_answers_model_examples_and_predictions() {
    let addr = start(8 << 20);
    let (s, page) = request("GET", &format!("http://{addr}/"), None, None);
    assert_eq!(s, 200);
    assert!(page.contains("id=\"prediction\"") && page.contains("/app.js"));
    for asset in ["app.js", "style.css"] {
        assert_eq!(
            request("GET", &format!("http://{addr}/{asset}"), None, None).0,
            200
        );
    }

    let (s, info) = request("GET", &format!("http://{addr}/api/model"), None, None);
    assert_eq!(s, 200);
    let info = json(&info);
    assert_eq!(info["params"], 61_706);
    assert_eq!(info["input"], serde_json::json!([1, 28, 28]));
    assert_eq!(info["classes"][3], "3");
    assert_eq!(info["examples"].as_array().unwrap().len(), 64);
    assert_eq!(info["metrics"].as_array().unwrap().len(), 3);
    assert_eq!(info["filters"]["shape"], serde_json::json!([6, 1, 5, 5]));
    assert_eq!(info["layers"][0]["kind"], "conv2d");

    let mut net = load_net(trained_run());
    let png = example_png(addr, 5);
    let (top, p) = expected(&mut net, &png);
    let url = format!("http://{addr}/api/predict");
    let (s, body) = request("POST", &url, Some("image/png"), Some(&png));
    assert_eq!(s, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["top"]["index"], top);
    assert_eq!(v["top"]["class"], top.to_string());
    assert!((v["top"]["probability"].as_f64().unwrap() - p).abs() < 1e-6);
    let probs = v["probabilities"].as_array().unwrap();
    assert_eq!(probs.len(), 10);
    let total: f64 = probs.iter().map(|x| x.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-9, "{total}");
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 12, "every top-level layer of LeNet-5");
    assert!(layers.iter().all(|l| l.get("activations").is_none()));

    // With every layer's output: h¹ is the first convolution's response, 6×28×28.
    let (s, body) = request(
        "POST",
        &format!("{url}?activations=1"),
        Some("image/png"),
        Some(&png),
    );
    assert_eq!(s, 200);
    let v = json(&body);
    assert_eq!(v["top"]["index"], top);
    let h1 = &v["layers"][0];
    assert_eq!(h1["name"], "0: conv2d");
    assert_eq!(h1["shape"], serde_json::json!([6, 28, 28]));
    assert_eq!(h1["activations"].as_array().unwrap().len(), 6 * 28 * 28);
    let last = v["layers"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["activations"].as_array().unwrap().len(), 10);

    // A JPEG is read as well.
    let (px, _, _) = convnet::data::image::decode_image(&png, Path::new("png"), 1).unwrap();
    let grey: Vec<u8> = px.iter().map(|&v| (v * 255.0).round() as u8).collect();
    let mut jpeg = std::io::Cursor::new(Vec::new());
    image::GrayImage::from_raw(28, 28, grey)
        .unwrap()
        .write_to(&mut jpeg, image::ImageFormat::Jpeg)
        .unwrap();
    let (s, body) = request("POST", &url, Some("image/jpeg"), Some(jpeg.get_ref()));
    assert_eq!(s, 200, "{body}");
}

#[test]
fn bad_requests_get_4xx_and_the_server_goes_on() {
    let limit = 4096;
    let addr = start(limit);
    let url = format!("http://{addr}/api/predict");
    let png = example_png(addr, 0);
    // A valid PNG of another size than 28×28, and one over the body limit.
    let mut big = std::io::Cursor::new(Vec::new());
    image::GrayImage::from_fn(64, 64, |x, y| image::Luma([((x * 7 + y * 13) % 256) as u8]))
        .write_to(&mut big, image::ImageFormat::Png)
        .unwrap();
    let noise: Vec<u8> = (0..200 * 200).map(|i| ((i * 7919) % 251) as u8).collect();
    let mut huge = std::io::Cursor::new(Vec::new());
    image::GrayImage::from_raw(200, 200, noise)
        .unwrap()
        .write_to(&mut huge, image::ImageFormat::Png)
        .unwrap();
    assert!(huge.get_ref().len() > limit);
    // (method, URL, Content-Type, body, expected status, what the error message says)
    type Case<'a> = (
        &'a str,
        String,
        Option<&'a str>,
        Option<&'a [u8]>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        ("POST", url.clone(), None, Some(&png), 415, "Content-Type"),
        (
            "POST",
            url.clone(),
            Some("text/plain"),
            Some(&png),
            415,
            "image/png",
        ),
        ("POST", url.clone(), Some("image/png"), None, 400, "no body"),
        (
            "POST",
            url.clone(),
            Some("image/png"),
            Some(b"not an image at all"),
            422,
            "cannot decode",
        ),
        (
            "POST",
            url.clone(),
            Some("image/jpeg"),
            Some(&png[..png.len() / 2]),
            422,
            "cannot decode",
        ),
        (
            "POST",
            url.clone(),
            Some("image/png"),
            Some(big.get_ref()),
            422,
            "64×64",
        ),
        (
            "POST",
            url.clone(),
            Some("image/png"),
            Some(huge.get_ref()),
            413,
            "limit",
        ),
        (
            "POST",
            format!("{url}?activations=maybe"),
            Some("image/png"),
            Some(&png),
            400,
            "activations",
        ),
        ("GET", url.clone(), None, None, 405, "not allowed"),
        (
            "DELETE",
            format!("http://{addr}/api/model"),
            None,
            None,
            405,
            "not allowed",
        ),
        (
            "GET",
            format!("http://{addr}/nothing-here"),
            None,
            None,
            404,
            "no such",
        ),
        (
            "GET",
            format!("http://{addr}/api/examples/64"),
            None,
            None,
            404,
            "64 examples",
        ),
        (
            "GET",
            format!("http://{addr}/api/examples/x"),
            None,
            None,
            404,
            "no example",
        ),
    ];
    for (method, u, ct, body, status, says) in cases {
        let (s, text) = request(method, &u, ct, body);
        assert_eq!(s, status, "{method} {u} {ct:?}: {text}");
        let err = json(&text)["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(err.contains(says), "{method} {u}: {err}");
        // Still serving.
        assert_eq!(request("POST", &url, Some("image/png"), Some(&png)).0, 200);
    }

    // A body over the limit without a Content-Length (chunked), and a client that goes away
    // in the middle of its body.
    let mut chunked = b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(b"800\r\n");
        chunked.extend_from_slice(&[7u8; 0x800]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    // The server answers 413 as soon as the limit is passed, and reads the rest meanwhile:
    // the whole body goes out without a broken pipe.
    s.write_all(&chunked).unwrap();
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer).unwrap();
    assert!(answer.contains("413"), "{answer}");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 3000\r\n\r\n"
    )
    .unwrap();
    s.write_all(&png[..100]).unwrap();
    drop(s);
    assert_eq!(request("POST", &url, Some("image/png"), Some(&png)).0, 200);
}

#[test]
fn two_hundred_concurrent_predictions_are_all_answered_and_right() {
    let addr = start(8 << 20);
    let mut net = load_net(trained_run());
    let pngs: Vec<Vec<u8>> = (0..64).map(|k| example_png(addr, k)).collect();
    let want: Vec<(usize, f64)> = pngs.iter().map(|p| expected(&mut net, p)).collect();
    let handles: Vec<_> = (0..200)
        .map(|i| {
            let png = pngs[i % 64].clone();
            let url = if i % 4 == 0 {
                format!("http://{addr}/api/predict?activations=1")
            } else {
                format!("http://{addr}/api/predict")
            };
            std::thread::spawn(move || request("POST", &url, Some("image/png"), Some(&png)))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let (s, body) = h.join().unwrap();
        assert_eq!(s, 200, "request {i}: {body}");
        let v = json(&body);
        let (top, p) = want[i % 64];
        assert_eq!(v["top"]["index"], top, "request {i}");
        assert!(
            (v["top"]["probability"].as_f64().unwrap() - p).abs() < 1e-6,
            "request {i}"
        );
    }
}

/// The `convnet serve` process: its URL, read from the line it prints.
struct ServeProcess {
    child: std::process::Child,
    url: String,
}

impl ServeProcess {
    fn start(run: &Path) -> ServeProcess {
        Self::start_with(run, &[])
    }

    fn start_with(run: &Path, flags: &[&str]) -> ServeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_convnet"))
            .args(["serve", "--port", "0"])
            .args(flags)
            .arg("--model")
            .arg(run)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_string();
        ServeProcess { child, url }
    }

    /// Ctrl-C: the server stops cleanly, with status 0.
    fn interrupt(mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: sending SIGINT to our own child process.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(status.success(), "{status}");
        assert!(out.contains("stopped"), "{out}");
    }
}

#[test]
fn serve_command_prints_its_url_and_stops_on_ctrl_c() {
    let server = ServeProcess::start(trained_run());
    let (s, body) = request("GET", &format!("{}api/model", server.url), None, None);
    assert_eq!(s, 200, "{body}");
    assert_eq!(json(&body)["name"], "lenet5");
    server.interrupt();

    let out = Command::new(env!("CARGO_BIN_EXE_convnet"))
        .args(["serve", "--model", "lenet5"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs weights"));
    // Limits that make no sense are refused with the flag named.
    for flag in ["--idle-timeout-secs", "--header-timeout-secs"] {
        for bad in ["0", "inf", "nan"] {
            let out = Command::new(env!("CARGO_BIN_EXE_convnet"))
                .args(["serve", "--model", "lenet5", flag, bad])
                .output()
                .unwrap();
            assert!(!out.status.success());
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(flag), "{flag} {bad}: {err}");
        }
    }
}

/// Chromium for the page test: Debian's, installed by `.ci/run`. Elsewhere the test is
/// skipped with a message unless CONVNET_REQUIRE_CHROMIUM=1 makes its absence a failure.
fn chromium() -> Option<PathBuf> {
    let found = [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CONVNET_REQUIRE_CHROMIUM").is_err(),
            "CONVNET_REQUIRE_CHROMIUM is set but no Chromium is installed"
        );
        eprintln!("skipped: no Chromium (apt-get install chromium)");
    }
    found
}

/// Polls a JavaScript expression until it gives a string that `done` accepts.
fn wait_for(tab: &headless_chrome::Tab, js: &str, done: impl Fn(&str) -> bool) -> String {
    let t0 = Instant::now();
    loop {
        let v = tab.evaluate(js, false).unwrap().value;
        let s = v
            .as_ref()
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        if done(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "timed out on {js}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// JavaScript giving the shown answer's sequence number once it answers the page's newest
/// request (`latest` in app.js), else "".
fn settled(seq_js: &str) -> String {
    format!("String(latest) === {seq_js} ? String(latest) : ''")
}

fn mouse(tab: &headless_chrome::Tab, kind: &str, x: f64, y: f64) {
    use headless_chrome::protocol::cdp::Input::{
        DispatchMouseEvent, DispatchMouseEventTypeOption as Type, MouseButton,
    };
    let (kind, buttons) = match kind {
        "down" => (Type::MousePressed, 1),
        "move" => (Type::MouseMoved, 1),
        _ => (Type::MouseReleased, 0),
    };
    tab.call_method(DispatchMouseEvent {
        Type: kind,
        x,
        y,
        modifiers: None,
        timestamp: None,
        button: Some(MouseButton::Left),
        buttons: Some(buttons),
        click_count: Some(1),
        force: None,
        tangential_pressure: None,
        tilt_x: None,
        tilt_y: None,
        twist: None,
        delta_x: None,
        delta_y: None,
        pointer_Type: None,
    })
    .unwrap();
}

#[test]
fn page_in_headless_chromium_classifies_an_example_a_drawn_stroke_and_a_picked_file() {
    let Some(chrome) = chromium() else { return };
    let run = trained_run();
    let server = ServeProcess::start(run);
    let profile = tempfile::tempdir().unwrap();
    let browser = headless_chrome::Browser::new(headless_chrome::LaunchOptions {
        headless: true,
        sandbox: false,
        path: Some(chrome),
        window_size: Some((1280, 1700)),
        user_data_dir: Some(profile.path().to_path_buf()),
        args: vec![
            std::ffi::OsStr::new("--disable-gpu"),
            std::ffi::OsStr::new("--disable-quic"),
            std::ffi::OsStr::new("--disable-component-update"),
        ],
        ..Default::default()
    })
    .unwrap();
    let tab = browser.new_tab().unwrap();

    // Example 7 on open: the page shows what the network says of it.
    let k = 7;
    tab.navigate_to(&format!("{}?example={k}", server.url))
        .unwrap()
        .wait_until_navigated()
        .unwrap();
    let seq_js = "document.getElementById('prediction').dataset.seq";
    let first: u32 = wait_for(&tab, seq_js, |s| s != "0" && !s.is_empty())
        .parse()
        .unwrap();
    let text = wait_for(
        &tab,
        "document.getElementById('prediction').textContent",
        |_| true,
    );
    let mut net = load_net(run);
    let png = example_png(
        server
            .url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .unwrap(),
        k,
    );
    let (top, p) = expected(&mut net, &png);
    assert_eq!(text, format!("{top} ({:.1} %)", 100.0 * p));
    // h¹ … hᴷ: LeNet-5's two convolutions and two poolings, one small image per channel.
    let maps = wait_for(
        &tab,
        "String(document.querySelectorAll('#maps .layer').length)",
        |s| s == "4",
    );
    assert_eq!(maps, "4");
    let tiles = wait_for(
        &tab,
        "String(document.querySelectorAll('#maps canvas').length)",
        |_| true,
    );
    assert_eq!(tiles, (6 + 6 + 16 + 16).to_string());
    let rows = wait_for(
        &tab,
        "String(document.querySelectorAll('#summary tr').length)",
        |_| true,
    );
    assert_eq!(rows, "14", "a header, twelve layers and the total");

    // A vertical stroke on the canvas, as a mouse draws it: a new prediction, a one.
    let rect = tab
        .evaluate(
            "JSON.stringify(document.getElementById('draw').getBoundingClientRect())",
            false,
        )
        .unwrap()
        .value
        .unwrap();
    let rect: serde_json::Value = serde_json::from_str(rect.as_str().unwrap()).unwrap();
    let (left, top_px) = (
        rect["left"].as_f64().unwrap(),
        rect["top"].as_f64().unwrap(),
    );
    let x = left + 140.0;
    mouse(&tab, "down", x, top_px + 50.0);
    for i in 1..=20 {
        mouse(
            &tab,
            "move",
            x + i as f64 * 0.5,
            top_px + 50.0 + i as f64 * 9.0,
        );
    }
    mouse(&tab, "up", x + 10.0, top_px + 230.0);
    // The whole stroke's answer: the one to the page's newest request.
    let seq = wait_for(&tab, &settled(seq_js), |s| {
        s.parse::<u32>().is_ok_and(|n| n > first)
    });
    assert!(seq.parse::<u32>().unwrap() > first);
    let index = wait_for(
        &tab,
        "document.getElementById('prediction').dataset.index",
        |_| true,
    );
    let text = wait_for(
        &tab,
        "document.getElementById('prediction').textContent",
        |_| true,
    );
    assert_eq!(index, "1", "the stroke was read as {text}");

    // A picked file of another size (a digit scaled to 84×56): fitted to 28×28 in the page,
    // then classified.
    let (px, _, _) = convnet::data::image::decode_image(&png, Path::new("png"), 1).unwrap();
    let wide = image::GrayImage::from_fn(84, 56, |x, y| {
        let (sx, sy) = (x as i64 / 2 - 7, y as i64 / 2);
        let v = if (0..28).contains(&sx) {
            px[(sy * 28 + sx) as usize]
        } else {
            0.0
        };
        image::Luma([(v * 255.0).round() as u8])
    });
    let picked = std::env::temp_dir().join(format!("convnet-pick-{}.png", std::process::id()));
    wide.save(&picked).unwrap();
    // The stroke's last answers may still be on their way: wait until the page shows the
    // answer to its newest request, so that the next answer shown is the picked file's.
    let before: u32 = wait_for(&tab, &settled(seq_js), |s| !s.is_empty())
        .parse()
        .unwrap();
    let node = tab.find_element("#file").unwrap().node_id;
    tab.handle_file_chooser(vec![picked.display().to_string()], node)
        .unwrap();
    wait_for(&tab, seq_js, |s| s.parse::<u32>().is_ok_and(|n| n > before));
    let seen = wait_for(
        &tab,
        "(() => { const c = document.getElementById('seen'); return c.width + 'x' + c.height; })()",
        |_| true,
    );
    assert_eq!(seen, "28x28");
    let index = wait_for(
        &tab,
        "document.getElementById('prediction').dataset.index",
        |_| true,
    );
    assert_eq!(
        index,
        top.to_string(),
        "the fitted picture is example {k} again"
    );
    std::fs::remove_file(&picked).unwrap();

    let shot = tab
        .capture_screenshot(
            headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption::Png,
            None,
            None,
            true,
        )
        .unwrap();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-page.png");
    std::fs::write(&out, shot).unwrap();
    eprintln!("screenshot: {}", out.display());
    drop(tab);
    drop(browser);
    server.interrupt();
}

#[test]
fn examples_png_round_trip() {
    let e = examples();
    let png = e.png(0).unwrap();
    let (px, h, w) = convnet::data::image::decode_image(&png, Path::new("e"), 1).unwrap();
    assert_eq!((h, w), (28, 28));
    assert!(px
        .iter()
        .zip(&e.pixels[0])
        .all(|(&a, &b)| (a * 255.0).round() as u8 == b));
}

/// A raw request head for `POST /api/predict` of a PNG of `length` bytes.
fn predict_head(length: usize) -> String {
    format!(
        "POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {length}\r\n\r\n"
    )
}

/// Everything the server sends on `s` until it closes the connection (or 10 s pass).
fn read_to_close(s: &mut std::net::TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server kept the connection open: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_client_still_sending_past_the_limit_reads_its_413() {
    let limit = 4096;
    let addr = start(limit);
    // As Python's urllib and requests do: the whole body (4 MiB, a thousand times the
    // limit) is sent before the answer is read, in pieces, as a slow link delivers it.
    for declared in [true, false] {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let body = vec![0x55u8; 4 << 20];
        if declared {
            s.write_all(predict_head(body.len()).as_bytes()).unwrap();
            for piece in body.chunks(64 << 10) {
                s.write_all(piece).unwrap();
            }
        } else {
            s.write_all(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
            for piece in body.chunks(64 << 10) {
                write!(s, "{:x}\r\n", piece.len()).unwrap();
                s.write_all(piece).unwrap();
                s.write_all(b"\r\n").unwrap();
            }
            s.write_all(b"0\r\n\r\n").unwrap();
        }
        let answer = read_to_close(&mut s);
        assert!(
            answer.starts_with("HTTP/1.1 413"),
            "declared {declared}: {answer}"
        );
        assert!(answer.contains("limit of 4096 bytes"), "{answer}");
    }
    // A wrong Content-Type with a large body is read past as well.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(
        predict_head(1 << 20)
            .replace("image/png", "text/plain")
            .as_bytes(),
    )
    .unwrap();
    s.write_all(&vec![1u8; 1 << 20]).unwrap();
    assert!(read_to_close(&mut s).starts_with("HTTP/1.1 415"));
}

/// The soft limit on open files of this process (which `bind` raised to the hard one).
fn open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct given.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur
}

#[test]
fn slow_clients_do_not_block_a_fast_one_and_are_closed_after_the_timeouts() {
    let addr = start_with(ServeConfig {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        ..Default::default()
    });
    let png = example_png(addr, 3);
    // 3,000 slow clients where the limit on open files allows (each takes two descriptors
    // in this process: its end and the server's), with room for the other tests.
    let n = 3000.min((open_file_limit().saturating_sub(1000) / 2) as usize);
    assert!(n >= 300, "only {n} slow clients fit the open-file limit");
    let started = Instant::now();
    let slow: Vec<std::net::TcpStream> = (0..n)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            match i % 3 {
                // Half a head, never finished.
                0 => s
                    .write_all(b"POST /api/predict HTTP/1.1\r\nHost: x\r\nContent-Ty")
                    .unwrap(),
                // A whole head, and a few bytes of its body.
                1 => {
                    s.write_all(predict_head(png.len()).as_bytes()).unwrap();
                    s.write_all(&png[..10]).unwrap();
                }
                // Connected, silent.
                _ => {}
            }
            s
        })
        .collect();
    let opened = started.elapsed();
    // A normal prediction meanwhile: answered at once.
    let t = Instant::now();
    let (status, body) = request(
        "POST",
        &format!("http://{addr}/api/predict"),
        Some("image/png"),
        Some(&png),
    );
    let took = t.elapsed();
    assert_eq!(status, 200, "{body}");
    assert!(
        took < Duration::from_secs(1),
        "{took:?} beside {n} slow clients"
    );
    // The slow ones are closed after their timeout (1 s; a body's also by 408).
    let mut timed_out = 0;
    for (i, mut s) in slow.into_iter().enumerate() {
        let answer = read_to_close(&mut s);
        if i % 3 == 1 {
            assert!(answer.starts_with("HTTP/1.1 408"), "client {i}: {answer}");
            timed_out += 1;
        } else {
            assert_eq!(answer, "", "client {i}");
        }
    }
    let all_closed = started.elapsed();
    assert!(timed_out > 0);
    assert!(
        all_closed < opened + Duration::from_secs(5),
        "{n} slow clients took {all_closed:?} to be closed"
    );
    eprintln!("{n} slow clients opened in {opened:?}; a prediction beside them took {took:?}; all closed after {all_closed:?}");
    assert_eq!(
        request(
            "POST",
            &format!("http://{addr}/api/predict"),
            Some("image/png"),
            Some(&png)
        )
        .0,
        200
    );
}

#[test]
fn connections_past_the_bound_are_answered_503() {
    let addr = start_with(ServeConfig {
        max_connections: Some(3),
        ..Default::default()
    });
    let held: Vec<_> = (0..3)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    // The three are accepted (and counted) before the fourth arrives.
    std::thread::sleep(Duration::from_millis(300));
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /api/model HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let answer = read_to_close(&mut s);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("connection limit"), "{answer}");
    // Once they close, the server answers again.
    drop(held);
    let t = Instant::now();
    loop {
        let (status, _) = request("GET", &format!("http://{addr}/api/model"), None, None);
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
        assert!(t.elapsed() < Duration::from_secs(5), "still 503");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_stops_accepting_and_finishes_the_request_in_flight() {
    let run = trained_run();
    let mut server = ServeProcess::start_with(run, &["--header-timeout-secs", "5"]);
    let addr: SocketAddr = server
        .url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let png = example_png(addr, 4);
    // A request in flight: its head and half its body are in when SIGTERM arrives.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(predict_head(png.len()).as_bytes()).unwrap();
    s.write_all(&png[..png.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(300));
    // No longer accepting.
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "a new connection was accepted after SIGTERM"
    );
    s.write_all(&png[png.len() / 2..]).unwrap();
    let answer = read_to_close(&mut s);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"probabilities\""), "{answer}");
    let t = Instant::now();
    let status = loop {
        if let Some(st) = server.child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let mut out = String::new();
    server
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.contains("stopped"), "{out}");
}

#[test]
fn images_whose_header_claims_a_huge_size_are_refused_before_decoding() {
    use crate::common::{lying_jpeg, lying_png};
    let addr = start(8 << 20);
    let url = format!("http://{addr}/api/predict");
    let t = Instant::now();
    for (ct, bytes) in [
        ("image/png", lying_png(100_000, 100_000, 0)),
        ("image/png", lying_png(100_000, 100_000, 6)),
        ("image/jpeg", lying_jpeg(65_000, 65_000)),
    ] {
        let (s, body) = request("POST", &url, Some(ct), Some(&bytes));
        assert_eq!(s, 422, "{body}");
        // The PNGs' size is read from their header; the JPEG, without a scan, is refused
        // by its decoder before it allocates for its pixels.
        assert!(
            body.contains("100000×100000 pixels")
                || (ct == "image/jpeg" && body.contains("cannot decode")),
            "{body}"
        );
    }
    assert!(t.elapsed() < Duration::from_secs(5));
}
