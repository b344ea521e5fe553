//! `osbuild publish --prune --keep N --grace D`: remove from the bucket what no kept commit
//! needs, once it has been unneeded for longer than the grace period.
//!
//! A device may hold a summary fetched before the last publish (its own cache, or a CDN's)
//! and still be pulling what that summary names. So an object is not deleted when it
//! stops being needed, but retired: the time it was first found unneeded is recorded in
//! an object of the bucket's own (`osbuild-retired.json` under the prefix), and a later
//! prune deletes it once the grace period has passed. Deletes go top-down (delta indexes,
//! superblocks, delta parts, commits, trees, content), so that whatever a present object
//! names is present, even if the prune is interrupted.
//!
//! What is needed comes from the local repository, through libostree: the newest `keep`
//! commits of each branch, everything they reach, their detached metadata, and the static
//! deltas to them. The bucket's refs must be the repository's (a publish just made them
//! so): a bucket that holds other refs is refused rather than pruned of their commits.

use super::{client, explain, inventory, key_of, S3Options, Stage, MUTABLE};
use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt};
use object_store::path::Path as Key;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use osbuild_core::{gio, ostree, repo};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The record of retired objects, under the prefix, beside the repository.
pub const RECORD: &str = "osbuild-retired.json";

/// How much to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PruneOptions {
    /// Commits kept per branch, the head included (at least 1).
    pub keep: usize,
    /// How long an object stays in the bucket after it is first found unneeded.
    pub grace: Duration,
}

/// What a prune did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Files deleted from the bucket.
    pub deleted: u64,
    /// Unneeded files still within their grace period.
    pub retiring: u64,
    /// Requests made: LIST pages, the record's GET and PUTs, DELETE batches.
    pub requests: u64,
}

/// The record as stored: key (relative to the prefix) -> Unix time it was first found
/// unneeded.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Record {
    retired: BTreeMap<String, u64>,
}

/// Parse a grace period: a number with `s`, `m`, `h` or `d` (seconds without one).
pub fn parse_grace(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: write e.g. 90s, 30m, 1h or 2d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(n.saturating_mul(unit)))
}

/// What the bucket must keep: every key a kept commit needs, and the delta directories
/// (`deltas/XX/REST`) to kept commits.
#[derive(Debug, Default)]
struct Needed {
    keys: BTreeSet<String>,
    delta_dirs: BTreeSet<String>,
    /// The repository's refs (`refs/heads/NAME` -> commit).
    refs: BTreeMap<String, String>,
}

fn needed(repo_path: &Path, keep: usize) -> Result<Needed> {
    let repo = repo::open_archive(repo_path)?;
    let refs = repo
        .list_refs(None, gio::Cancellable::NONE)
        .context("listing the repository's refs")?;
    let mut out = Needed::default();
    let mut kept = BTreeSet::new();
    for (name, head) in &refs {
        // Remotes' refs are not published.
        if name.contains(':') {
            continue;
        }
        out.refs
            .insert(format!("refs/heads/{name}"), head.to_string());
        kept.extend(repo::history(&repo, head).into_iter().take(keep));
    }
    for commit in &kept {
        let reached = repo
            .traverse_commit(commit, 0, gio::Cancellable::NONE)
            .with_context(|| format!("listing what commit {commit} reaches"))?;
        out.keys
            .extend(reached.iter().filter_map(repo::object_path));
        out.keys.extend(repo::object_path(&ostree::ObjectName::new(
            commit.as_str(),
            ostree::ObjectType::CommitMeta,
        )));
        out.keys.extend(repo::delta_index_path(commit));
    }
    for name in repo
        .list_static_delta_names(gio::Cancellable::NONE)
        .context("listing static deltas")?
    {
        let (_, to) = repo::delta_ends(&name);
        if !kept.contains(to) {
            continue;
        }
        let dir = repo::delta_dir(&name)
            .with_context(|| format!("static delta {name} has no checksum name"))?;
        // The layout is libostree's: check it against the repository before trusting it
        // to decide what the bucket keeps.
        anyhow::ensure!(
            repo_path.join(&dir).join("superblock").is_file(),
            "static delta {name} is not at {dir} in {}",
            repo_path.display()
        );
        out.delta_dirs.insert(dir);
    }
    Ok(out)
}

/// The delta directory of a key under `deltas/`.
fn delta_dir_of(key: &str) -> Option<String> {
    let mut parts = key.splitn(4, '/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("deltas"), Some(a), Some(b), Some(_)) => Some(format!("deltas/{a}/{b}")),
        _ => None,
    }
}

/// The order of deletion: what names others first.
fn delete_tier(stage: Stage) -> Option<u8> {
    Some(match stage {
        Stage::DeltaIndex => 0,
        Stage::Superblock => 1,
        Stage::DeltaPart => 2,
        Stage::Commit | Stage::CommitMeta => 3,
        Stage::Tree => 4,
        Stage::Content => 5,
        // Refs, the summary and config are the repository's current state.
        _ => return None,
    })
}

/// Remove from the bucket what the newest `keep` commits of each branch of the repository
/// at `repo` do not need, once unneeded for longer than the grace period.
pub fn prune(repo: &Path, opts: &S3Options, prune: &PruneOptions) -> Result<Pruned> {
    anyhow::ensure!(
        prune.keep >= 1,
        "--keep 0 would delete every commit the bucket serves, the branch heads too: keep at least 1"
    );
    let needed = needed(repo, prune.keep)?;
    let store = client(opts)?;
    let runtime = super::runtime("the pruner")?;
    runtime.block_on(run(repo, opts, prune, &needed, &store))
}

