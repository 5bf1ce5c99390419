//! Property tests of the shape arithmetic: for random layer options, the shape the model file
//! computes is the shape the forward pass produces, and invalid combinations are errors, never panics.
use convnet::{ModelSpec, Network, Tensor};
use proptest::prelude::*;

fn pair(a: usize, b: usize) -> String {
    format!("[{a}, {b}]")
}

fn layer() -> impl Strategy<Value = String> {
    prop_oneof![
        (1usize..5, 1usize..5, 1usize..5, 1usize..4, 1usize..4, 0usize..3, 0usize..3, 1usize..3, 1usize..3, 1usize..4, any::<bool>(), any::<bool>())
            .prop_map(|(oc, kh, kw, sh, sw, ph, pw, dh, dw, g, same, bias)| {
                let padding = if same { "\"same\"".to_string() } else { pair(ph, pw) };
                format!(
                    "type = \"conv2d\"\nout_channels = {}\nkernel = {}\nstride = {}\npadding = {padding}\ndilation = {}\ngroups = {g}\nbias = {bias}",
                    oc * g,
                    pair(kh, kw),
                    pair(sh, sw),
                    pair(dh, dw)
                )
            }),
        (prop_oneof![Just("maxpool2d"), Just("avgpool2d")], 1usize..5, 1usize..5, 1usize..4, 1usize..4, 0usize..3, 0usize..3, any::<bool>()).prop_map(
            |(t, kh, kw, sh, sw, ph, pw, ceil)| format!("type = \"{t}\"\nkernel = {}\nstride = {}\npadding = {}\nceil_mode = {ceil}", pair(kh, kw), pair(sh, sw), pair(ph, pw))
        ),
        (1usize..4, 1usize..4, 1usize..4, 1usize..4).prop_map(|(kh, kw, sh, sw)| format!("type = \"subsample\"\nkernel = {}\nstride = {}", pair(kh, kw), pair(sh, sw))),
        prop_oneof![Just("relu"), Just("tanh"), Just("sigmoid"), Just("identity"), Just("silu"), Just("gelu"), Just("elu"), Just("leaky_relu")].prop_map(|t| format!("type = \"{t}\"")),
        (prop_oneof![Just("adaptiveavgpool2d"), Just("adaptivemaxpool2d")], 1usize..6, 1usize..6).prop_map(|(t, oh, ow)| format!("type = \"{t}\"\noutput = {}", pair(oh, ow))),
        (any::<bool>(), 0.0f64..0.9).prop_map(|(bn, p)| if bn { "type = \"batchnorm2d\"".to_string() } else { format!("type = \"dropout2d\"\np = {p}") }),
    ]
}

/// Runs 300 random models; counts those the parser accepted, so that a parser which rejected
/// everything fails the test instead of passing it vacuously.
#[test]
fn computed_shapes_equal_forward_shapes() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    });
    let accepted = std::cell::Cell::new(0usize);
    let strategy = (
        1usize..4,
        1usize..12,
        1usize..12,
        prop::collection::vec(layer(), 1..4),
    );
    runner
        .run(&strategy, |(c, h, w, layers)| {
            let mut text = format!("input = [{c}, {h}, {w}]\n");
            for l in &layers {
                text.push_str(&format!("[[layers]]\n{l}\n"));
            }
            match ModelSpec::parse(&text, "prop") {
                Err(e) => {
                    // Rejected with a message that names the model and says why.
                    let m = e.to_string();
                    prop_assert!(m.starts_with("prop: ") && m.len() > 10, "{}", m);
                }
                Ok(spec) => {
                    accepted.set(accepted.get() + 1);
                    let out = spec.output_shape().unwrap();
                    let mut net = Network::<f32>::new(spec, Default::default(), 1);
                    let x = Tensor::from_vec(
                        &[2, c, h, w],
                        (0..2 * c * h * w).map(|i| (i as f32 * 0.1).sin()).collect(),
                    )
                    .unwrap();
                    let y = net.forward(x, true).unwrap();
                    let mut want = vec![2];
                    want.extend(&out);
                    prop_assert_eq!(y.shape(), &want[..]);
                    net.backward(y);
                }
            }
            Ok(())
        })
        .unwrap();
    // About half the random models fit their input (a third at least, whatever the seed).
    assert!(
        accepted.get() >= 100,
        "only {} of 300 random models parsed",
        accepted.get()
    );
}
