# Gateway: the sample Attestation Service, and a netfilter ingress that
# catches the connections it forwards from the client network to port 8080
# (the gateway role: mangle PREROUTING TPROXY + policy routing) and carries
# them to the server in an attested tunnel.
sample_as
tng_nfq tng-gateway '{
  "admin_bind": {"host": "127.0.0.1", "port": '"$ADMIN_PORT"'},
  "add_ingress": [{
    "netfilter": {"capture_dst": {"port": 8080}},
    "verify": {"as_addr": "http://127.0.0.1:'"$AS_PORT"'/", "policy_ids": ["default"]}
  }]
}'
capture_start 8080
