# Gateway: an L7 box that passes only HTTP. nginx on :80 routes by path:
# /api/predict/ goes to the server's port 8080 (where the egress waits),
# everything else gets nginx's own 404. Also the sample Attestation Service
# the client verifies against, and a capture of the wire toward the server
# (nginx -> egress: HTTP, so it must show encapsulated requests only).
sample_as
mkdir -p "$STATE/nginx/tmp" "$STATE/nginx/logs"
cat >"$STATE/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $STATE/nginx/nginx.pid;
error_log $STATE/nginx/logs/error.log info;
events { worker_connections 256; }
http {
    log_format lab '\$request_method \$request_uri host=\$host api=\$http_x_tng_ohttp_api status=\$status';
    access_log $STATE/nginx/logs/access.log lab;
    client_body_temp_path $STATE/nginx/tmp/body;
    proxy_temp_path $STATE/nginx/tmp/proxy;
    fastcgi_temp_path $STATE/nginx/tmp/fastcgi;
    uwsgi_temp_path $STATE/nginx/tmp/uwsgi;
    scgi_temp_path $STATE/nginx/tmp/scgi;
    client_max_body_size 0;
    server {
        listen $GATEWAY_CLIENT_SIDE_IP:80;
        location /api/predict/ {
            proxy_pass http://$SERVER_IP:8080;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$http_host;
            proxy_request_buffering off;
            proxy_buffering off;
        }
        location / { return 404 "nginx: no route\n"; }
    }
}
CONF
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
start_bg nginx "$NGINX" -g "daemon off;" -c "$STATE/nginx/nginx.conf" -p "$STATE/nginx"
wait_until nginx 20 port_open "$GATEWAY_CLIENT_SIDE_IP" 80
say "nginx on $GATEWAY_CLIENT_SIDE_IP:80: /api/predict/ -> $SERVER_IP:8080, else 404"
capture_start 8080
