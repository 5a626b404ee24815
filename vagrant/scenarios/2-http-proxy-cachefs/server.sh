# Server: a cachefs node (`nc -l 9991`, one connection) behind a netfilter
# egress that captures 9991, attests (its own sample AA) and verifies the
# client (two-way attestation, as in the manual's cachefs example).
sample_aa
printf 'cachefs reply from the server, %s\n' "$LAB_MARKER" >"$STATE/reply.txt"
start_bg cachefs sh -c 'exec nc -N -l 9991 <"$1" >"$2"' nc "$STATE/reply.txt" "$STATE/received.txt"
wait_until cachefs 20 listening 9991
say "cachefs node: nc -N -l 9991"
tng_nfq tng-egress '{
  "add_egress": [{
    "netfilter": {"capture_dst": {"port": 9991}},
    "attest": {"aa_addr": "unix://'"$STATE"'/aa.sock"},
    "verify": {"as_addr": "http://'"$GATEWAY_SERVER_SIDE_IP:$AS_PORT"'/", "policy_ids": ["default"]}
  }]
}'
