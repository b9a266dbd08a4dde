//! Numbers as every report prints them, written once: a ratio, a rate, a
//! figure, a memory size, a duration in milliseconds. `-` stands for a
//! figure that could not be measured.

use std::time::Duration;

/// A duration in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// KiB (what `/proc` counts in) to MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `value / base`, when both are known, finite, and the base is positive (an
/// idle process's 0 ticks make no ratio).
pub fn ratio(value: Option<f64>, base: Option<f64>) -> Option<f64> {
    match (value, base) {
        (Some(v), Some(b)) if b > 0.0 && v.is_finite() && b.is_finite() => Some(v / b),
        _ => None,
    }
}

/// A ratio with three significant digits: 0.501, 1.40, 31.4, 314.
pub fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r.abs() >= 100.0 => format!("{r:.0}"),
        Some(r) if r.abs() >= 10.0 => format!("{r:.1}"),
        Some(r) if r.abs() >= 1.0 => format!("{r:.2}"),
        Some(r) => format!("{r:.3}"),
    }
}

/// A rate per second: whole above 100, one decimal below.
pub fn fmt_rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r.abs() >= 100.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.1}"),
    }
}

/// A figure with about four significant digits.
pub fn fmt_value(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// KiB as MiB with one decimal.
pub fn fmt_mib(kib: Option<u64>) -> String {
    kib.map_or("-".into(), |k| format!("{:.1}", mib(k)))
}

/// Any value that may be unknown.
pub fn fmt_opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_values_and_rates() {
        assert_eq!(fmt_ratio(None), "-");
        assert_eq!(fmt_ratio(Some(0.50123)), "0.501");
        assert_eq!(fmt_ratio(Some(1.4)), "1.40");
        assert_eq!(fmt_ratio(Some(31.416)), "31.4");
        assert_eq!(fmt_ratio(Some(314.16)), "314");
        assert_eq!(fmt_value(None), "-");
        assert_eq!(fmt_value(Some(12345.6)), "12346");
        assert_eq!(fmt_value(Some(52.14)), "52.1");
        assert_eq!(fmt_value(Some(1.2345)), "1.234");
        assert_eq!(fmt_value(Some(0.0)), "0.000");
        assert_eq!(fmt_rate(Some(6215.64)), "6216");
        assert_eq!(fmt_rate(Some(12.34)), "12.3");
        assert_eq!(fmt_mib(Some(1536)), "1.5");
        assert_eq!(fmt_opt::<i64>(None), "-");
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(Some(1.0), Some(-1.0)), None);
        assert_eq!(ratio(Some(f64::NAN), Some(1.0)), None);
        assert_eq!(ms(Duration::from_micros(1500)), 1.5);
    }
}
