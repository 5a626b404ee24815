#!/usr/bin/env bash
# Builds dist/tng-nfq-<version>.tar.gz (`make dist`): unpacked with
# `tar -xf tng-nfq-<version>.tar.gz -C /` it is /opt/tng-nfq-<version>/, a
# Python virtual environment holding tng-nfq and all its dependencies, with
#   /opt/tng-nfq-<version>/bin/tng-nfq
#   /opt/tng-nfq-<version>/share/tng-nfq/{tng-nfq.service,config.json}
# Uninstall: rm -rf /opt/tng-nfq-<version>.
#
# A venv embeds its own absolute path (script shebangs, pyvenv.cfg, the paths
# compiled into .pyc files), so it must be created where it will live. This
# script creates it AT /opt/tng-nfq-<version>, but in a private mount
# namespace (unshare -m) in which an empty staging directory is bind-mounted
# over /opt: the host's /opt is never written, nothing needs fixing up
# afterwards, and the tarball is simply the staging directory. As non-root
# the namespace is entered with a user namespace (unshare -rm).
# Steps: 1. every wheel (the project and its dependencies) is built or
# fetched with the machine's normal pip setup, outside the namespace; 2. the
# venv is created and filled from those wheels only (--no-index), inside it.
#
# The venv's python is a symlink to the base interpreter ($DIST_PYTHON,
# default /usr/bin/python3, Debian's python3): the target machine needs the
# same python3 minor version at the same path, plus iptables and
# libnetfilter-queue1 (NetfilterQueue links against it).
#
# Environment: DIST_PYTHON (base interpreter), DIST_DIR (output directory,
# default dist/), DIST_WHEEL_CACHE (keep the wheelhouse there between runs).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
python=${DIST_PYTHON:-/usr/bin/python3}
out=${DIST_DIR:-$root/dist}
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' tng_nfq/__init__.py)
[ -n "$version" ] || { echo "build-dist: no __version__ in tng_nfq/__init__.py" >&2; exit 1; }
name=tng-nfq-$version
prefix=/opt/$name

if [ "$(id -u)" = 0 ]; then
  unshare=(unshare --mount --propagation private)
else
  unshare=(unshare --map-root-user --mount --propagation private)
fi
"${unshare[@]}" true 2>/dev/null || { echo "build-dist: cannot create a mount namespace (${unshare[*]})" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/tng-nfq-dist.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/root/opt" "$out"

# 1. wheels. A copy of the sources, so that building leaves nothing (build/,
#    egg-info) in the work tree.
cp -r tng_nfq setup.cfg pyproject.toml README.md MANIFEST.in packaging "$work/src/"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
wheels=${DIST_WHEEL_CACHE:-$work/wheels}
mkdir -p "$wheels"
rm -f "$wheels"/tng_nfq-*.whl
"$python" -m venv "$work/builder"
"$work/builder/bin/python" -m pip wheel -q --disable-pip-version-check --wheel-dir "$wheels" "$work/src"

# 2. the venv, created at its final path inside the private mount namespace;
#    pip sees only the wheelhouse (no index, no machine pip configuration).
"${unshare[@]}" env -u PIP_FIND_LINKS -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
  bash -euc '
    work=$1 python=$2 prefix=$3 wheels=$4
    mount --bind "$work/root/opt" /opt
    "$python" -m venv "$prefix"
    "$prefix/bin/python" -m pip install -q --disable-pip-version-check --no-index \
        --find-links "$wheels" tng-nfq
    "$prefix/bin/tng-nfq" --version >/dev/null
  ' build-dist "$work" "$python" "$prefix" "$wheels"

share=$work/root$prefix/share/tng-nfq
mkdir -p "$share"
sed "s#/opt/tng-nfq-[^/]*/#$prefix/#g" packaging/systemd/tng-nfq.service > "$share/tng-nfq.service"
cp packaging/etc/tng-nfq/config.json "$share/config.json"

tarball=$out/$name.tar.gz
tar -C "$work/root" --owner=0 --group=0 --numeric-owner -czf "$tarball.tmp" "opt/$name"
mv "$tarball.tmp" "$tarball"
echo "$tarball"
