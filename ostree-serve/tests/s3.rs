//! `osbuild publish` to a real Garage on loopback, pulled with the real `ostree` CLI from
//! Garage's website endpoint: a first publish, a second commit pulled as an upgrade
//! through its static delta, publishes killed at random moments (a client always pulls a
//! consistent head; a rerun completes), and bad input (a missing bucket, wrong
//! credentials, an unreachable endpoint, a repository that is not archive mode), each a
//! clear error that leaves the bucket's summary as it was.

use osbuild_testing::garage::{Garage, BUCKET};
use osbuild_testing::helpers::{
    deployable_tree, free_port, osbuild_bin, output, pull_fresh, repo_arg, run, text, Daemon,
    PushFixture, Rng,
};
use osbuild_testing::{require, Need};
use ostree_serve::s3::RECORD;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BRANCH: &str = "fleet/x86_64";
const PREFIX: &str = "fleet";

/// `files` more incompressible files of 4 KiB in the tree, under `name`.
fn add_files(root: &Path, name: &str, files: usize, rng: &mut Rng) {
    for i in 0..files {
        let dir = root.join(format!("usr/share/{name}/{:02}", i % 40));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("f{i}")), rng.bytes(4096)).unwrap();
    }
}

fn commit(repo: &Path, tree: &Path) -> String {
    run(Command::new(osbuild_bin())
        .args(["commit", "--repo"])
        .arg(repo)
        .args(["--branch", BRANCH, "--tree"])
        .arg(tree))
    .trim()
    .to_string()
}

/// `osbuild publish` of `repo` to `to` at `endpoint`, with the cluster's credentials.
fn publish_to(repo: &Path, to: &str, endpoint: &str, garage: &Garage) -> Command {
    let mut c = Command::new(osbuild_bin());
    c.args(["publish", "--repo"]).arg(repo).args([
        "--to",
        to,
        "--endpoint",
        endpoint,
        "--region",
        "garage",
    ]);
    for (k, v) in garage.credentials() {
        c.env(k, v);
    }
    // These machines set it for other tools; the S3 client must not trip over it.
    c.env("AWS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt");
    c
}

/// `osbuild publish` of `repo` under `prefix` of the test bucket on node 0.
fn publish(repo: &Path, prefix: &str, garage: &Garage) -> Command {
    publish_to(
        repo,
        &format!("s3://{BUCKET}/{prefix}"),
        &garage.endpoint(0),
        garage,
    )
}

/// Pull the branch into a fresh client repository from the bucket's website.
fn pull(dir: &Path, url: &str) -> std::process::Output {
    pull_fresh(dir, url, BRANCH)
}

fn client_head(dir: &Path) -> String {
    run(Command::new("ostree")
        .arg(format!("--repo={}", dir.join("client").display()))
        .args(["rev-parse", BRANCH]))
    .trim()
    .to_string()
}

fn fsck(dir: &Path) {
    run(Command::new("ostree")
        .arg("fsck")
        .arg(format!("--repo={}", dir.join("client").display())));
}

/// The response headers of a GET on the website endpoint.
fn headers(url: &str) -> String {
    run(Command::new("curl").args(["-s", "-o", "/dev/null", "-D", "-", url])).to_lowercase()
}

/// What each test starts from: a work directory, a Garage of `nodes` nodes replicating
/// `replication` times, a deployable tree with `files` random files under `name`, and the
/// random source (seeded from the clock, the seed printed).
struct Setup {
    work: tempfile::TempDir,
    garage: Garage,
    repo: std::path::PathBuf,
    tree: std::path::PathBuf,
    rng: Rng,
}

impl Setup {
    fn new(label: &str, nodes: usize, replication: usize, name: &str, files: usize) -> Setup {
        let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let garage = Garage::start(&work.path().join("garage"), nodes, replication).unwrap();
        let mut rng = Rng::from_clock(label);
        let (repo, tree) = (work.path().join("repo"), work.path().join("tree"));
        deployable_tree(&tree, b"kernel");
        add_files(&tree, name, files, &mut rng);
        Setup {
            work,
            garage,
            repo,
            tree,
            rng,
        }
    }
}

