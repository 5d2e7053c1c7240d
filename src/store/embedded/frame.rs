//! Checksummed frames, the unit of every file the embedded store writes.
//!
//! A frame is `[body length: u32 LE][CRC-32C of the body: u32 LE][body]`.
//! A log segment is a sequence of frames, one per group commit; a snapshot
//! is a sequence of frames ending in an [`super::entry::Entry::End`].
//! Reading stops at the first frame that is cut short or whose checksum does
//! not match: the torn tail a crash in the middle of a write leaves behind.
//! A log segment is zero-filled ahead of its writer ([`super::writer`]), so
//! an all-zero header (no frame has an empty body) ends the frames cleanly
//! when only zeros follow it.

/// Bytes before a frame's body.
pub const HEADER: usize = 8;
/// Longest body read back: anything longer is taken for garbage (a writer
/// caps its groups far below this).
pub const MAX_BODY: usize = 1 << 30;

/// Starts a frame at the end of `out`: reserves its header and returns where
/// it starts, for [`finish`] once the body is appended.
pub fn begin(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    start
}

/// Fills in the header of the frame begun at `start` (its body is the rest
/// of `out`).
pub fn finish(out: &mut [u8], start: usize) {
    let body = &out[start + HEADER..];
    debug_assert!(!body.is_empty(), "an empty frame reads as zero fill");
    let len = u32::try_from(body.len()).expect("a frame body under 4 GiB");
    let crc = crc32c(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// How a sequence of frames ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Every byte belongs to a whole frame.
    Clean,
    /// The frames end at byte `at`, where only zeros follow (the zero fill
    /// ahead of the writer).
    Zeros { at: usize },
    /// The frames stop at byte `at`: what follows is cut short or garbled.
    Torn { at: usize, why: &'static str },
}

/// The bodies of the whole frames at the start of `bytes`, and how they end.
pub fn read(bytes: &[u8]) -> (Vec<&[u8]>, End) {
    let mut bodies = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + HEADER) else {
            return (bodies, End::Torn { at, why: "a frame header cut short" });
        };
        if header == [0; HEADER] {
            return match bytes[at..].iter().all(|b| *b == 0) {
                true => (bodies, End::Zeros { at }),
                false => (bodies, End::Torn { at, why: "bytes after a zero header" }),
            };
        }
        let len = u32::from_le_bytes(header[..4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().unwrap());
        if len > MAX_BODY {
            return (bodies, End::Torn { at, why: "a frame length out of range" });
        }
        let Some(body) = bytes.get(at + HEADER..at + HEADER + len) else {
            return (bodies, End::Torn { at, why: "a frame body cut short" });
        };
        if crc32c(body) != crc {
            return (bodies, End::Torn { at, why: "a frame checksum mismatch" });
        }
        bodies.push(body);
        at += HEADER + len;
    }
    (bodies, End::Clean)
}

fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for body in bodies {
            let start = begin(&mut out);
            out.extend_from_slice(body);
            finish(&mut out, start);
        }
        out
    }

    #[test]
    fn whole_frames_read_back_in_order() {
        let bytes = frames(&[b"one", b"2", b"three"]);
        assert_eq!(read(&bytes), (vec![&b"one"[..], b"2", b"three"], End::Clean));
    }

    #[test]
    fn zeros_after_the_last_frame_end_the_frames_cleanly() {
        let mut bytes = frames(&[b"one", b"two"]);
        let end = bytes.len();
        bytes.extend_from_slice(&[0; 100]);
        assert_eq!(read(&bytes), (vec![&b"one"[..], b"two"], End::Zeros { at: end }));
        // Something after the zero header: not fill, but a write torn short
        // (its first bytes never reached the disk).
        bytes[end + 50] = 1;
        assert_eq!(read(&bytes).1, End::Torn { at: end, why: "bytes after a zero header" });
    }

    #[test]
    fn a_tail_cut_anywhere_keeps_the_whole_frames_before_it() {
        let bytes = frames(&[b"first", b"second"]);
        let second = HEADER + 5;
        for cut in second + 1..bytes.len() {
            let (bodies, end) = read(&bytes[..cut]);
            assert_eq!(bodies, vec![&b"first"[..]], "cut at {cut}");
            assert!(matches!(end, End::Torn { at, .. } if at == second), "cut at {cut}: {end:?}");
        }
    }

    #[test]
    fn a_flipped_bit_ends_the_frames_at_the_damaged_one() {
        let mut bytes = frames(&[b"first", b"second", b"third"]);
        let second = HEADER + 5;
        bytes[second + HEADER + 2] ^= 0x10;
        let (bodies, end) = read(&bytes);
        assert_eq!(bodies, vec![&b"first"[..]]);
        assert_eq!(end, End::Torn { at: second, why: "a frame checksum mismatch" });
    }
}
