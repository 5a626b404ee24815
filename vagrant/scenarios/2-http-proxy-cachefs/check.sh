# After the exchange: the wire, the Attestation Service, the server's view.
case $ROLE in
gateway)
  capture_check
  check_as 2  # the client's evidence and the server's
  ;;
server)
  check_access tng-egress yes  # the egress verified the client
  pass "the client was attested by the server"
  wait_until cachefs 10 test -s "$STATE/received.txt"
  [ "$(cat "$STATE/received.txt")" = "cachefs hello from the client, $LAB_MARKER" ] \
    || fail "the cachefs node received: $(cat "$STATE/received.txt")"
  pass "the cachefs node received the client's bytes"
  ;;
esac
