# Server: an unmodified HTTP backend on 8080, the sample AA, a netfilter
# egress that captures 8080 and attests.
http_backend 8080
sample_aa
tng_nfq tng-egress '{
  "add_egress": [{
    "netfilter": {"capture_dst": {"port": 8080}},
    "attest": {"aa_addr": "unix://'"$STATE"'/aa.sock"}
  }]
}'
