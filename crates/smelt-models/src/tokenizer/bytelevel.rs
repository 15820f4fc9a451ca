//! GPT-2's byte-level alphabet: every byte is mapped to a printable Unicode character so that
//! BPE vocabularies can be stored as text. Printable Latin-1 bytes (`!`..`~`, `¡`..`¬`,
//! `®`..`ÿ`) map to themselves; the other 68 bytes map to U+0100 onwards, in byte order
//! (so the space byte 0x20 becomes `Ġ`, U+0120, and `\n` becomes `Ċ`).

use std::sync::OnceLock;

fn printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

/// `BYTE_TO_CHAR[b]`: the character byte `b` is written as.
pub fn byte_to_char() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = ['\0'; 256];
        let mut next = 256u32;
        for b in 0..=255u8 {
            t[b as usize] = if printable(b) {
                b as char
            } else {
                let c = char::from_u32(next).unwrap_or('\u{FFFD}');
                next += 1;
                c
            };
        }
        t
    })
}

/// The byte a byte-level character stands for, if it is one.
pub fn char_to_byte(c: char) -> Option<u8> {
    static REVERSE: OnceLock<[i16; 324]> = OnceLock::new();
    let r = REVERSE.get_or_init(|| {
        let mut r = [-1i16; 324];
        for (b, &c) in byte_to_char().iter().enumerate() {
            r[c as usize] = b as i16;
        }
        r
    });
    r.get(c as usize).and_then(|&b| u8::try_from(b).ok())
}

/// Writes `bytes` in the byte-level alphabet.
pub fn encode(bytes: &[u8]) -> String {
    let t = byte_to_char();
    bytes.iter().map(|&b| t[b as usize]).collect()
}

/// Reads a byte-level string back to bytes; `None` if it holds a character outside the alphabet.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    s.chars().map(char_to_byte).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_a_bijection_with_gpt2s_landmarks() {
        let t = byte_to_char();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(t[b as usize]), Some(b));
        }
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)).unwrap(), all);
        assert_eq!(char_to_byte('€'), None);
    }
}
