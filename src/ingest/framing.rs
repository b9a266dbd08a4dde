//! A guard in front of the multipart parser (multer), which buffers whole
//! whatever precedes the first boundary and each part's header block, and
//! searches all of it again every time more arrives: a client could make it
//! hold the whole upload limit and spend time quadratic in it. multer's
//! `Constraints` bound parts' bodies and the whole stream only.
//!
//! The guard follows the body's framing as multer reads it (preamble,
//! delimiter, part header block, part body, delimiter, …, closing
//! delimiter) with a bounded look-behind, so each byte is looked at a
//! constant number of times, and fails as soon as the preamble or a header
//! block passes its bound, before multer sees those bytes. It also drops the
//! preamble (multer discards it anyway) and hands each header block over
//! whole, so multer searches each one once. Bodies pass through untouched.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use memchr::memmem;

/// What passed its bound, which the guard refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("more than {max} bytes before the first multipart boundary")]
    Preamble { max: usize },
    #[error("a multipart part's header block is longer than {max} bytes")]
    PartHeaders { max: usize },
    #[error("the upload exceeds {max} bytes")]
    Body { max: u64 },
}

/// The bounds the guard enforces.
#[derive(Debug, Clone, Copy)]
pub struct FramingBounds {
    pub preamble_bytes: usize,
    pub part_header_bytes: usize,
    /// The whole body, preamble included (the preamble never reaches
    /// multer, whose own count would miss it).
    pub body_bytes: u64,
}

/// Where the guard is in the body.
enum State {
    /// Before the first `--boundary`: how many bytes have gone by, and the
    /// last few, in case the delimiter straddles two chunks.
    Preamble { seen: usize, tail: Vec<u8> },
    /// After a delimiter, up to the end of the part's header block
    /// (`\r\n\r\n`), held here and handed over whole; `scanned`: how far
    /// the block has been searched for its end.
    Head { held: BytesMut, scanned: usize },
    /// A part's body, passed through; the last few bytes are kept to find
    /// a `\r\n--boundary` that straddles two chunks.
    Body { tail: Vec<u8> },
    /// After the closing delimiter, or after a framing error multer will
    /// report itself: everything passes through.
    Through,
}

pub struct Framing {
    /// `--boundary`, which ends the preamble.
    delimiter: Vec<u8>,
    /// `\r\n--boundary`, which ends a part's body.
    body_end: Vec<u8>,
    bounds: FramingBounds,
    received: u64,
    state: State,
}

const CRLF: &[u8] = b"\r\n";
const HEAD_END: &[u8] = b"\r\n\r\n";

impl Framing {
    pub fn new(boundary: &str, bounds: FramingBounds) -> Self {
        let delimiter = [b"--", boundary.as_bytes()].concat();
        let body_end = [CRLF, &delimiter].concat();
        Self {
            delimiter,
            body_end,
            bounds,
            received: 0,
            state: State::Preamble {
                seen: 0,
                tail: Vec::new(),
            },
        }
    }

