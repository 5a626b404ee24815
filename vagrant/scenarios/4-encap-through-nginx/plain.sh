# Client, after the wire was judged: plain HTTP straight to the server's
# port 8080 meets the decapsulating egress, which passes only the paths of
# allow_non_tng_traffic_regexes (the health check) and refuses the rest.
# the health check passes the egress in clear (allow_non_tng_traffic_regexes), other plain requests do not
[ "$(curl -sS --max-time 10 "http://$SERVER_IP:8080/healthz")" = healthy ] || fail "health check refused"
code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "http://$SERVER_IP:8080/api/predict/model-a/$LAB_MARKER.txt")
[ "$code" = 403 ] || fail "a plain request to the backend got $code, not 403"
pass "plain HTTP to the server: /healthz allowed, everything else 403"
