#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chorus_fuzz::frame_v2_binary::run(data));