    /// Follows `chunk`; queues what multer may see of it (often the chunk
    /// itself, sometimes nothing yet).
    pub fn push(&mut self, chunk: Bytes, out: &mut VecDeque<Bytes>) -> Result<(), FramingError> {
        self.received += chunk.len() as u64;
        if self.received > self.bounds.body_bytes {
            return Err(FramingError::Body {
                max: self.bounds.body_bytes,
            });
        }
        let mut at = 0;
        while at < chunk.len() {
            let rest = &chunk[at..];
            match &mut self.state {
                State::Through => {
                    out.push_back(chunk.slice(at..));
                    return Ok(());
                }
                State::Preamble { seen, tail } => match find_across(tail, rest, &self.delimiter) {
                    Some(end) => {
                        // The preamble is what came before the delimiter.
                        let preamble = *seen + end - self.delimiter.len();
                        if preamble > self.bounds.preamble_bytes {
                            return Err(FramingError::Preamble {
                                max: self.bounds.preamble_bytes,
                            });
                        }
                        out.push_back(Bytes::from(self.delimiter.clone()));
                        at += end;
                        self.state = State::Head {
                            held: BytesMut::new(),
                            scanned: 0,
                        };
                    }
                    None => {
                        *seen += rest.len();
                        // The last bytes may start the delimiter.
                        if seen.saturating_sub(self.delimiter.len() - 1) > self.bounds.preamble_bytes {
                            return Err(FramingError::Preamble {
                                max: self.bounds.preamble_bytes,
                            });
                        }
                        keep_tail(tail, rest, self.delimiter.len() - 1);
                        return Ok(());
                    }
                },
                State::Head { held, scanned } => {
                    // Never hold more than one byte past the bound.
                    let max = self.bounds.part_header_bytes;
                    let take = rest.len().min(max + 1 - held.len());
                    held.extend_from_slice(&rest[..take]);
                    at += take;
                    match head_end(held, scanned) {
                        HeadEnd::Closing | HeadEnd::Malformed => {
                            // multer ends or fails here: nothing left to bound.
                            out.push_back(std::mem::take(held).freeze());
                            self.state = State::Through;
                        }
                        HeadEnd::At(end) if end > max => {
                            return Err(FramingError::PartHeaders { max });
                        }
                        HeadEnd::At(end) => {
                            // What followed the block is body: look at it again.
                            at -= held.len() - end;
                            held.truncate(end);
                            out.push_back(std::mem::take(held).freeze());
                            self.state = State::Body { tail: Vec::new() };
                        }
                        HeadEnd::NotYet if held.len() > max => {
                            return Err(FramingError::PartHeaders { max });
                        }
                        HeadEnd::NotYet => {}
                    }
                }
                State::Body { tail } => match find_across(tail, rest, &self.body_end) {
                    Some(end) => {
                        out.push_back(chunk.slice(at..at + end));
                        at += end;
                        self.state = State::Head {
                            held: BytesMut::new(),
                            scanned: 0,
                        };
                    }
                    None => {
                        keep_tail(tail, rest, self.body_end.len() - 1);
                        out.push_back(chunk.slice(at..));
                        return Ok(());
                    }
                },
            }
        }
        Ok(())
    }

    /// Whether the guard is in a part's body (for tests that follow it).
    #[cfg(test)]
    fn in_body(&self) -> bool {
        matches!(self.state, State::Body { .. })
    }

    /// The body ended: hands over a header block cut short, so multer
    /// reports the body as incomplete, as it would have without the guard.
    pub fn finish(&mut self, out: &mut VecDeque<Bytes>) {
        if let State::Head { held, .. } = &mut self.state
            && !held.is_empty()
        {
            out.push_back(std::mem::take(held).freeze());
        }
        self.state = State::Through;
    }
}

enum HeadEnd {
    /// `--` right after the delimiter: the closing one.
    Closing,
    /// Not the padding and CRLF multer requires: it will fail here.
    Malformed,
    /// The block ends (its `\r\n\r\n` included) at this offset.
    At(usize),
    NotYet,
}

/// Reads a held header block as multer does: `--` (closing delimiter), or
/// spaces and tabs (transport padding), `\r\n`, then headers up to
/// `\r\n\r\n`. Searches only what was not searched before.
fn head_end(held: &[u8], scanned: &mut usize) -> HeadEnd {
    if held.len() < 2 {
        return HeadEnd::NotYet;
    }
    if held.starts_with(b"--") {
        return HeadEnd::Closing;
    }
    let padding = held.iter().take_while(|b| matches!(**b, b' ' | b'\t')).count();
    let Some(after) = held.get(padding..padding + 2) else {
        return HeadEnd::NotYet;
    };
    if after != CRLF {
        return HeadEnd::Malformed;
    }
    let headers = padding + 2;
    // The end may straddle what was searched and what just arrived.
    let from = headers.max(scanned.saturating_sub(HEAD_END.len() - 1));
    *scanned = held.len();
    match memmem::find(&held[from..], HEAD_END) {
        Some(i) => HeadEnd::At(from + i + HEAD_END.len()),
        None => HeadEnd::NotYet,
    }
}

