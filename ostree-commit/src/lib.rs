//! The source side of the pipeline: a root filesystem is bootstrapped, converted to the
//! OSTree layout, validated and committed into an archive repository.

mod bootstrap;
mod cache;
mod commit;
mod customize;
mod layout;
mod manifest;
mod prune;
mod push;
mod source;
mod writer;

pub use bootstrap::{bootstrap, Bootstrap, Bootstrapped};
pub use cache::{Cache, KEEP_BASES};
pub use commit::{
    commit, sign, unchanged_inputs, Commit, CommitOptions, IMAGE_DIGEST_KEY, IMAGE_KEY,
};
pub use layout::{convert, validate, TreeError, TreeInfo};
pub use manifest::{
    key_flags, AptRepository, AptSources, FileContent, FlagAction, FlagScope, ImageFile,
    ImageSettings, KeyFlag, Manifest, ManifestError, ManifestErrorKind, Overrides, Owner,
    PushTarget, Remote, RemoteFlags, Scripts, Services, Sign, User,
};
pub use prune::{prune, Pruned};
pub use push::{push, Destination, PushOptions, PushOutcome};
pub use source::{Base, Debian, Directory, Image, ImageOrigin, Init, Tarball, Transport};
