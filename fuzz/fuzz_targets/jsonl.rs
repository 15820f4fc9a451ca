//! Text inputs on arbitrary bytes: plain lines, JSON lines with ids, labelled JSON lines. Every
//! line parses or gives an error naming its line; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smelt_formats::texts::{parse_labelled, parse_lines};

fuzz_target!(|data: &[u8]| {
    if let Ok(items) = parse_lines(data, false) {
        assert!(items.len() <= data.len() + 1);
    }
    let _ = parse_lines(data, true);
    let _ = parse_labelled(data);
});
