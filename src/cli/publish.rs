//! `osbuild publish`: an archive repository to S3-compatible object storage.

use anyhow::Result;
use ostree_serve::s3::{BucketUrl, PruneOptions, S3Options};
use std::path::PathBuf;
use std::time::Duration;

/// Publish a repository to a bucket.
#[derive(Debug, clap::Args)]
pub(crate) struct PublishArgs {
    /// Archive repository.
    #[arg(long, default_value = "repo")]
    repo: PathBuf,
    /// The bucket and key prefix: s3://BUCKET[/PREFIX].
    #[arg(long, value_name = "s3://BUCKET[/PREFIX]")]
    to: BucketUrl,
    /// The S3 endpoint, e.g. http://127.0.0.1:3900 [default: AWS].
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// The region [default: $AWS_REGION, else us-east-1].
    #[arg(long)]
    region: Option<String>,
    /// Parallel uploads.
    #[arg(long, value_name = "N", default_value_t = 8)]
    jobs: usize,
    /// Write progress as JSON Lines to this open file descriptor (docs/progress.schema.json).
    #[arg(long, value_name = "FD")]
    progress_fd: Option<i32>,
    /// After publishing, remove from the bucket what the newest --keep commits of each
    /// branch do not need, once unneeded for longer than --grace.
    #[arg(long, requires = "keep")]
    prune: bool,
    /// Commits kept per branch by --prune, the head included.
    #[arg(long, value_name = "N", requires = "prune")]
    keep: Option<usize>,
    /// How long --prune leaves an unneeded file in the bucket, for devices still pulling
    /// what an older (cached) summary names: summary cache time + CDN time + a long pull.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = ostree_serve::s3::parse_grace)]
    grace: Duration,
}

impl PublishArgs {
    pub(crate) fn run(&self) -> Result<()> {
        let opts = S3Options {
            to: self.to.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            jobs: self.jobs,
            progress_fd: self.progress_fd,
        };
        // Checked before anything is sent.
        let prune = match (self.prune, self.keep) {
            (true, Some(keep)) => {
                anyhow::ensure!(
                    keep >= 1,
                    "--keep 0 would delete every commit the bucket serves, the branch heads too: keep at least 1"
                );
                Some(PruneOptions {
                    keep,
                    grace: self.grace,
                })
            }
            _ => None,
        };
        let p = ostree_serve::s3::publish(&self.repo, &opts)?;
        eprintln!(
            "published {} to {}: {} files uploaded ({} bytes), {} already there, {} requests",
            self.repo.display(),
            self.to,
            p.uploaded,
            p.bytes,
            p.present,
            p.requests
        );
        if let Some(prune) = prune {
            let p = ostree_serve::s3::prune(&self.repo, &opts, &prune)?;
            eprintln!(
                "pruned {}: {} files deleted, {} unneeded files within their grace period, {} requests",
                self.to, p.deleted, p.retiring, p.requests
            );
        }
        Ok(())
    }
}
