# Client: a mapping ingress on 127.0.0.1:10001 toward the gateway's nginx,
# with encap_in_http (the outer path keeps only the model name) and verify
# against the gateway's AS; the application is plain curl.
tng_nfq tng-ingress '{
  "admin_bind": {"host": "127.0.0.1", "port": '"$ADMIN_PORT"'},
  "add_ingress": [{
    "mapping": {"in": {"host": "127.0.0.1", "port": 10001}, "out": {"host": "'"$GATEWAY_CLIENT_SIDE_IP"'", "port": 80}},
    "encap_in_http": {"path_rewrites": [{"match_regex": "^/api/predict/([^/]+)([/]?.*)$", "substitution": "/api/predict/\\1"}]},
    "verify": {"as_addr": "http://'"$GATEWAY_CLIENT_SIDE_IP:$AS_PORT"'/", "policy_ids": ["default"]}
  }]
}'
url="http://127.0.0.1:10001/api/predict/model-a/$LAB_MARKER.txt"
say "curl $url"
response=$(curl -sS --fail --max-time 20 "$url") || { log_tail tng-ingress; fail "curl $url"; }
say "response: $response"
[ "$response" = "prediction from the server backend, $LAB_MARKER" ] || fail "unexpected response"
pass "the response came back through nginx, encapsulated"
check_access tng-ingress yes
pass "the server's HPKE key was attested before the request was sealed to it"
# a path nginx does not route: a clear error from the ingress, not a hang
code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 20 "http://127.0.0.1:10001/other") || true
[ "$code" = 502 ] || fail "unrouted path: expected 502 from the ingress, got $code"
pass "a path nginx does not route gets 502 from the ingress"
