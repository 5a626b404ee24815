# Shared helpers for the scenario scripts (sourced by ./step, never run alone).
#
# The scripts run unchanged on the Vagrant machines and, in the namespace
# mirror, inside `ip netns exec <ns>` on one host: they assume nothing about
# namespaces. Everything a role starts is a background process with a pid
# file and a log file in $STATE (= $LAB_STATE/$ROLE); ./stop.sh ends them.

# The lab's addresses (vagrant/Vagrantfile private networks; the mirror's veths).
CLIENT_IP=192.168.56.10
GATEWAY_CLIENT_SIDE_IP=192.168.56.20
GATEWAY_SERVER_SIDE_IP=192.168.57.20
SERVER_IP=192.168.57.30

AS_PORT=18080        # sample Attestation Service (REST) on the gateway
ADMIN_PORT=9901      # tng-nfq admin API, loopback only
TNG_NFQ=${TNG_NFQ:-tng-nfq}
PY=${LAB_PYTHON:-python3}
LAB_MARKER=${LAB_MARKER:-TNGLAB-SECRET-MARKER}

: "${ROLE:?ROLE is not set (run the scripts through vagrant/scenarios/step)}"
: "${STATE:?STATE is not set (run the scripts through vagrant/scenarios/step)}"
mkdir -p "$STATE"

say()  { printf '[%s] %s\n' "$ROLE" "$*"; }
fail() { printf '[%s] FAILED: %s\n' "$ROLE" "$*" >&2; exit 1; }
pass() { printf '[%s] ok: %s\n' "$ROLE" "$*"; }

# start_bg NAME CMD...: run CMD in its own session, output to $STATE/NAME.log
start_bg() {
  local name=$1; shift
  setsid "$@" </dev/null >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
}