#[test]
fn publish_pull_upgrade_and_survive_kills() {
    if !require(&[Need::Garage, Need::Ostree]) {
        return;
    }
    // A first commit, published and pulled.
    let Setup {
        work,
        garage,
        repo,
        tree,
        mut rng,
    } = Setup::new("s3", 1, 1, "one", 150);
    let w = work.path();
    let url = garage.web_url(0, PREFIX);
    let c1 = commit(&repo, &tree);
    let out = output(&mut publish(&repo, PREFIX, &garage));
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let pulled = pull(w, &url);
    assert!(pulled.status.success(), "{}", text(&pulled));
    assert_eq!(client_head(w), c1);
    fsck(w);
    // Immutable objects are cached for a year, the summary never.
    let object = fs::read_dir(repo.join("objects/00"))
        .ok()
        .and_then(|mut d| d.next())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
    if let Some(object) = object {
        let h = headers(&format!("{url}objects/00/{object}"));
        assert!(h.contains("immutable"), "{h}");
        assert!(!h.contains("content-encoding"), "{h}");
    }
    let h = headers(&format!("{url}summary"));
    assert!(h.contains("cache-control: no-cache"), "{h}");

    // Publishing again uploads nothing: the inventory says it is all there.
    let again = output(&mut publish(&repo, PREFIX, &garage));
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(said.contains(": 0 files uploaded"), "{said}");

    // A second commit with its static delta: the client upgrades through the delta.
    fs::write(tree.join("usr/share/one/00/f0"), rng.bytes(4096)).unwrap();
    let c2 = commit(&repo, &tree);
    assert!(
        fs::read_dir(repo.join("deltas")).is_ok_and(|mut d| d.next().is_some()),
        "osbuild commit made no static delta"
    );
    let out = output(&mut publish(&repo, PREFIX, &garage));
    assert!(out.status.success(), "{}", text(&out));
    let client = format!("--repo={}", w.join("client").display());
    let upgrade = output(Command::new("ostree").args([
        "pull",
        &client,
        "--require-static-deltas",
        "origin",
        BRANCH,
    ]));
    assert!(upgrade.status.success(), "{}", text(&upgrade));
    assert_eq!(client_head(w), c2);
    fsck(w);

    // A third, bigger commit, published with kills at random moments: after each, a fresh
    // client pulls whichever head the summary names, and fsck passes.
    add_files(&tree, "three", 800, &mut rng);
    let c3 = commit(&repo, &tree);
    let start = Instant::now();
    let full = output(&mut publish(&repo, PREFIX, &garage));
    assert!(full.status.success(), "{}", text(&full));
    // How long a publish of the third commit takes: the kills land within it.
    let whole = start.elapsed();
    // The state before, for each round: the second commit alone, published to a fresh
    // prefix.
    let old = w.join("old-repo");
    let old_r = format!("--repo={}", old.display());
    run(Command::new("ostree").args(["init", "--mode=archive", &old_r]));
    run(Command::new("ostree")
        .arg(&old_r)
        .arg("pull-local")
        .arg(&repo)
        .arg(&c2));
    run(Command::new("ostree").args([&old_r, "refs", "--create", BRANCH, &c2]));
    run(Command::new("ostree").args([&old_r, "summary", "-u"]));
    let mut heads = Vec::new();
    for round in 0..5 {
        let prefix = format!("kill{round}");
        run(&mut publish(&old, &prefix, &garage));
        let after = Duration::from_millis(rng.next_u64() % whole.as_millis().max(1) as u64);
        let mut child = publish(&repo, &prefix, &garage)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(after);
        let _ = child.kill();
        let _ = child.wait();
        let pulled = pull(w, &garage.web_url(0, &prefix));
        assert!(
            pulled.status.success(),
            "round {round}, killed after {after:?}: {}",
            text(&pulled)
        );
        let head = client_head(w);
        assert!(head == c2 || head == c3, "round {round}: pulled {head}");
        fsck(w);
        heads.push((after, head == c3));
        // A rerun completes, and the new head is pulled.
        run(&mut publish(&repo, &prefix, &garage));
        let pulled = pull(w, &garage.web_url(0, &prefix));
        assert!(pulled.status.success(), "{}", text(&pulled));
        assert_eq!(client_head(w), c3);
    }
    eprintln!("kills (after, new head already published): {heads:?}");

    // Bad input: each a clear error, and the bucket's summary unchanged.
    let etag = |h: String| {
        h.lines()
            .find(|l| l.starts_with("etag:"))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let summary_before = etag(headers(&format!("{url}summary")));
    assert!(!summary_before.is_empty());
    let closed = free_port();
    let bare = w.join("bare");
    run(Command::new("ostree").args([
        "init",
        "--mode=bare-user",
        &format!("--repo={}", bare.display()),
    ]));
    let mut wrong_key = publish(&repo, PREFIX, &garage);
    wrong_key.env("AWS_SECRET_ACCESS_KEY", "wrong");
    let cases: Vec<(Command, &str)> = vec![
        (
            publish_to(&repo, "s3://no-such-bucket/x", &garage.endpoint(0), &garage),
            "bucket no-such-bucket does not exist",
        ),
        (wrong_key, "refused the credentials"),
        (
            publish_to(
                &repo,
                &format!("s3://{BUCKET}/{PREFIX}"),
                &format!("http://127.0.0.1:{closed}"),
                &garage,
            ),
            "cannot reach the s3 endpoint",
        ),
        (publish(&bare, PREFIX, &garage), "archive mode"),
    ];
    for (mut c, expected) in cases {
        let out = output(&mut c);
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&expected.to_lowercase()),
            "{expected}: {stderr}"
        );
    }
    assert_eq!(etag(headers(&format!("{url}summary"))), summary_before);
}

