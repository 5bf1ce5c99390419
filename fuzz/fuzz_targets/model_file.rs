//! Fuzzes the model-file loader: parse, shape-check, summarise; errors are fine, panics are not.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(spec) = convnet::ModelSpec::parse(text, "fuzz") {
            let _ = spec.output_len();
            let _ = convnet::ModelSpec::parse(&spec.to_toml(), "round-trip").expect("canonical text parses back");
        }
    }
});