/// Where `pattern` first ends in `rest`, looking also at a match that
/// starts in `tail` (the bytes just before `rest`, shorter than `pattern`).
fn find_across(tail: &[u8], rest: &[u8], pattern: &[u8]) -> Option<usize> {
    if !tail.is_empty() {
        let joined = [tail, &rest[..rest.len().min(pattern.len() - 1)]].concat();
        if let Some(i) = memmem::find(&joined, pattern) {
            return Some(i + pattern.len() - tail.len());
        }
    }
    memmem::find(rest, pattern).map(|i| i + pattern.len())
}

/// Keeps the last `keep` bytes of `tail` followed by `rest`.
fn keep_tail(tail: &mut Vec<u8>, rest: &[u8], keep: usize) {
    if rest.len() >= keep {
        tail.clear();
        tail.extend_from_slice(&rest[rest.len() - keep..]);
    } else {
        tail.extend_from_slice(rest);
        let excess = tail.len().saturating_sub(keep);
        tail.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDARY: &str = "xyz";

    fn bounds(preamble_bytes: usize, part_header_bytes: usize) -> FramingBounds {
        FramingBounds {
            preamble_bytes,
            part_header_bytes,
            body_bytes: u64::MAX,
        }
    }

    /// Feeds `body` in chunks of `size`; what multer would see, or the error.
    fn run(body: &[u8], size: usize, bounds: FramingBounds) -> Result<Vec<u8>, FramingError> {
        let mut framing = Framing::new(BOUNDARY, bounds);
        let mut out = VecDeque::new();
        for chunk in body.chunks(size) {
            framing.push(Bytes::copy_from_slice(chunk), &mut out)?;
        }
        framing.finish(&mut out);
        Ok(out.into_iter().flat_map(|b| b.to_vec()).collect())
    }

    const FORM: &[u8] = b"--xyz\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--xyz\r\n\
Content-Disposition: form-data; name=\"file\"\r\nContent-Type: text/plain\r\n\r\nline 1\r\n--xy\r\nline 2\r\n--xyz--\r\nepilogue";

    #[test]
    fn a_well_formed_body_passes_unchanged_in_any_chunking() {
        for size in [1, 2, 3, 5, 7, 16, 1000] {
            assert_eq!(
                run(FORM, size, bounds(64, 128)).as_deref(),
                Ok(FORM),
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn the_preamble_is_dropped_within_its_bound_and_refused_past_it() {
        let body = [b"a preamble -- --xy".as_slice(), FORM].concat();
        for size in [1, 4, 1000] {
            assert_eq!(
                run(&body, size, bounds(18, 128)).as_deref(),
                Ok(FORM),
                "chunks of {size}"
            );
            assert_eq!(
                run(&body, size, bounds(17, 128)),
                Err(FramingError::Preamble { max: 17 }),
                "chunks of {size}"
            );
        }
        // Refused as soon as the bound is passed, long before the end.
        let mut framing = Framing::new(BOUNDARY, bounds(1024, 128));
        let mut out = VecDeque::new();
        let refused = (0..10_000).find(|_| framing.push(Bytes::from_static(b"0123456789abcdef"), &mut out).is_err());
        // At 1,040 bytes: past 1,024 even if the last 4 start a delimiter.
        assert_eq!(refused, Some(64));
        assert!(out.is_empty(), "nothing of the preamble reached the parser");
    }

    #[test]
    fn a_header_block_is_bounded_and_handed_over_whole() {
        // The longer of the two blocks, from after its delimiter.
        let longest = b"\r\nContent-Disposition: form-data; name=\"file\"\r\nContent-Type: text/plain\r\n\r\n".len();
        for size in [1, 3, 1000] {
            assert_eq!(
                run(FORM, size, bounds(0, longest)).as_deref(),
                Ok(FORM),
                "chunks of {size}"
            );
            assert_eq!(
                run(FORM, size, bounds(0, longest - 1)),
                Err(FramingError::PartHeaders { max: longest - 1 }),
                "chunks of {size}"
            );
        }
        let mut framing = Framing::new(BOUNDARY, bounds(0, 100));
        let mut out = VecDeque::new();
        framing
            .push(Bytes::from_static(b"--xyz\r\nContent-Dis"), &mut out)
            .expect("within");
        framing
            .push(Bytes::from_static(b"position: x\r\n"), &mut out)
            .expect("within");
        assert_eq!(out.len(), 1, "the delimiter only; the block is held");
        framing.push(Bytes::from_static(b"\r\nbody"), &mut out).expect("within");
        let seen: Vec<u8> = out.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(seen, b"--xyz\r\nContent-Disposition: x\r\n\r\nbody");
        // Endless header lines, or endless padding, are refused.
        for filler in [b"X-A: b\r\n".as_slice(), b" ".as_slice()] {
            let mut framing = Framing::new(BOUNDARY, bounds(0, 100));
            let mut out = VecDeque::new();
            let mut head = b"--xyz".to_vec();
            if filler != b" " {
                head.extend_from_slice(b"\r\n");
            }
            framing.push(Bytes::from(head), &mut out).expect("delimiter");
            let refused = (0..1000).find_map(|_| framing.push(Bytes::copy_from_slice(filler), &mut out).err());
            assert_eq!(refused, Some(FramingError::PartHeaders { max: 100 }));
        }
    }

    #[test]
    fn a_second_parts_header_block_is_bounded_too() {
        let long = format!(
            "--xyz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nv\r\n--xyz\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(200)
        );
        assert_eq!(
            run(long.as_bytes(), 7, bounds(0, 100)),
            Err(FramingError::PartHeaders { max: 100 })
        );
    }

    #[test]
    fn malformed_framing_is_left_for_the_parser_to_report() {
        for body in [
            b"--xyzjunk\r\n\r\n".as_slice(),
            b"--xyz\r".as_slice(),
            b"--xyz".as_slice(),
            b"no boundary at all".as_slice(),
        ] {
            let expected: &[u8] = if body.starts_with(b"--xyz") { body } else { b"" };
            for size in [1, 100] {
                assert_eq!(run(body, size, bounds(64, 64)).as_deref(), Ok(expected));
            }
        }
        // Not held either: what follows a malformed block goes straight to
        // the parser, which fails on it, however long it is.
        let long = [b"--xyz junk".as_slice(), &[b'a'; 200]].concat();
        assert_eq!(run(&long, 3, bounds(64, 64)).as_deref(), Ok(long.as_slice()));
    }

    #[test]
    fn the_whole_body_is_bounded() {
        let limited = FramingBounds {
            body_bytes: 20,
            ..bounds(64, 128)
        };
        assert_eq!(run(FORM, 8, limited), Err(FramingError::Body { max: 20 }));
    }

    /// Random bodies built from multipart's own pieces: well-formed parts
    /// with padding, odd header lines and data full of near-delimiters, or
    /// pieces in any order, sometimes with noise inserted.
    fn random_body(next: &mut impl FnMut(usize) -> usize) -> Vec<u8> {
        const PIECES: &[&str] = &[
            "--xyz", "--xy", "\r\n", "\r\n\r\n", "\r", "\n", "--", " ", "\t", "X-B: c", "data", "-",
        ];
        const HEADERS: &[&str] = &[
            "Content-Disposition: form-data; name=\"a\"\r\n",
            "Content-Disposition: form-data; name=\"file\"\r\n",
            "Content-Type: text/plain\r\n",
            "X-B: --xyz\r\n",
            "X-C: \r\n",
        ];
        let mut body = Vec::new();
        match next(3) {
            0 => {
                for _ in 0..next(20) {
                    body.extend_from_slice(PIECES[next(PIECES.len())].as_bytes());
                }
            }
            _ => {
                if next(3) == 0 {
                    body.extend_from_slice(b"pre --xy amble\r\n");
                }
                for _ in 0..1 + next(3) {
                    body.extend_from_slice(b"--xyz");
                    body.extend_from_slice(&b"  \t"[..next(4)]);
                    body.extend_from_slice(b"\r\n");
                    for _ in 0..next(3) {
                        body.extend_from_slice(HEADERS[next(HEADERS.len())].as_bytes());
                    }
                    body.extend_from_slice(b"\r\n");
                    for _ in 0..next(6) {
                        body.extend_from_slice(PIECES[next(PIECES.len())].as_bytes());
                    }
                    body.extend_from_slice(b"\r\n");
                }
                body.extend_from_slice(b"--xyz--\r\nepilogue");
            }
        }
        if !body.is_empty() && next(3) == 0 {
            let at = next(body.len());
            let noise = PIECES[next(PIECES.len())].as_bytes();
            body.splice(at..at, noise.iter().copied());
        }
        body
    }

    /// Feeds multer `body` a byte at a time and notes after how many bytes
    /// each field appeared (its header block read), and after how many and
    /// why it stopped.
    fn multer_fields(body: &[u8]) -> (Vec<usize>, usize, String) {
        use futures_util::FutureExt;
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, std::io::Error>>();
        let mut multipart = multer::Multipart::new(rx, BOUNDARY);
        let mut field: Option<multer::Field<'static>> = None;
        let mut fields = Vec::new();
        for fed in 0..=body.len() {
            match body.get(fed) {
                Some(byte) => {
                    let _ = tx.unbounded_send(Ok(Bytes::copy_from_slice(&[*byte])));
                }
                None => tx.close_channel(),
            }
            // Make every bit of progress the bytes so far allow.
            loop {
                if let Some(current) = field.as_mut() {
                    match current.chunk().now_or_never() {
                        Some(Ok(Some(_))) => continue,
                        Some(Ok(None)) => field = None,
                        Some(Err(e)) => return (fields, fed + 1, format!("field error: {e}")),
                        None => break,
                    }
                }
                match multipart.next_field().now_or_never() {
                    Some(Ok(Some(next))) => {
                        fields.push(fed + 1);
                        field = Some(next);
                    }
                    Some(Ok(None)) => return (fields, fed + 1, "end".into()),
                    Some(Err(e)) => return (fields, fed + 1, format!("error: {e}")),
                    None => break,
                }
            }
        }
        (fields, body.len() + 1, "ran out".into())
    }

    /// The guard's idea of where each part's header block ends is the
    /// parser's: fed the same bytes one at a time, the guard enters a
    /// part's body exactly when multer hands out that part, for every part
    /// it hands out.
    #[test]
    fn the_guard_follows_the_parser_byte_for_byte() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below.max(1) as u64) as usize
        };
        let mut parts = 0;
        for _ in 0..3_000 {
            let body = random_body(&mut next);
            let (fields, stopped_at, stopped) = multer_fields(&body);
            let mut framing = Framing::new(BOUNDARY, bounds(1 << 20, 1 << 20));
            let mut out = VecDeque::new();
            let mut head_ends = Vec::new();
            for (i, byte) in body.iter().enumerate() {
                let before = framing.in_body();
                framing
                    .push(Bytes::copy_from_slice(&[*byte]), &mut out)
                    .expect("within the bounds");
                if framing.in_body() && !before {
                    head_ends.push(i + 1);
                }
            }
            let text = String::from_utf8_lossy(&body);
            assert!(
                head_ends.starts_with(&fields),
                "{text:?}: multer's parts after {fields:?} bytes ({stopped}), the guard's {head_ends:?}"
            );
            // Past multer's last part, the guard saw no block end before
            // multer stopped (at the earliest, the block multer refused to
            // parse), and none at all after a clean end.
            let extra = head_ends[fields.len()..].first();
            assert!(
                extra.is_none_or(|at| *at >= stopped_at && stopped != "end"),
                "{text:?}: multer's parts after {fields:?} bytes ({stopped} after {stopped_at}), the guard's {head_ends:?}"
            );
            parts += fields.len();
        }
        println!("{parts} parts compared");
        assert!(parts > 2_000, "the bodies exercise parts: {parts}");
    }
}