/// Whether the bucket serves `rel` under `url` (a website GET's status).
fn served(url: &str, rel: &str) -> bool {
    headers(&format!("{url}{rel}")).starts_with("http/1.1 200")
}

/// `--prune --keep 1 --grace`: a client still on the old summary pulls the old commit
/// within the grace period; after it the old commit's objects are gone, a fresh pull of
/// the head passes fsck, and the retirement record is empty again. `--keep 0` and a bucket
/// holding another repository's branch are refused, with nothing deleted.
#[test]
fn prune_keeps_what_a_cached_summary_names_for_the_grace_period() {
    if !require(&[Need::Garage, Need::Ostree]) {
        return;
    }
    let Setup {
        work,
        garage,
        repo,
        tree,
        mut rng,
    } = Setup::new("prune", 1, 1, "old", 100);
    let w = work.path();
    let url = garage.web_url(0, PREFIX);
    let c1 = commit(&repo, &tree);
    run(&mut publish(&repo, PREFIX, &garage));
    // The second commit replaces every file of the first but the kernel.
    fs::remove_dir_all(tree.join("usr/share/old")).unwrap();
    add_files(&tree, "new", 100, &mut rng);
    let c2 = commit(&repo, &tree);
    let c1_key = format!("objects/{}/{}.commit", &c1[..2], &c1[2..]);
    let prune = |grace: &str| {
        let mut c = publish(&repo, PREFIX, &garage);
        c.args(["--prune", "--keep", "1", "--grace", grace]);
        c
    };

    // Within the grace: nothing deleted, and the old commit can still be pulled.
    let out = output(&mut prune("1h"));
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(": 0 files deleted"), "{said}");
    assert!(!said.contains(" 0 unneeded files"), "{said}");
    let old_pull = pull_fresh(w, &url, &c1);
    assert!(old_pull.status.success(), "{}", text(&old_pull));
    fsck(w);
    let record = run(Command::new("curl").args(["-sf", &format!("{url}{}", RECORD)]));
    assert!(record.contains(&c1_key), "{record}");

    // Bad input: each refused, and nothing deleted.
    let mut keep0 = publish(&repo, PREFIX, &garage);
    keep0.args(["--prune", "--keep", "0"]);
    let other = w.join("other");
    let other_tree = w.join("other-tree");
    deployable_tree(&other_tree, b"other kernel");
    run(Command::new(osbuild_bin())
        .args(["commit", "--repo"])
        .arg(&other)
        .args(["--branch", "other/x86_64", "--tree"])
        .arg(&other_tree));
    run(&mut publish(&other, "shared", &garage));
    let mut foreign = publish(&repo, "shared", &garage);
    foreign.args(["--prune", "--keep", "1", "--grace", "0s"]);
    for (mut c, expected) in [
        (keep0, "--keep 0 would delete every commit"),
        (foreign, "refs/heads/other/x86_64"),
    ] {
        let out = output(&mut c);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(expected), "{expected}: {}", text(&out));
    }
    assert!(served(&url, &c1_key), "--keep 0 deleted the old commit");
    assert!(
        served(&garage.web_url(0, "shared"), "refs/heads/other/x86_64"),
        "the other repository's branch was touched"
    );

    // Once the grace has passed: the old commit's files are deleted, the head is whole.
    std::thread::sleep(Duration::from_secs(2));
    let out = output(&mut prune("1s"));
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(!said.contains(": 0 files deleted"), "{said}");
    assert!(said.contains(" 0 unneeded files"), "{said}");
    assert!(!served(&url, &c1_key), "the old commit is still served");
    let gone = pull_fresh(w, &url, &c1);
    assert!(!gone.status.success(), "the old commit still pulls");
    let pulled = pull(w, &url);
    assert!(pulled.status.success(), "{}", text(&pulled));
    assert_eq!(client_head(w), c2);
    fsck(w);
    let record = run(Command::new("curl").args(["-sf", &format!("{url}{}", RECORD)]));
    assert!(!record.contains("objects/"), "{record}");
}

