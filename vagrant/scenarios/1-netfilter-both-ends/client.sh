# Client: a netfilter ingress that captures port 8080 and verifies the
# server against the gateway's Attestation Service (use case 2, client side),
# then unmodified curl to the server's real address and port.
tng_nfq tng-ingress '{
  "admin_bind": {"host": "127.0.0.1", "port": '"$ADMIN_PORT"'},
  "add_ingress": [{
    "netfilter": {"capture_dst": {"port": 8080}},
    "verify": {"as_addr": "http://'"$GATEWAY_CLIENT_SIDE_IP:$AS_PORT"'/", "policy_ids": ["default"]}
  }]
}'
url="http://$SERVER_IP:8080/$LAB_MARKER.txt"
say "curl $url"
response=$(curl -sS --fail --max-time 20 "$url") || { log_tail tng-ingress; fail "curl $url"; }
say "response: $response"
[ "$response" = "hello from the server backend, $LAB_MARKER" ] || fail "unexpected response"
pass "the response came back through the tunnel"
check_access tng-ingress yes
pass "the server was attested before a byte was forwarded"
# one more connection, held open while the admin API is asked: /flows shows it live
start_bg held sh -c "sleep 30 | nc $SERVER_IP 8080"
wait_until held 20 sh -c "curl -sf http://127.0.0.1:$ADMIN_PORT/flows | grep -q '\"state\": \"open\"'"
show_flows
stop_bg held
verified=$(verified_peers)
say "admin API /status: verifier verified $verified peer(s)"
[ "$verified" -ge 1 ] || fail "/status shows no verification"
