#!/usr/bin/env bash
# Provisioning, every machine: the system packages tng_nfq and the scenarios
# use, then tng_nfq itself from the synced source tree into /opt/tng-nfq.
set -euo pipefail
SRC=/srv/tng_nfq
"$SRC/scripts/install-system-deps.sh"
# the venv and NetfilterQueue's C extension need these on a plain Debian
if ! python3 -c 'import ensurepip' 2>/dev/null || ! command -v python3-config >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv python3-dev >/dev/null
fi
if [ ! -x /opt/tng-nfq/bin/python ]; then
  python3 -m venv /opt/tng-nfq
  /opt/tng-nfq/bin/pip install -q --upgrade pip
fi
/opt/tng-nfq/bin/pip install -q --upgrade "$SRC"
ln -sf /opt/tng-nfq/bin/tng-nfq /usr/local/bin/tng-nfq
tng-nfq --version
