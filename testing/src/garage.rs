//! A real Garage (a geo-distributed S3-compatible object store) on loopback, for the
//! publishing tests: one node, or several replicating each other, each a `garage server`
//! with its own ports, started and stopped by the test.
//!
//! Its web endpoint picks the bucket from the Host header: a bucket named `localhost` is
//! what `http://localhost:PORT/` serves, so clients need no DNS.

use crate::helpers::{free_port, Daemon};
use anyhow::{Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The bucket the web endpoint serves at `http://localhost:PORT/`.
pub const BUCKET: &str = "localhost";

/// The `garage` binary: on the PATH, or where `cargo install` puts it.
pub fn binary() -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(cargo_home.map(|c| c.join("bin")))
        .map(|d| d.join("garage"))
        .find(|p| p.is_file())
}

/// One node's ports and files.
#[derive(Debug)]
struct Node {
    dir: PathBuf,
    config: PathBuf,
    rpc_port: u16,
    s3_port: u16,
    web_port: u16,
    daemon: Option<Daemon>,
}

/// A Garage cluster of one or more nodes, with a bucket and a key that may use it.
#[derive(Debug)]
pub struct Garage {
    nodes: Vec<Node>,
    /// The access key's id.
    pub key_id: String,
    /// Its secret.
    pub secret: String,
}

