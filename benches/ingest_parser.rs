//! The NDJSON line parser's throughput: `cargo bench --bench ingest_parser`.
//!
//! Two views of the same generated lines: lines/s (what the ingest response
//! counts) and MB/s (what the upload streams). `split_and_parse` includes the
//! line splitter over 64 KiB chunks, as an upload arrives.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use stampede::ingest::generate::write_lines;
use stampede::ingest::limits::INGEST_LINE_BYTES_MAX;
use stampede::ingest::lines::{Line, LineSplitter};
use stampede::ingest::record::parse_line;

const LINES: u64 = 10_000;
const CHUNK_BYTES: usize = 64 * 1024;

fn generated() -> Vec<u8> {
    let mut content = Vec::new();
    if let Err(e) = write_lines(LINES, 1, &mut content, |_| {}) {
        panic!("generating the bench input: {e}");
    }
    content
}

fn split_and_parse(content: &[u8]) -> usize {
    let mut splitter = LineSplitter::new(INGEST_LINE_BYTES_MAX);
    let mut parsed = 0;
    let mut take = |line: Line<'_>| {
        if let Line::Text { bytes, .. } = line
            && parse_line(bytes).is_ok()
        {
            parsed += 1;
        }
        Ok::<(), ()>(())
    };
    for chunk in content.chunks(CHUNK_BYTES) {
        let _ = splitter.push(chunk, &mut take);
    }
    let _ = splitter.finish(&mut take);
    parsed
}

fn parse_lines(lines: &[&[u8]]) -> usize {
    lines.iter().filter(|line| parse_line(black_box(line)).is_ok()).count()
}

fn bench(c: &mut Criterion) {
    let content = generated();
    let lines: Vec<&[u8]> = content.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(split_and_parse(&content), lines.len(), "every generated line parses");

    for (unit, throughput) in [
        ("lines", Throughput::Elements(lines.len() as u64)),
        ("bytes", Throughput::Bytes(content.len() as u64)),
    ] {
        let mut group = c.benchmark_group(format!("ingest_parser/{unit}"));
        group.throughput(throughput);
        group.bench_function("parse_line", |b| b.iter(|| parse_lines(&lines)));
        group.bench_function("split_and_parse", |b| b.iter(|| split_and_parse(black_box(&content))));
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
