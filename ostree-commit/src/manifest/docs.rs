//! The reference section of docs/manifest.md, generated from the `section!`
//! declarations in `raw.rs`; the docs test compares it with the committed file.

use super::flags::{FlagAction, FlagScope};
use super::raw::SECTIONS;
use std::fmt::Write as _;

/// Marks the start of the generated part of docs/manifest.md.
pub(crate) const BEGIN: &str = "<!-- BEGIN reference: generated from ostree-commit/src/manifest/raw.rs; OSBUILD_UPDATE_DOCS=1 cargo test -p ostree-commit --lib manifest rewrites it -->\n";
/// Marks its end.
pub(crate) const END: &str = "<!-- END reference -->\n";

/// Doc comment lines as one paragraph.
fn paragraph(lines: &[&str]) -> String {
    lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ")
}

/// The reference: per table, its description and a table of key, type, default, the flag
/// that overrides it, meaning.
pub(crate) fn reference() -> String {
    let mut out = String::new();
    for section in SECTIONS {
        let title = if section.table.starts_with('[') {
            format!("`{}`", section.table)
        } else {
            "Top level".to_string()
        };
        let _ = writeln!(out, "### {title}\n\n{}\n", paragraph(section.doc));
        out.push_str("| Key | Type | Default | Flag | Meaning |\n|---|---|---|---|---|\n");
        for key in section.keys {
            let cell = |s: &str| s.replace('|', "\\|");
            let flag = key.flag.map_or(String::new(), |f| {
                let how = match f.action {
                    FlagAction::Set | FlagAction::Switch => "",
                    FlagAction::Add => " (adds; repeatable)",
                    FlagAction::AddList => " (adds; repeatable, comma-separated)",
                };
                let verb = match f.scope {
                    FlagScope::Image => " (make-image)",
                    FlagScope::Tree | FlagScope::Commit => "",
                };
                match f.action {
                    FlagAction::Switch => format!("`--{}`{verb}", f.name),
                    _ => format!("`--{} {}`{how}{verb}", f.name, f.value_name),
                }
            });
            let _ = writeln!(
                out,
                "| `{}` | {} | {} | {} | {} |",
                key.name.trim_start_matches("r#"),
                cell(key.ty),
                cell(key.default),
                flag,
                cell(&paragraph(key.doc)),
            );
        }
        out.push('\n');
    }
    out
}
