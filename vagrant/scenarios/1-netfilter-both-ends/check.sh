# After the client's request: what each side saw.
case $ROLE in
gateway)
  capture_check
  check_as 1
  ;;
server)
  check_access tng-egress no
  grep -q "GET /$LAB_MARKER.txt" "$STATE/http-8080.log" || fail "the backend never saw the request"
  pass "the backend served the request (delivered by the netfilter egress)"
  ;;
esac
