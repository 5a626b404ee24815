#!/usr/bin/env bash
# Installs the Debian packages tng_nfq, its tests, demo and benchmarks use.
# Idempotent: does nothing when every command is already present.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have iptables      || need+=(iptables)
have ip            || need+=(iproute2)
have tcpdump       || need+=(tcpdump)
have curl          || need+=(curl)
have nginx         || need+=(nginx-light)
have stunnel4      || need+=(stunnel4)
have iperf3        || need+=(iperf3)
have nc            || need+=(netcat-openbsd)
have tshark        || need+=(tshark)
have gcc           || need+=(gcc)
have systemd-analyze || need+=(systemd)  # verifies packaging/systemd/tng-nfq.service
have chromium      || need+=(chromium)         # web_page_inject screenshot test (headless)
have chromedriver  || need+=(chromium-driver)
have vagrant       || need+=(vagrant)          # `vagrant validate` of vagrant/Vagrantfile
/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)  # make dist's venv
[ -e /usr/include/libnetfilter_queue/libnetfilter_queue.h ] || need+=(libnetfilter-queue-dev)
[ -e /usr/include/linux/netfilter.h ] || need+=(linux-libc-dev)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "missing system packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections || true
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
