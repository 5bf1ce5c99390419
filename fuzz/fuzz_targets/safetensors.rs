//! Fuzzes the safetensors loader, including loading the tensors into a small network.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.safetensors");
    if let Ok(tensors) = convnet::nn::weights::parse_tensors(data, path) {
        let spec = convnet::ModelSpec::parse(convnet::nn::presets::MLP, "mlp").expect("preset parses");
        let mut net = convnet::Network::<f32>::new(spec, Default::default(), 0);
        let _ = net.set_params(tensors.into_iter().collect());
    }
});
