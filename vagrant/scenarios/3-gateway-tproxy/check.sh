# After the client's request: the gateway caught and attested it; the wire
# from the gateway to the server carried TLS only.
case $ROLE in
gateway)
  check_access tng-gateway yes
  grep -q "\"downstream\": \"$CLIENT_IP:" "$STATE/tng-gateway.log" || fail "the gateway did not carry the client's connection"
  pass "the gateway caught the client's forwarded connection and attested the server"
  ip -4 rule | grep -q "lookup 5650" || fail "no policy-routing rule of the gateway role"
  show_flows
  capture_check
  check_as 1
  ;;
server)
  check_access tng-egress no
  grep -q "GET /$LAB_MARKER.txt" "$STATE/http-8080.log" || fail "the backend never saw the request"
  pass "the backend served the request (delivered by the netfilter egress)"
  ;;
esac
