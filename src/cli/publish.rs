//! `osbuild publish`: an archive repository to S3-compatible object storage.

use anyhow::Result;
use ostree_serve::s3::{BucketUrl, S3Options};
use std::path::PathBuf;

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
        Ok(())
    }
}
