//! The NDJSON files of the run, read outside the measured windows: a scan
//! before the uploads counts lines and distinct transaction ids (what the
//! engine must answer and store), a pass after them writes the baseline CSV.
//!
//! Lines are split as the engine splits them (`src/ingest/lines.rs`): `\n` or
//! `\r\n`, a byte-order mark at the start ignored, blank lines skipped but
//! numbered, a last line without its newline.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::csv::{Purchase, transaction_id_of};

const BOM: &[u8] = b"\xEF\xBB\xBF";
const READ_BUF_BYTES: usize = 1 << 20;

/// Where each transaction id was last seen, over all files scanned so far.
#[derive(Default)]
pub struct IdIndex {
    last: HashMap<Box<str>, Seen>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    file: u8,
    line: u64,
}

impl IdIndex {
    /// Distinct ids over every file scanned.
    pub fn distinct(&self) -> u64 {
        self.last.len() as u64
    }

    fn is_last(&self, id: &str, file: u8, line: u64) -> bool {
        self.last.get(id) == Some(&Seen { file, line })
    }
}

/// What one file holds.
#[derive(Debug, Clone)]
pub struct FileScan {
    pub path: PathBuf,
    pub bytes: u64,
    /// Non-blank lines: what the engine must report as `total`.
    pub lines: u64,
    /// Distinct transaction ids in this file.
    pub distinct: u64,
    /// Ids no earlier file had: what the engine must report as `created`
    /// when it starts from an empty table.
    pub new_ids: u64,
}

/// Calls `on_line(number, bytes)` for every non-blank line (1-based numbers,
/// blank lines counted), without the line terminator.
fn for_each_line(path: &Path, mut on_line: impl FnMut(u64, &[u8]) -> Result<(), String>) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut reader = BufReader::with_capacity(READ_BUF_BYTES, file);
    let mut line = Vec::with_capacity(4096);
    let mut number = 0u64;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        number += 1;
        let mut bytes = line.strip_suffix(b"\n").unwrap_or(&line);
        bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        if number == 1 {
            bytes = bytes.strip_prefix(BOM).unwrap_or(bytes);
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        on_line(number, bytes).map_err(|e| format!("{}:{number}: {e}", path.display()))?;
    }
}

/// Scans file number `file` and records its ids in `index`.
pub fn scan(path: &Path, file: u8, index: &mut IdIndex) -> Result<FileScan, String> {
    let bytes = std::fs::metadata(path)
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
        .len();
    let mut scan = FileScan {
        path: path.to_path_buf(),
        bytes,
        lines: 0,
        distinct: 0,
        new_ids: 0,
    };
    for_each_line(path, |line, text| {
        scan.lines += 1;
        let id = transaction_id_of(text)?;
        let now = Seen { file, line };
        match index.last.get_mut(id.as_ref()) {
            None => {
                index.last.insert(id.into(), now);
                scan.distinct += 1;
                scan.new_ids += 1;
            }
            Some(seen) => {
                // First time in this file, known from an earlier one.
                if seen.file != file {
                    scan.distinct += 1;
                }
                *seen = now;
            }
        }
        Ok(())
    })?;
    Ok(scan)
}

/// The baseline CSV as written.
#[derive(Debug, Clone, Copy)]
pub struct CsvFile {
    pub rows: u64,
    pub bytes: u64,
}

/// Writes file number `file` (already scanned into `index`) as CSV to `out`,
/// keeping only the last occurrence of each transaction id: the unique index
/// makes `COPY` fail on a repeated id, and the engine's upsert leaves the last
/// one. The file is synced so that its write-back does not run during the
/// timed `\copy`.
pub fn write_csv(path: &Path, file: u8, index: &IdIndex, out: &Path) -> Result<CsvFile, String> {
    let target = File::create(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let mut writer = BufWriter::with_capacity(READ_BUF_BYTES, target);
    let mut row = Vec::with_capacity(1024);
    let mut csv = CsvFile { rows: 0, bytes: 0 };
    for_each_line(path, |line, text| {
        let purchase = Purchase::parse(text)?;
        if !index.is_last(&purchase.transaction_id()?, file, line) {
            return Ok(());
        }
        row.clear();
        purchase.write_csv(&mut row)?;
        writer
            .write_all(&row)
            .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
        csv.rows += 1;
        csv.bytes += row.len() as u64;
        Ok(())
    })?;
    let target = writer
        .into_inner()
        .map_err(|e| format!("cannot write {}: {}", out.display(), e.error()))?;
    target
        .sync_all()
        .map_err(|e| format!("cannot sync {}: {e}", out.display()))?;
    Ok(csv)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, price: &str) -> String {
        format!(
            r#"{{"transaction_id":"{id}","player_id":"p","platform":"steam","item_id":"i","item_name":"n","item_type":"dlc","price":{price},"currency":"USD","purchased_at":"2026-11-01T12:00:00Z"}}"#
        )
    }

    fn temp(name: &str, content: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("loadtest-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn counts_lines_and_ids_across_files_and_keeps_the_last() {
        // BOM, CRLF, a blank line, a repeat, no final newline.
        let first = format!(
            "\u{feff}{}\r\n\n{}\n  \n{}\n{}",
            line("a", "1"),
            line("b", "2"),
            line("a", "3"),
            line("c", "4")
        );
        let second = format!("{}\n{}\n{}\n", line("d", "5"), line("c", "6"), line("d", "7"));
        let (p1, p2) = (temp("one.ndjson", &first), temp("two.ndjson", &second));
        let mut index = IdIndex::default();
        let s1 = scan(&p1, 0, &mut index).unwrap();
        assert_eq!((s1.lines, s1.distinct, s1.new_ids), (4, 3, 3));
        let s2 = scan(&p2, 1, &mut index).unwrap();
        // c was in the first file: distinct in this one, but not new.
        assert_eq!((s2.lines, s2.distinct, s2.new_ids), (3, 2, 1));
        assert_eq!(index.distinct(), 4);

        let out = p2.with_extension("csv");
        let csv = write_csv(&p2, 1, &index, &out).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(csv.rows, 2);
        assert_eq!(csv.bytes, text.len() as u64);
        // The last d (7.00) is kept, in file order.
        assert_eq!(
            text,
            "c,p,steam,i,n,dlc,600,USD,2026-11-01T12:00:00Z,\nd,p,steam,i,n,dlc,700,USD,2026-11-01T12:00:00Z,\n"
        );
        // In the first file, a's last line is 5 (line 2 is blank).
        let csv = write_csv(&p1, 0, &index, &out).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(csv.rows, 2, "{text}");
        assert!(
            text.starts_with("b,") && text.contains("\na,p,steam,i,n,dlc,300,"),
            "{text}"
        );
        for path in [p1, p2, out] {
            let _ = std::fs::remove_file(path);
        }
    }

    #[test]
    fn a_bad_line_names_its_file_and_number() {
        let path = temp("bad.ndjson", &format!("{}\n{{\"x\":1}}\n", line("a", "1")));
        let err = scan(&path, 0, &mut IdIndex::default()).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(err.contains("bad.ndjson:2:"), "{err}");
    }
}
