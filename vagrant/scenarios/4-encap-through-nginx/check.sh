# After the client's requests: what each side saw.
case $ROLE in
gateway)
  capture_check --allow-http-encapsulation
  check_as 1
  say "nginx saw: $(tr '\n' ';' <"$STATE/nginx/logs/access.log")"
  grep -q "^POST /api/predict/model-a host=127.0.0.1 api=/tng/tunnel status=200" "$STATE/nginx/logs/access.log" \
    || fail "nginx did not route the encapsulated request by its rewritten path"
  if grep -q "$LAB_MARKER" "$STATE/nginx/logs/access.log"; then fail "nginx saw the inner path"; fi
  pass "nginx routed POST /api/predict/model-a (inner path and headers hidden)"
  ;;
server)
  grep -q "GET /api/predict/model-a/$LAB_MARKER.txt" "$STATE/http-8080.log" || fail "the backend never saw the request"
  pass "the backend served the inner request (delivered by the decapsulating egress)"
  n=$(access_entries tng-egress | grep -c '"tunneled": [1-9]' || true)
  [ "$n" -ge 1 ] || { log_tail tng-egress; fail "the egress logged no tunneled request"; }
  pass "the egress logged $n tunneled connection(s)"
  ;;
esac
