#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chorus_fuzz::longpoll_body::run(data));