async fn run(
    repo: &Path,
    opts: &S3Options,
    prune: &PruneOptions,
    needed: &Needed,
    store: &object_store::aws::AmazonS3,
) -> Result<Pruned> {
    let requests = AtomicU64::new(0);
    let have = inventory(store, opts, &requests).await?;
    // The bucket's refs must be the repository's: another publisher's branch would lose
    // its commits.
    for (key, (_, etag)) in have.iter().filter(|(k, _)| k.starts_with("refs/heads/")) {
        let Some(commit) = needed.refs.get(key) else {
            bail!(
                "{} holds {key}, which {} does not have: prune from the repository that publishes it (nothing was deleted)",
                opts.to,
                repo.display()
            );
        };
        let local = osbuild_core::hex(<md5::Md5 as md5::Digest>::digest(
            format!("{commit}\n").as_bytes(),
        ));
        if etag.as_deref().map(|e| e.trim_matches('"')) != Some(local.as_str()) {
            bail!(
                "{key} in {} is not at {commit} as in {}: publish first (nothing was deleted)",
                opts.to,
                repo.display()
            );
        }
    }
    for key in needed.refs.keys() {
        anyhow::ensure!(
            have.contains_key(key),
            "{} has no {key}: publish first (nothing was deleted)",
            opts.to
        );
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let record_key = key_of(opts, RECORD);
    requests.fetch_add(1, Ordering::Relaxed);
    let old: Record = match store.get(&record_key).await {
        Ok(got) => {
            let bytes = got
                .bytes()
                .await
                .map_err(|e| anyhow::anyhow!("reading {RECORD}: {}", explain(&e, opts)))?;
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{RECORD} in {} is not a retirement record", opts.to))?
        }
        Err(object_store::Error::NotFound { .. }) => Record::default(),
        Err(e) => bail!("reading {RECORD}: {}", explain(&e, opts)),
    };
    // Unneeded files: first seen now, or at their recorded time.
    let mut waiting = Record::default();
    let mut due: BTreeMap<u8, Vec<String>> = BTreeMap::new();
    for key in have.keys() {
        let Some(tier) = Stage::of(key).and_then(delete_tier) else {
            continue;
        };
        let is_needed = match delta_dir_of(key) {
            Some(dir) => needed.delta_dirs.contains(&dir),
            None => needed.keys.contains(key),
        };
        if is_needed {
            continue;
        }
        let since = old.retired.get(key).copied().unwrap_or(now);
        if now.saturating_sub(since) >= prune.grace.as_secs() {
            due.entry(tier).or_default().push(key.clone());
        } else {
            waiting.retired.insert(key.clone(), since);
        }
    }
    let retiring = waiting.retired.len() as u64;
    // The record first, with what is due kept in it, so that an interrupted prune still
    // knows when each file was retired.
    let mut recorded = Record {
        retired: waiting.retired.clone(),
    };
    for keys in due.values() {
        for k in keys {
            recorded
                .retired
                .insert(k.clone(), old.retired.get(k).copied().unwrap_or(now));
        }
    }
    write_record(store, opts, &recorded, &requests).await?;
    let mut deleted = 0u64;
    for keys in due.values() {
        let locations: Vec<object_store::Result<Key>> =
            keys.iter().map(|k| Ok(key_of(opts, k))).collect();
        requests.fetch_add(keys.len().div_ceil(1000) as u64, Ordering::Relaxed);
        let mut gone = store.delete_stream(stream::iter(locations).boxed());
        while let Some(result) = gone.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => bail!("deleting from {}: {}", opts.to, explain(&e, opts)),
            }
        }
    }
    write_record(store, opts, &waiting, &requests).await?;
    Ok(Pruned {
        deleted,
        retiring,
        requests: requests.load(Ordering::Relaxed),
    })
}

async fn write_record(
    store: &object_store::aws::AmazonS3,
    opts: &S3Options,
    record: &Record,
    requests: &AtomicU64,
) -> Result<()> {
    let body = serde_json::to_vec_pretty(record).context("writing the retirement record")?;
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::CacheControl, MUTABLE.into());
    attributes.insert(Attribute::ContentType, "application/json".into());
    requests.fetch_add(1, Ordering::Relaxed);
    store
        .put_opts(
            &key_of(opts, RECORD),
            PutPayload::from(body),
            PutOptions {
                attributes,
                ..PutOptions::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("writing {RECORD}: {}", explain(&e, opts)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_periods() {
        for (text, secs) in [
            ("90", 90),
            ("90s", 90),
            ("30m", 1800),
            ("1h", 3600),
            ("2d", 172800),
        ] {
            assert_eq!(parse_grace(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        for bad in ["", "h", "1w", "-1h", "1.5h"] {
            assert!(parse_grace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn deletes_go_from_what_names_to_what_is_named() {
        let order = [
            Stage::DeltaIndex,
            Stage::Superblock,
            Stage::DeltaPart,
            Stage::Commit,
            Stage::Tree,
            Stage::Content,
        ];
        let tiers: Vec<u8> = order.iter().filter_map(|s| delete_tier(*s)).collect();
        assert_eq!(tiers.len(), order.len());
        assert!(tiers.windows(2).all(|w| w[0] < w[1]), "{tiers:?}");
        assert_eq!(delete_tier(Stage::CommitMeta), delete_tier(Stage::Commit));
        for kept in [Stage::Summary, Stage::SummarySig, Stage::Ref, Stage::Config] {
            assert_eq!(delete_tier(kept), None, "{kept:?}");
        }
        assert_eq!(
            delta_dir_of("deltas/JZ/+ia5-x/superblock").as_deref(),
            Some("deltas/JZ/+ia5-x")
        );
        assert_eq!(delta_dir_of("objects/ab/cd.filez"), None);
    }
}