/// Three Garage nodes replicating each object three times: a node stopped during a
/// publish; the publish completes or fails with a clear error and a rerun completes; the
/// other nodes serve a whole head with that node down.
#[test]
fn publish_survives_a_node_down() {
    if !require(&[Need::Garage, Need::Ostree]) {
        return;
    }
    let Setup {
        work,
        mut garage,
        repo,
        tree,
        ..
    } = Setup::new("nodes", 3, 3, "many", 600);
    let w = work.path();
    let c1 = commit(&repo, &tree);
    let mut child = publish(&repo, PREFIX, &garage)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the publish ended before the node could be stopped during it"
    );
    garage.stop(2);
    let first = child.wait_with_output().unwrap();
    let said = text(&first);
    eprintln!("publish with node 2 stopped during it: {said}");
    if !first.status.success() {
        assert!(
            said.contains("S3 request") || said.contains("uploading"),
            "{said}"
        );
        let again = output(&mut publish(&repo, PREFIX, &garage));
        assert!(again.status.success(), "the rerun failed: {}", text(&again));
    }
    // Node 1 was never talked to: what it serves came to it by replication.
    let pulled = pull(w, &garage.web_url(1, PREFIX));
    assert!(pulled.status.success(), "{}", text(&pulled));
    assert_eq!(client_head(w), c1);
    fsck(w);
}

/// The bucket's head under `prefix`, once it is `want` (polling the website up to
/// `timeout`); the last head seen otherwise.
fn bucket_head_becomes(garage: &Garage, prefix: &str, want: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let head = output(Command::new("curl").args([
            "-sf",
            &format!("{}refs/heads/{BRANCH}", garage.web_url(0, prefix)),
        ]));
        let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
        if head == want || Instant::now() > deadline {
            return head;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `osbuild serve --publish-to`: a push over the server's SSH listener reaches the bucket
/// without another step. With the store down, a push still lands and is served over HTTP;
/// the failed publish is logged and retried, and once the store is back the bucket gets
/// the new head, which a client pulls whole.
#[test]
fn serve_publishes_every_push() {
    if !require(&[Need::Garage, Need::Ostree, Need::SshClient]) {
        return;
    }
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let w = work.path();
    let mut garage = Garage::start(&w.join("garage"), 1, 1).unwrap();
    let f = PushFixture::new();
    let authorized = w.join("authorized_keys");
    fs::write(&authorized, f.key.public_line().unwrap()).unwrap();
    let (http, ssh) = (free_port(), free_port());
    let log = w.join("serve.log");
    let mut serve = Command::new(osbuild_bin());
    serve
        .args(["serve", "--access-log", "off"])
        .args(["--http", &format!("127.0.0.1:{http}"), "--repo"])
        .arg(&f.server)
        .args(["--ssh", &format!("127.0.0.1:{ssh}"), "--authorized-keys"])
        .arg(&authorized)
        .arg("--host-key")
        .arg(w.join("host_key"))
        .args(["--publish-to", &format!("s3://{BUCKET}/served")])
        .args(["--publish-endpoint", &garage.endpoint(0)])
        .args(["--publish-region", "garage"]);
    for (k, v) in garage.credentials() {
        serve.env(k, v);
    }
    let _server = Daemon::start(&mut serve, ssh, Some(&log)).unwrap();
    let push = || {
        output(
            Command::new(osbuild_bin())
                .arg("push")
                .arg(repo_arg(&f.client))
                .arg("-i")
                .arg(&f.key.private)
                .arg("--known-hosts")
                .arg(&f.known_hosts)
                .arg("--accept-new-host-key")
                .arg(format!("ssh://root@127.0.0.1:{ssh}{}", f.server.display()))
                .arg(BRANCH),
        )
    };

    let c1 = f.commit(BRANCH, "a", "one");
    let out = push();
    assert!(out.status.success(), "{}", text(&out));
    let head = bucket_head_becomes(&garage, "served", &c1, Duration::from_secs(30));
    assert_eq!(
        head,
        c1,
        "the push did not reach the bucket: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );

    // The store goes down: the push lands all the same and is served.
    garage.stop(0);
    let c2 = f.commit(BRANCH, "b", "two");
    let out = push();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(f.server_rev(BRANCH), c2);
    let served_head = run(Command::new("curl").args([
        "-sf",
        &format!("http://127.0.0.1:{http}/repo/refs/heads/{BRANCH}"),
    ]));
    assert_eq!(served_head.trim(), c2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("retrying in")
    {
        assert!(Instant::now() < deadline, "no failed publish was logged");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Back up: the retry publishes the new head.
    garage.restart(0).unwrap();
    let head = bucket_head_becomes(&garage, "served", &c2, Duration::from_secs(90));
    assert_eq!(
        head,
        c2,
        "the retry did not publish: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    let pulled = pull(w, &garage.web_url(0, "served"));
    assert!(pulled.status.success(), "{}", text(&pulled));
    assert_eq!(client_head(w), c2);
    fsck(w);
}
