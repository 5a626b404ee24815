# Client: another cachefs node reaching the server through an http_proxy
# ingress (127.0.0.1:41000, dst_filter port 9991) that attests (its own
# sample AA) and verifies the server: `nc -X connect -x 127.0.0.1:41000`.
sample_aa
tng_nfq tng-proxy '{
  "admin_bind": {"host": "127.0.0.1", "port": '"$ADMIN_PORT"'},
  "add_ingress": [{
    "http_proxy": {"proxy_listen": {"host": "127.0.0.1", "port": 41000},
                   "dst_filter": {"domain": "*", "port": 9991}},
    "attest": {"aa_addr": "unix://'"$STATE"'/aa.sock"},
    "verify": {"as_addr": "http://'"$GATEWAY_CLIENT_SIDE_IP:$AS_PORT"'/", "policy_ids": ["default"]}
  }]
}'
printf 'cachefs hello from the client, %s\n' "$LAB_MARKER" >"$STATE/request.txt"
say "nc -N -X connect -x 127.0.0.1:41000 $SERVER_IP 9991"
response=$(timeout 30 nc -N -X connect -x 127.0.0.1:41000 "$SERVER_IP" 9991 <"$STATE/request.txt") \
  || { log_tail tng-proxy; fail "nc through the http_proxy ingress"; }
say "response: $response"
[ "$response" = "cachefs reply from the server, $LAB_MARKER" ] || fail "unexpected response"
pass "the cachefs reply came back through the tunnel"
check_access tng-proxy yes
pass "the server was attested"
verified=$(verified_peers)
say "admin API /status: verifier verified $verified peer(s)"
[ "$verified" -ge 1 ] || fail "/status shows no verification"
