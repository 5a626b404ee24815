# Server (the confidential VM): an unmodified HTTP backend on port 8080, the
# sample-TEE Attestation Agent, and a netfilter egress that captures port
# 8080 and attests (use case 2, server side, as written in the seed).
http_backend 8080
sample_aa
tng_nfq tng-egress '{
  "add_egress": [{
    "netfilter": {"capture_dst": {"port": 8080}, "capture_local_traffic": true},
    "attest": {"aa_addr": "unix://'"$STATE"'/aa.sock"}
  }]
}'
