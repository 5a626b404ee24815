#!/usr/bin/env bash
# Provisioning, every boot: the lab's routing. The client reaches the server
# network through the gateway and the server answers through it; the gateway
# forwards. (The machines keep their own default route for package
# downloads; in the namespace mirror the lab routes are the default routes.)
set -euo pipefail
case ${1:?role} in
  client)  ip route replace 192.168.57.0/24 via 192.168.56.20 ;;
  server)  ip route replace 192.168.56.0/24 via 192.168.57.20 ;;
  gateway) sysctl -qw net.ipv4.ip_forward=1 ;;
  *) echo "unknown role $1" >&2; exit 2 ;;
esac
