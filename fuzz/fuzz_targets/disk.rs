//! Every decoder of on-disk formats (pack header, tree, snapshot, contract record, audit
//! record), fed arbitrary bytes: none may panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peer::protocol::fuzz::disk(data);
});
