//! `osbuild completions` and `osbuild man`: shell completion scripts and man pages,
//! generated from the clap definitions so that they always match `--help`.

use super::Cli;
use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use std::path::{Path, PathBuf};

/// Print a completion script.
#[derive(Debug, clap::Args)]
pub(crate) struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

impl CompletionsArgs {
    pub(super) fn run(&self) -> Result<()> {
        use std::io::Write;
        std::io::stdout()
            .write_all(&completion(self.shell))
            .context("writing the completion script to standard output")
    }
}

/// Write man pages.
#[derive(Debug, clap::Args)]
pub(crate) struct ManArgs {
    /// Directory to write osbuild.1 and osbuild-VERB.1 into; created if missing.
    #[arg(long, value_name = "DIR", default_value = ".")]
    output: PathBuf,
}

impl ManArgs {
    /// Write the pages and print their paths.
    pub(super) fn run(&self) -> Result<()> {
        std::fs::create_dir_all(&self.output)
            .with_context(|| format!("creating {}", self.output.display()))?;
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        for (name, page) in man_pages()? {
            let path = self.output.join(name);
            std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
            // Not println!, which panics when a reader such as `head` has gone.
            writeln!(stdout, "{}", path.display()).context("writing to standard output")?;
        }
        Ok(())
    }
}

/// The completion script for `shell`.
fn completion(shell: Shell) -> Vec<u8> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "osbuild", &mut script);
    script
}

/// `(file name, roff)` of the man pages: `osbuild.1`, then `osbuild-VERB.1` for each verb.
fn man_pages() -> Result<Vec<(String, Vec<u8>)>> {
    // `osbuild help` is no verb to document (clap_mangen::generate_to does the same).
    let mut cmd = Cli::command().disable_help_subcommand(true);
    // Building names the verbs' pages after their command lines: osbuild-make-image.
    cmd.build();
    let mut pages = Vec::new();
    add_man_pages(cmd, &mut pages)?;
    Ok(pages)
}

/// The page of `cmd`, then those of its subcommands.
fn add_man_pages(cmd: clap::Command, pages: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
    let subcommands: Vec<clap::Command> = cmd
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .cloned()
        .collect();
    // Every page names the build (only the top command has a version).
    let man = clap_mangen::Man::new(cmd)
        .manual("osbuild")
        .source(concat!("osbuild ", env!("OSBUILD_VERSION")));
    let mut page = Vec::new();
    man.render(&mut page)
        .with_context(|| format!("rendering the man page {}", man.get_filename()))?;
    pages.push((man.get_filename(), page));
    for sub in subcommands {
        add_man_pages(sub, pages)?;
    }
    Ok(())
}

/// Where a system image installs each file (relative to its root).
const BASH: &str = "usr/share/bash-completion/completions/osbuild";
const ZSH: &str = "usr/share/zsh/vendor-completions/_osbuild";
const FISH: &str = "usr/share/fish/vendor_completions.d/osbuild.fish";
const MAN1: &str = "usr/share/man/man1";

/// The bash, zsh and fish completion scripts and the man pages (uncompressed), each
/// with its path in a Debian tree (relative, e.g.
/// `usr/share/bash-completion/completions/osbuild`, `usr/share/man/man1/osbuild.1`), for
/// a tree builder to install.
pub fn shell_files() -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut files = vec![
        (PathBuf::from(BASH), completion(Shell::Bash)),
        (PathBuf::from(ZSH), completion(Shell::Zsh)),
        (PathBuf::from(FISH), completion(Shell::Fish)),
    ];
    for (name, page) in man_pages()? {
        files.push((Path::new(MAN1).join(name), page));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The verbs as typed (make-image), without clap's own `help`.
    fn verbs() -> Vec<String> {
        let verbs: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        assert!(verbs.len() >= 10, "{verbs:?}");
        verbs
    }

    #[test]
    fn every_shell_completes_every_verb() {
        let files = shell_files().unwrap();
        for path in [BASH, ZSH, FISH] {
            let (_, script) = files
                .iter()
                .find(|(p, _)| p == Path::new(path))
                .unwrap_or_else(|| panic!("no {path}"));
            let script = String::from_utf8_lossy(script);
            for verb in verbs() {
                assert!(script.contains(&verb), "{path} does not mention {verb}");
            }
        }
        // Options too, e.g. commit-push's.
        assert!(String::from_utf8_lossy(&completion(Shell::Bash)).contains("--ssh-port"));
    }

    #[test]
    fn every_verb_has_a_man_page() {
        let files = shell_files().unwrap();
        let pages: Vec<String> = files
            .iter()
            .filter_map(|(p, _)| p.strip_prefix(MAN1).ok())
            .map(|p| p.display().to_string())
            .collect();
        let mut want = vec!["osbuild.1".to_string()];
        want.extend(verbs().iter().map(|v| format!("osbuild-{v}.1")));
        // A verb's own verbs too (`osbuild admin status`: osbuild-admin-status.1).
        for verb in Cli::command().get_subcommands() {
            for sub in verb.get_subcommands() {
                want.push(format!("osbuild-{}-{}.1", verb.get_name(), sub.get_name()));
            }
        }
        assert!(want.contains(&"osbuild-admin-rollback.1".to_string()));
        want.sort();
        let mut got = pages.clone();
        got.sort();
        assert_eq!(got, want);
        let (_, page) = files
            .iter()
            .find(|(p, _)| p.ends_with("osbuild-commit-push.1"))
            .unwrap();
        let page = String::from_utf8_lossy(page);
        assert!(page.starts_with(".ie"), "{page}");
        assert!(page.contains("osbuild\\-commit\\-push") && page.contains("ssh\\-port"));
    }

    #[test]
    fn man_writes_the_pages_into_a_new_directory() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("man/man1");
        ManArgs {
            output: output.clone(),
        }
        .run()
        .unwrap();
        assert!(output.join("osbuild.1").is_file());
        assert!(output.join("osbuild-make-image.1").is_file());
    }
}
