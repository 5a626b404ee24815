# Server (the confidential VM): an unmodified HTTP backend on port 8080, the
# sample AA, and a netfilter egress that captures 8080 and decapsulates
# (the manual's decap_from_http example, with a health-check path allowed
# in clear).
http_backend 8080
mkdir -p "$STATE/site/api/predict/model-a"
printf 'prediction from the server backend, %s\n' "$LAB_MARKER" >"$STATE/site/api/predict/model-a/$LAB_MARKER.txt"
printf 'healthy\n' >"$STATE/site/healthz"
sample_aa
tng_nfq tng-egress '{
  "add_egress": [{
    "netfilter": {"capture_dst": {"port": 8080}, "capture_local_traffic": true},
    "decap_from_http": {"allow_non_tng_traffic_regexes": ["/healthz"]},
    "attest": {"aa_addr": "unix://'"$STATE"'/aa.sock"}
  }]
}'