alive() { local pid; pid=$(cat "$STATE/$1.pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null; }

# stop_bg NAME [SIGNAL]: signal NAME (and its children: setsid made it a
# process group leader), wait up to 10 s, then SIGKILL
stop_bg() {
  local name=$1 sig=${2:-TERM} pid i
  pid=$(cat "$STATE/$name.pid" 2>/dev/null) || return 0
  kill -"$sig" "$pid" 2>/dev/null || { rm -f "$STATE/$name.pid"; return 0; }
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$STATE/$name.pid"
}

log_tail() { say "--- $1.log (tail) ---" >&2; tail -n 30 "$STATE/$1.log" >&2 || true; }

# wait_until NAME TIMEOUT CMD...: poll CMD every 0.1 s while process NAME lives
wait_until() {
  local name=$1 timeout=$2 i; shift 2
  for i in $(seq $((timeout * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    if ! alive "$name"; then log_tail "$name"; fail "$name exited while waiting for: $*"; fi
    sleep 0.1
  done
  log_tail "$name"; fail "timed out after ${timeout}s waiting for: $*"
}

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }
listening() { ss -Hltn "sport = :$1" | grep -q .; }
logged() { grep -q "\"event\": \"$2\"" "$STATE/$1.log"; }

# tng_nfq NAME CONFIG_JSON: start a tng-nfq instance and wait for "ready"
tng_nfq() {
  local name=$1 config=$2
  printf '%s\n' "$config" >"$STATE/$name.json"
  "$TNG_NFQ" check --config-file "$STATE/$name.json" >/dev/null || fail "$name: configuration rejected"
  start_bg "$name" "$TNG_NFQ" --log-format json launch --config-file "$STATE/$name.json"
  wait_until "$name" 30 logged "$name" ready
  say "tng-nfq $name ready: $(tr -d '\n ' <"$STATE/$name.json")"
}

# sample_aa: the sample-TEE Attestation Agent on $STATE/aa.sock
sample_aa() {
  start_bg aa "$TNG_NFQ" dev aa --socket "$STATE/aa.sock"
  wait_until aa 20 test -S "$STATE/aa.sock"
  say "sample Attestation Agent on unix://$STATE/aa.sock"
}

# http_backend PORT: python http.server serving $STATE/site (request log: http-PORT.log)
http_backend() {
  mkdir -p "$STATE/site"
  printf 'hello from the server backend, %s\n' "$LAB_MARKER" >"$STATE/site/$LAB_MARKER.txt"
  start_bg "http-$1" "$PY" -m http.server --bind 0.0.0.0 --directory "$STATE/site" "$1"
  wait_until "http-$1" 20 port_open 127.0.0.1 "$1"
  say "HTTP backend on 0.0.0.0:$1 (python3 -m http.server)"
}

# access_entries NAME: the tng-nfq access log lines ("event": "connection") of NAME, one JSON per line
access_entries() {
  "$PY" - "$STATE/$1.log" <<'PYEOF'
import json, sys
for line in open(sys.argv[1], errors="replace"):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if isinstance(e, dict) and e.get("event") == "connection":
        print(json.dumps(e))
PYEOF
}

# check_access NAME ATTESTED: every access-log entry of NAME ended ok (and
# was attested when ATTESTED=yes); prints them, and the peer's verdict.
check_access() {
  local name=$1 want=$2 out
  out=$("$PY" - "$STATE/$name.log" "$want" <<'PYEOF'
import json, sys, time
path, want = sys.argv[1], sys.argv[2] == "yes"
entries = []
for _ in range(150):  # the access line is written when the connection ends (<= 15 s)
    entries = []
    for line in open(path, errors="replace"):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict) and e.get("event") == "connection":
            entries.append(e)
    if entries:
        break
    time.sleep(0.1)
if not entries:
    sys.exit("no access-log entry")
bad = 0
for e in entries:
    print(f"access log: {e.get('downstream')} -> {e.get('listener')} ({e.get('mode')}) -> {e.get('upstream')}: "
          f"outcome={e.get('outcome')} encrypted={e.get('encrypted')} attested={e.get('attested')}")
    verdict = e.get("peer_attestation")
    if verdict:
        print(f"attestation verdict on the peer: TEE type {verdict.get('tee_type')}, policy "
              f"{', '.join(verdict.get('policy_ids') or [])}, status {verdict.get('status')} "
              f"(model {verdict.get('model')})")
    if e.get("outcome") != "ok" or e.get("encrypted") is not True:
        bad += 1
    if want and (e.get("attested") is not True or (verdict or {}).get("status") != "affirming"):
        bad += 1
sys.exit(1 if bad else 0)
PYEOF
  ) || { printf '%s\n' "$out"; log_tail "$name"; fail "$name: access log does not show an ok tunnel (attested wanted: $want)"; }
  printf '%s\n' "$out" | sed "s/^/[$ROLE] /"
}

# admin GET PATH: the tng-nfq admin API on loopback
admin() { curl -sS --fail --max-time 5 "http://127.0.0.1:$ADMIN_PORT$1"; }

# capture_start PORT: tcpdump on this machine's server-side interface
# (the one holding $GATEWAY_SERVER_SIDE_IP), writing $STATE/wire.pcap
capture_start() {
  local iface
  iface=$(ip -o -4 addr show | awk -v a="$GATEWAY_SERVER_SIDE_IP" '{split($4, p, "/")} p[1] == a {print $2; exit}')
  [ -n "$iface" ] || fail "no interface holds $GATEWAY_SERVER_SIDE_IP"
  rm -f "$STATE/wire.pcap"
  start_bg tcpdump tcpdump -i "$iface" -U --immediate-mode -n -s 0 -w "$STATE/wire.pcap" "tcp port $1"
  wait_until tcpdump 10 test -s "$STATE/wire.pcap"
  sleep 0.3
  echo "$1" >"$STATE/wire.port"
  say "capturing tcp port $1 on $iface (the wire toward the server) -> $STATE/wire.pcap"
}

# capture_check [WIRE-CHECK OPTIONS]: stop tcpdump, then prove the wire carried
# only TLS (rats-tls) and never the scenario's secret marker (options, e.g.
# --allow-http-encapsulation, go to `tng-nfq lab wire-check`).
capture_check() {
  [ -f "$STATE/wire.port" ] || fail "no capture was started"
  sleep 0.3
  stop_bg tcpdump INT
  if ! "$TNG_NFQ" lab wire-check --pcap "$STATE/wire.pcap" --port "$(cat "$STATE/wire.port")" \
      --expect-absent "$LAB_MARKER" "$@" | sed "s/^/[$ROLE] /"; then
    fail "the capture shows something other than a clean rats-tls tunnel"
  fi
  case " $* " in
  *" --allow-http-encapsulation "*) pass "wire between client and server: sealed (TLS or HTTP-encapsulated), no plaintext" ;;
  *) pass "wire between client and server: TLS only, no plaintext" ;;
  esac
}

# check_as N: the Attestation Service on this machine appraised at least N evidences
check_as() {
  local n
  n=$(grep -c '"event": "attestation request"' "$STATE/as.log" || true)
  say "the Attestation Service appraised $n evidence(s) (tokens issued)"
  [ "$n" -ge "$1" ] || fail "expected at least $1 appraisal(s)"
}

# sample_as: the sample Attestation Service (REST, policy trust_all) on 0.0.0.0:$AS_PORT
sample_as() {
  start_bg as "$TNG_NFQ" --log-format json dev as --listen "0.0.0.0:$AS_PORT" --state-dir "$STATE/as-state"
  wait_until as 20 port_open 127.0.0.1 "$AS_PORT"
  say "sample Attestation Service (REST) on 0.0.0.0:$AS_PORT, policy trust_all"
}

# verified_peers: sum of the verifiers' "verified" counters in the admin API's /status
verified_peers() {
  admin /status | "$PY" -c 'import json, sys
d = json.load(sys.stdin)
print(sum(e["attestation"].get("verifier", {}).get("verified", 0) for e in d["ingress"] + d["egress"]))'
}

# show_flows: the admin API's /flows, summed up in one line, then as it is
show_flows() {
  local flows
  flows=$(admin /flows) || fail "admin API /flows"
  printf '%s\n' "$flows" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
live = ["%s -> %s (%s, attested=%s, peer %s)" % (f["downstream"], f["upstream"], f["state"], f["attested"],
        (f.get("peer_attestation") or {}).get("status", "not verified")) for f in d["flows"]]
print("[%s] /flows: %d live connection(s): %s; %d flow(s) classified by the NFQUEUE workers"
      % (sys.argv[1], len(live), "; ".join(live) or "-", len(d["classified"])))' "$ROLE"
  printf '%s\n' "$flows" | sed "s/^/[$ROLE]   /"
}
