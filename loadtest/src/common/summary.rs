//! The JSON summary every run can leave behind (`--json PATH`).

use std::path::Path;

use serde_json::Value;

/// Writes the summary to `path` (creating its folder). A summary that cannot
/// be written is a warning: the run's verdict does not depend on it.
pub fn write(path: Option<&Path>, summary: &Value) {
    let Some(path) = path else { return };
    let text = match serde_json::to_string_pretty(summary) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("warning: JSON summary: {e}");
            return;
        }
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(path, format!("{text}\n")) {
        eprintln!("warning: cannot write {}: {e}", path.display());
    }
}

/// `write`, and the summary on stdout after the report.
pub fn emit(path: Option<&Path>, summary: &Value) {
    write(path, summary);
    match serde_json::to_string_pretty(summary) {
        Ok(text) => println!("\n{text}"),
        Err(e) => eprintln!("warning: JSON summary: {e}"),
    }
}
