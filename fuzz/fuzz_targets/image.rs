//! Fuzzes the PNG/JPEG loader in grayscale and RGB.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.png");
    let _ = convnet::data::image::decode_image(data, path, 1);
    let _ = convnet::data::image::decode_image(data, path, 3);
});