impl Garage {
    /// Start `nodes` nodes under `dir` with the given replication factor, lay them out,
    /// and create [`BUCKET`] (served as a website) with a key allowed to read and write it.
    pub fn start(dir: &Path, nodes: usize, replication: usize) -> Result<Garage> {
        let bin = binary()
            .context("garage is not installed (bash scripts/install-garage.sh builds it)")?;
        // One secret for the cluster: the nodes authenticate each other with it.
        let secret: String = (0..32)
            .map(|i| format!("{:02x}", (i * 37 + 11) % 256))
            .collect();
        let mut list = Vec::new();
        for i in 0..nodes {
            let node_dir = dir.join(format!("node{i}"));
            fs::create_dir_all(&node_dir)?;
            let (rpc_port, s3_port, web_port) = (free_port(), free_port(), free_port());
            let config = node_dir.join("garage.toml");
            // No block compression: an archive repository's objects are zlib-compressed
            // already, and zstd over them (at -O0 in the tests' debug build) only costs CPU.
            fs::write(
                &config,
                format!(
                    "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\ndb_engine = \"lmdb\"\n\
                     compression_level = \"none\"\n\
                     replication_factor = {replication}\n\
                     rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\nrpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
                     rpc_secret = \"{secret}\"\n\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\
                     root_domain = \".s3.garage.localhost\"\n\n\
                     [s3_web]\nbind_addr = \"127.0.0.1:{web_port}\"\nroot_domain = \".web.garage.localhost\"\n\
                     index = \"index.html\"\n",
                    d = node_dir.display()
                ),
            )?;
            list.push(Node {
                dir: node_dir,
                config,
                rpc_port,
                s3_port,
                web_port,
                daemon: None,
            });
        }
        let mut garage = Garage {
            nodes: list,
            key_id: String::new(),
            secret: String::new(),
        };
        for i in 0..nodes {
            garage.start_node(i, &bin)?;
        }
        // Connect the nodes, then give each a zone and capacity in one layout.
        let ids: Vec<String> = (0..nodes)
            .map(|i| garage.cli_on(i, &["node", "id", "-q"]))
            .collect::<Result<_>>()?;
        for id in &ids[1..] {
            garage.cli(&["node", "connect", id.trim()])?;
        }
        for (i, id) in ids.iter().enumerate() {
            let short = id.trim().split('@').next().unwrap_or_default();
            garage.cli(&[
                "layout",
                "assign",
                "-z",
                &format!("dc{i}"),
                "-c",
                "1G",
                short,
            ])?;
        }
        garage.cli(&["layout", "apply", "--version", "1"])?;
        garage.cli(&["bucket", "create", BUCKET])?;
        let key = garage.cli(&["key", "create", "osbuild-test"])?;
        let field = |name: &str| {
            key.lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .map(|v| v.trim().to_string())
                .with_context(|| format!("no {name} in {key}"))
        };
        garage.key_id = field("Key ID:")?;
        garage.secret = field("Secret key:")?;
        garage.cli(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            BUCKET,
            "--key",
            "osbuild-test",
        ])?;
        garage.cli(&["bucket", "website", "--allow", BUCKET])?;
        Ok(garage)
    }

    fn start_node(&mut self, i: usize, bin: &Path) -> Result<()> {
        let node = &mut self.nodes[i];
        let daemon = Daemon::start(
            Command::new(bin)
                .arg("-c")
                .arg(&node.config)
                .arg("server")
                .env("RUST_LOG", "garage=warn"),
            node.s3_port,
            Some(&node.dir.join("garage.log")),
        )?;
        node.daemon = Some(daemon);
        Ok(())
    }

    /// Stop node `i` (killed, as a machine that goes down).
    pub fn stop(&mut self, i: usize) {
        self.nodes[i].daemon = None;
    }

    /// Start node `i` again.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let bin = binary().context("garage is not installed")?;
        self.start_node(i, &bin)
    }

    /// Run the garage CLI against the first running node.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let i = self
            .nodes
            .iter()
            .position(|n| n.daemon.is_some())
            .context("no garage node is running")?;
        self.cli_on(i, args)
    }

    fn cli_on(&self, i: usize, args: &[&str]) -> Result<String> {
        let bin = binary().context("garage is not installed")?;
        osbuild_core::cmd::run(
            Command::new(bin)
                .arg("-c")
                .arg(&self.nodes[i].config)
                .args(args)
                .env("RUST_LOG", "garage=warn"),
        )
        .with_context(|| format!("garage {}", args.join(" ")))
    }

    /// The S3 endpoint of node `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3_port)
    }

    /// Node `i`'s website port.
    pub fn web_port(&self, i: usize) -> u16 {
        self.nodes[i].web_port
    }

    /// Let the website endpoint serve [`BUCKET`] to requests for `host` too (it picks the
    /// bucket by the Host header), for clients that reach it by another name.
    pub fn alias(&self, host: &str) -> Result<()> {
        self.cli(&["bucket", "alias", BUCKET, host]).map(drop)
    }

    /// `osbuild publish` of the archive repository `repo` to `prefix` of [`BUCKET`] through
    /// node 0, with the cluster's key.
    pub fn publish(&self, repo: &Path, prefix: &str) -> Result<String> {
        let mut c = Command::new(crate::helpers::osbuild_bin());
        c.arg("publish")
            .arg("--repo")
            .arg(repo)
            .args(["--to", &format!("s3://{BUCKET}/{prefix}")])
            .args(["--endpoint", &self.endpoint(0), "--region", "garage"]);
        for (k, v) in self.credentials() {
            c.env(k, v);
        }
        osbuild_core::cmd::run(&mut c).with_context(|| format!("publishing {}", repo.display()))
    }

    /// The website URL of [`BUCKET`] under `prefix` on node `i`, as devices pull from it.
    pub fn web_url(&self, i: usize, prefix: &str) -> String {
        let prefix = prefix.trim_matches('/');
        let port = self.nodes[i].web_port;
        if prefix.is_empty() {
            format!("http://localhost:{port}/")
        } else {
            format!("http://localhost:{port}/{prefix}/")
        }
    }

    /// The environment `osbuild publish` reads its credentials from.
    pub fn credentials(&self) -> [(&'static str, String); 2] {
        [
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
        ]
    }

    /// Node `i`'s RPC port (for tests that cut one node off).
    pub fn rpc_port(&self, i: usize) -> u16 {
        self.nodes[i].rpc_port
    }
}
