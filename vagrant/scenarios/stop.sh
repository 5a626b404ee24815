# Stop everything a scenario started on this machine (tng-nfq instances first,
# so they remove their iptables rules), then forget the scenario's state.
for pidfile in "$STATE"/*.pid; do
  [ -e "$pidfile" ] || continue
  name=$(basename "$pidfile" .pid)
  case $name in tng-*) stop_bg "$name" ;; esac
done
for pidfile in "$STATE"/*.pid; do
  [ -e "$pidfile" ] || continue
  stop_bg "$(basename "$pidfile" .pid)"
done
rm -rf "${STATE:?}"
