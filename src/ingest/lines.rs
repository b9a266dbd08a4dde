//! Splits a byte stream into NDJSON lines as chunks arrive, holding at most
//! one line (bounded) in memory: the file is never held whole.
//!
//! Accepts what real exporters write: `\n` or `\r\n`, a UTF-8 byte-order mark
//! at the start, blank lines (skipped, but counted so line numbers match an
//! editor's), and a last line without its newline.

use memchr::memchr;

/// What the splitter found on one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A non-blank line, without its terminator.
    Text { number: u64, bytes: &'a [u8] },
    /// A line over the bound; its bytes were skipped, not buffered.
    TooLong { number: u64 },
}

pub struct LineSplitter {
    line_bytes_max: usize,
    /// The start of a line whose end has not arrived yet.
    pending: Vec<u8>,
    /// The current line passed the bound: drop bytes until its newline.
    skipping: bool,
    /// 1-based number of the line being assembled.
    number: u64,
    at_start: bool,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl LineSplitter {
    pub fn new(line_bytes_max: usize) -> Self {
        Self {
            line_bytes_max,
            pending: Vec::new(),
            skipping: false,
            number: 1,
            at_start: true,
        }
    }

    /// Feeds a chunk; calls `on_line` for every line it completes.
    pub fn push<E>(&mut self, mut chunk: &[u8], mut on_line: impl FnMut(Line<'_>) -> Result<(), E>) -> Result<(), E> {
        if self.at_start {
            // The mark may straddle chunks: hold up to three bytes until known.
            let wanted = (BOM.len() - self.pending.len()).min(chunk.len());
            self.pending.extend_from_slice(&chunk[..wanted]);
            chunk = &chunk[wanted..];
            if self.pending.len() < BOM.len() {
                return Ok(());
            }
            self.at_start = false;
            let head = std::mem::take(&mut self.pending);
            if head != BOM {
                self.split(&head, &mut on_line)?;
            }
        }
        self.split(chunk, &mut on_line)
    }

    fn split<E>(&mut self, mut chunk: &[u8], on_line: &mut impl FnMut(Line<'_>) -> Result<(), E>) -> Result<(), E> {
        while let Some(newline) = memchr(b'\n', chunk) {
            let (head, rest) = (&chunk[..newline], &chunk[newline + 1..]);
            chunk = rest;
            if self.skipping {
                self.skipping = false;
                self.pending.clear();
                self.emit_too_long(on_line)?;
                continue;
            }
            if self.pending.is_empty() {
                self.emit(head, on_line)?;
            } else if self.pending.len() + head.len() > self.line_bytes_max + 1 {
                self.pending.clear();
                self.emit_too_long(on_line)?;
            } else {
                let mut line = std::mem::take(&mut self.pending);
                line.extend_from_slice(head);
                self.emit(&line, on_line)?;
                // Keep the allocation for the next straddling line.
                line.clear();
                self.pending = line;
            }
        }
        if !self.skipping {
            // +1: the line may end in a `\r` that is not part of it.
            if self.pending.len() + chunk.len() > self.line_bytes_max + 1 {
                self.skipping = true;
                self.pending.clear();
            } else {
                self.pending.extend_from_slice(chunk);
            }
        }
        Ok(())
    }

    /// Ends the stream: the last line may lack its newline.
    pub fn finish<E>(&mut self, mut on_line: impl FnMut(Line<'_>) -> Result<(), E>) -> Result<(), E> {
        if self.at_start {
            // Fewer than three bytes in all: data unless it is the mark.
            self.at_start = false;
            if self.pending == BOM {
                self.pending.clear();
            }
        }
        if self.skipping {
            self.skipping = false;
            return self.emit_too_long(&mut on_line);
        }
        let line = std::mem::take(&mut self.pending);
        if !line.is_empty() {
            self.emit(&line, &mut on_line)?;
        }
        Ok(())
    }

    fn emit<E>(&mut self, line: &[u8], on_line: &mut impl FnMut(Line<'_>) -> Result<(), E>) -> Result<(), E> {
        let number = self.number;
        self.number += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > self.line_bytes_max {
            return on_line(Line::TooLong { number });
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        on_line(Line::Text { number, bytes: line })
    }

    fn emit_too_long<E>(&mut self, on_line: &mut impl FnMut(Line<'_>) -> Result<(), E>) -> Result<(), E> {
        let number = self.number;
        self.number += 1;
        on_line(Line::TooLong { number })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Text(u64, String),
        TooLong(u64),
    }

    /// Splits `input` fed in chunks of `chunk` bytes.
    fn split(input: &[u8], chunk: usize, max: usize) -> Vec<Seen> {
        let mut splitter = LineSplitter::new(max);
        let mut seen = Vec::new();
        let mut record = |line: Line<'_>| -> Result<(), ()> {
            seen.push(match line {
                Line::Text { number, bytes } => Seen::Text(number, String::from_utf8_lossy(bytes).into_owned()),
                Line::TooLong { number } => Seen::TooLong(number),
            });
            Ok(())
        };
        for part in input.chunks(chunk.max(1)) {
            splitter.push(part, &mut record).unwrap();
        }
        splitter.finish(&mut record).unwrap();
        seen
    }

    fn text(number: u64, s: &str) -> Seen {
        Seen::Text(number, s.to_owned())
    }

    #[test]
    fn lines_come_out_the_same_whatever_the_chunking() {
        let cases: &[(&str, &[u8], Vec<Seen>)] = &[
            ("plain", b"a\nb\n", vec![text(1, "a"), text(2, "b")]),
            ("no final newline", b"a\nb", vec![text(1, "a"), text(2, "b")]),
            ("crlf", b"a\r\nb\r\n", vec![text(1, "a"), text(2, "b")]),
            (
                "blank lines keep numbering",
                b"a\n\n  \r\n\tb\n\n",
                vec![text(1, "a"), text(4, "\tb")],
            ),
            ("bom", b"\xEF\xBB\xBFa\nb", vec![text(1, "a"), text(2, "b")]),
            ("bom only", b"\xEF\xBB\xBF", vec![]),
            ("short", b"a", vec![text(1, "a")]),
            ("partial bom is data", b"\xEF\xBBx\n", vec![text(1, "\u{FFFD}x")]),
            ("empty", b"", vec![]),
            ("only newlines", b"\n\n\n", vec![]),
            (
                "bom not at start is data",
                b"a\n\xEF\xBB\xBFb",
                vec![text(1, "a"), text(2, "\u{FEFF}b")],
            ),
            (
                "at the bound",
                b"12345\n123456\n",
                vec![text(1, "12345"), Seen::TooLong(2)],
            ),
            ("bound excludes cr", b"12345\r\n", vec![text(1, "12345")]),
            (
                "too long in the middle",
                b"a\n1234567890123\nb\n",
                vec![text(1, "a"), Seen::TooLong(2), text(3, "b")],
            ),
            (
                "too long at the end",
                b"a\n1234567890",
                vec![text(1, "a"), Seen::TooLong(2)],
            ),
        ];
        for (name, input, expected) in cases {
            for chunk in [1, 2, 3, 7, 1024] {
                assert_eq!(&split(input, chunk, 5), expected, "{name}, chunks of {chunk}");
            }
        }
    }

    #[test]
    fn memory_stays_bounded_by_the_line_bound() {
        let mut splitter = LineSplitter::new(100);
        let huge = vec![b'x'; 1 << 20];
        splitter.push(b"{}\n", |_| Ok::<_, ()>(())).unwrap();
        splitter.push(&huge, |_| Ok::<_, ()>(())).unwrap();
        assert!(
            splitter.pending.capacity() <= 1 << 10,
            "{}",
            splitter.pending.capacity()
        );
    }
}
