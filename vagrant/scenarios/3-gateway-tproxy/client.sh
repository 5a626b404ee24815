# Client: nothing of tng-nfq here; its route to the server network goes via
# the gateway. Unmodified curl to the server's real address.
url="http://$SERVER_IP:8080/$LAB_MARKER.txt"
say "curl $url  (routed via $GATEWAY_CLIENT_SIDE_IP)"
response=$(curl -sS --fail --max-time 20 "$url") || fail "curl $url"
say "response: $response"
[ "$response" = "hello from the server backend, $LAB_MARKER" ] || fail "unexpected response"
pass "the response came back (through the gateway's tunnel)"
