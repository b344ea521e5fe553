//! Pulling a ref from a remote into a local repository, with progress.

use anyhow::{Context, Result};
use osbuild_core::glib;
use osbuild_core::{gio, ostree, progress::Progress};
use std::rc::Rc;

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
