//! What one Redis server says of its own work: `INFO cpu` (CPU seconds of
//! the whole process, every thread) and `INFO commandstats` (calls and
//! microseconds per command, a script's inner commands on their own lines
//! as well as inside the script's).

use std::collections::BTreeMap;

/// One command's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandStat {
    pub calls: u64,
    pub usec: u64,
}

impl CommandStat {
    pub fn add(&mut self, other: CommandStat) {
        self.calls += other.calls;
        self.usec += other.usec;
    }
}

/// The counters of one server at one instant, or their growth between two.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCounters {
    /// `used_cpu_user` + `used_cpu_sys`, in microseconds.
    pub cpu_us: Option<u64>,
    /// By command name, lower case (`evalsha`, `hset`, `config|set`).
    pub commands: BTreeMap<String, CommandStat>,
}

/// The commands that run a script: their time includes their inner
/// commands' (Redis times the whole call).
pub const SCRIPT_COMMANDS: &[&str] = &["evalsha", "evalsha_ro", "eval", "eval_ro", "fcall", "fcall_ro"];

pub fn is_script_command(name: &str) -> bool {
    SCRIPT_COMMANDS.contains(&name)
}

/// A decimal of seconds as INFO prints it (`12.345678`), in microseconds,
/// without going through a float.
fn seconds_to_us(text: &str) -> Option<u64> {
    let (whole, frac) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    let whole: u64 = whole.parse().ok()?;
    let digits: String = frac.chars().take(6).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let frac: u64 = if digits.is_empty() {
        0
    } else {
        format!("{digits:0<6}").parse().ok()?
    };
    Some(whole * 1_000_000 + frac)
}

/// Reads the lines of `INFO cpu` and `INFO commandstats` (either or both
/// sections in `text`).
pub fn parse(text: &str) -> NodeCounters {
    let mut user = None;
    let mut sys = None;
    let mut commands = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("used_cpu_user:") {
            user = seconds_to_us(v);
        } else if let Some(v) = line.strip_prefix("used_cpu_sys:") {
            sys = seconds_to_us(v);
        } else if let Some(rest) = line.strip_prefix("cmdstat_")
            && let Some((name, fields)) = rest.split_once(':')
        {
            let mut stat = CommandStat::default();
            for field in fields.split(',') {
                match field.split_once('=') {
                    Some(("calls", v)) => stat.calls = v.parse().unwrap_or(0),
                    Some(("usec", v)) => stat.usec = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
            commands.insert(name.to_ascii_lowercase(), stat);
        }
    }
    NodeCounters {
        cpu_us: user.zip(sys).map(|(u, s)| u + s),
        commands,
    }
}

impl NodeCounters {
    /// Growth from `before` to `self`. A counter that went down (a `CONFIG
    /// RESETSTAT`, a restart) counts from zero.
    pub fn since(&self, before: &NodeCounters) -> NodeCounters {
        let grown = |after: u64, before: u64| after.checked_sub(before).unwrap_or(after);
        NodeCounters {
            cpu_us: self.cpu_us.zip(before.cpu_us).map(|(a, b)| grown(a, b)),
            commands: self
                .commands
                .iter()
                .map(|(name, a)| {
                    let b = before.commands.get(name).copied().unwrap_or_default();
                    let d = CommandStat {
                        calls: grown(a.calls, b.calls),
                        usec: grown(a.usec, b.usec),
                    };
                    (name.clone(), d)
                })
                .filter(|(_, d)| d.calls > 0 || d.usec > 0)
                .collect(),
        }
    }

    /// Adds another growth (a later slice, or another primary).
    pub fn add(&mut self, other: &NodeCounters) {
        self.cpu_us = self.cpu_us.zip(other.cpu_us).map(|(a, b)| a + b);
        for (name, stat) in &other.commands {
            self.commands.entry(name.clone()).or_default().add(*stat);
        }
    }

    /// Calls and microseconds of every script command together.
    pub fn scripts(&self) -> CommandStat {
        let mut all = CommandStat::default();
        for (name, stat) in &self.commands {
            if is_script_command(name) {
                all.add(*stat);
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_and_commandstats() {
        let text = "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:12.345678\r\nused_cpu_sys_children:0.000000\r\n\
                    # Commandstats\r\ncmdstat_hset:calls=1000,usec=962,usec_per_call=0.96,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_config|set:calls=2,usec=30,usec_per_call=15.00,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_EVALSHA:calls=10,usec=2199,usec_per_call=219.90,rejected_calls=0,failed_calls=0\r\n";
        let c = parse(text);
        assert_eq!(c.cpu_us, Some(13_845_678));
        assert_eq!(c.commands["hset"], CommandStat { calls: 1000, usec: 962 });
        assert_eq!(c.commands["config|set"].calls, 2);
        assert_eq!(c.scripts(), CommandStat { calls: 10, usec: 2199 });
        assert_eq!(parse("# CPU\r\nused_cpu_sys:1.5\r\n").cpu_us, None, "user time missing");
        assert_eq!(seconds_to_us("3"), Some(3_000_000));
        assert_eq!(seconds_to_us("0.5"), Some(500_000));
        assert_eq!(seconds_to_us("x.1"), None);
    }

    #[test]
    fn growth_adds_up_and_survives_a_reset() {
        let before =
            parse("used_cpu_user:1.0\nused_cpu_sys:1.0\ncmdstat_get:calls=5,usec=10\ncmdstat_set:calls=7,usec=70\n");
        let after = parse(
            "used_cpu_user:1.5\nused_cpu_sys:1.25\ncmdstat_get:calls=5,usec=10\ncmdstat_set:calls=9,usec=90\n\
             cmdstat_evalsha:calls=1,usec=100\n",
        );
        let d = after.since(&before);
        assert_eq!(d.cpu_us, Some(750_000));
        assert!(!d.commands.contains_key("get"), "unchanged commands are left out");
        assert_eq!(d.commands["set"], CommandStat { calls: 2, usec: 20 });
        assert_eq!(d.commands["evalsha"].usec, 100);
        // CONFIG RESETSTAT between the two: counted from zero.
        let reset = parse("used_cpu_user:2.0\nused_cpu_sys:1.25\ncmdstat_set:calls=1,usec=3\n");
        assert_eq!(reset.since(&after).commands["set"], CommandStat { calls: 1, usec: 3 });
        let mut sum = d.clone();
        sum.add(&d);
        assert_eq!(sum.cpu_us, Some(1_500_000));
        assert_eq!(sum.commands["set"].calls, 4);
    }
}
