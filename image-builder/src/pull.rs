//! Pulling a ref from a remote into a local repository, with progress.

use anyhow::{Context, Result};
use osbuild_core::glib;
use osbuild_core::{gio, ostree, progress::Progress};
use std::rc::Rc;

/// The one ref the server at `url` offers, for a build that names none.
pub(crate) fn only_ref(url: &str) -> Result<String> {
    let refs = osbuild_core::repo::remote_refs(url)?;
    let mut names = refs.into_keys();
    match (names.next(), names.next()) {
        (Some(only), None) => Ok(only),
        (None, _) => anyhow::bail!("{url} lists no refs: commit one, or pass --branch"),
        (Some(first), Some(second)) => {
            let all: Vec<String> = [first, second].into_iter().chain(names).collect();
            anyhow::bail!(
                "{url} lists {} refs ({}): choose one with --branch",
                all.len(),
                all.join(", ")
            )
        }
    }
}

/// Pull `branch` of `remote` into `repo`, fetching from `url` instead of the remote's
/// configured URL (a builder may reach the server at another address than the device).
pub(crate) fn pull(repo: &ostree::Repo, remote: &str, branch: &str, url: &str) -> Result<String> {
    let opts = glib::VariantDict::new(None);
    opts.insert("refs", vec![branch.to_string()]);
    opts.insert("override-url", url);
    let opts = opts.end();

    let bar = Rc::new(Progress::counter(format!("Pulling {branch} from {url}")));
    let progress = ostree::AsyncProgress::new();
    {
        let bar = Rc::clone(&bar);
        progress.connect_changed(move |p| {
            let fetched = p.uint("fetched") as u64;
            let requested = p.uint("requested") as u64;
            let bytes = p.uint64("bytes-transferred");
            bar.set(fetched, requested.max(fetched));
            bar.set_message(format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64));
        });
    }
    let result = repo.pull_with_options(remote, &opts, Some(&progress), gio::Cancellable::NONE);
    progress.finish();
    let bytes = progress.uint64("bytes-transferred");
    drop(progress);
    result.with_context(|| format!("pulling {branch} from {url}"))?;
    let refspec = format!("{remote}:{branch}");
    let checksum = repo
        .resolve_rev(&refspec, false)
        .with_context(|| format!("resolving {refspec} after the pull"))?
        .with_context(|| format!("{refspec} is missing after the pull"))?;
    if let Ok(bar) = Rc::try_unwrap(bar) {
        bar.finish(format!(
            "Pulled {branch} ({checksum}), {:.1} MiB transferred",
            bytes as f64 / (1 << 20) as f64
        ));
    }
    Ok(checksum.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use osbuild_core::cmd;
    use std::process::Command;

    #[test]
    fn only_ref_needs_exactly_one() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("usr")).unwrap();
        osbuild_core::repo::create_archive(&repo).unwrap();
        let url = format!("file://{}", repo.display());
        let repo_arg = format!("--repo={}", repo.display());
        let commit = |branch: &str| {
            let tree_arg = format!("--tree=dir={}", tree.display());
            let branch_arg = format!("--branch={branch}");
            cmd::run(Command::new("ostree").args(["commit", &repo_arg, &branch_arg, &tree_arg]))
                .unwrap();
            cmd::run(Command::new("ostree").args(["summary", "-u", &repo_arg])).unwrap();
        };
        commit("os/one");
        assert_eq!(only_ref(&url).unwrap(), "os/one");
        commit("os/two");
        let err = only_ref(&url).unwrap_err().to_string();
        assert!(err.contains("2 refs (os/one, os/two)"), "{err}");
        assert!(err.contains("--branch"), "{err}");
    }
}
