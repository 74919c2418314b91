//! Every decoder of network input (protocol.md §2–§5), fed arbitrary bytes: none may panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    peer::protocol::fuzz::wire(data);
});
