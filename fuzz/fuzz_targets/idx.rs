//! Fuzzes the IDX reader (raw and gzip).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = convnet::data::idx::parse_idx(data, std::path::Path::new("fuzz.idx"));
});
