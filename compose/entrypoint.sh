#!/bin/sh
# Entry point of the osbuild-serve image: create the archive repository when its volume is
# still empty, check that the push keys are there, then become `osbuild serve` (PID 1, so
# SIGTERM from `podman stop` reaches it and it shuts down gracefully).
#
# Settings come from $OSBUILD_CONFIG (default /etc/osbuild/serve.toml); arguments given to
# the container are passed on to `osbuild serve` and override the file, e.g.
# `--access-log off`. The repository is $OSBUILD_REPO, else the config file's `repo`, else
# /srv/ostree/repo.
set -eu

config="${OSBUILD_CONFIG:-/etc/osbuild/serve.toml}"
die() { echo "osbuild-entrypoint: $*" >&2; exit 1; }

[ -f "$config" ] || die "config file $config is missing (mount one, or set OSBUILD_CONFIG)"

# The value of a top-level `key = "value"` line of the config file, if any.
setting() {
  sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*\"\\([^\"]*\\)\".*/\\1/p" "$config" | tail -n 1
}

repo="${OSBUILD_REPO:-$(setting repo)}"
repo="${repo:-/srv/ostree/repo}"

if [ ! -e "$repo/config" ]; then
  mkdir -p "$repo" || die "cannot create the repository directory $repo"
  if [ -n "$(ls -A "$repo")" ]; then
    die "$repo holds files but no ostree repository (no $repo/config); refusing to initialize over them"
  fi
  ostree --repo="$repo" init --mode=archive || die "ostree init --mode=archive of $repo failed"
  echo "osbuild-entrypoint: created an empty archive repository in $repo" >&2
fi

# A bind mount of a missing file shows up as an empty directory: say what to do instead of
# letting the server fail on it.
keys="$(setting authorized-keys)"
if [ -n "$keys" ] && [ ! -f "$keys" ]; then
  die "authorized_keys $keys is not a file: put the public keys of who may push in the file mounted there (compose/secrets/authorized_keys by default; a bind mount of a missing file leaves an empty directory on the host: remove it and create the file)"
fi

exec /usr/local/bin/osbuild serve --config "$config" --repo "$repo" "$@"
