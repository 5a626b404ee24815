"""A real nginx reverse proxy for the tests, run in a lab namespace with its
own prefix (config, pid, logs, temp dirs under a test folder)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tng_nfq.lab.netns import Namespace, stop_process, wait_for_port

# One JSON line per request: what an L7 box in front of the egress can see.
LOG_FORMAT = ('escape=json \'{"method":"$request_method","uri":"$request_uri","host":"$host",'
              '"status":$status,"tng":"$http_tng","api":"$http_x_tng_ohttp_api",'
              '"content_type":"$content_type","upstream":"$upstream_addr"}\'')


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (shutil.which("nginx", path="/usr/sbin") if Path("/usr/sbin").exists() else None)


class Nginx:
    """`routes` maps a location prefix to an upstream `host:port` (longest
    prefix wins, as nginx does); other paths get nginx's own 404."""

    def __init__(self, lab, ns: Namespace, workdir: Path, listen: str, routes: dict[str, str]):
        self.ns = ns
        self.dir = workdir / f"nginx-{listen.replace(':', '-')}"
        for sub in ("logs", "tmp"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.access_log = self.dir / "logs" / "access.log"
        # one upstream block per target, with a keep-alive pool as a real
        # deployment has (nginx otherwise closes its upstream connection
        # after every request)
        names = {upstream: f"up{i}" for i, upstream in enumerate(dict.fromkeys(routes.values()))}
        upstreams = "\n".join(f"    upstream {name} {{ server {upstream}; keepalive 8; }}"
                              for upstream, name in names.items())
        locations = "\n".join(
            f"""        location {prefix} {{
            proxy_pass http://{names[upstream]};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_request_buffering off;
            proxy_buffering off;
        }}""" for prefix, upstream in routes.items())
        conf = f"""
worker_processes 1;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/logs/error.log info;
events {{ worker_connections 256; }}
http {{
    log_format tng {LOG_FORMAT};
    access_log {self.access_log} tng;
    client_body_temp_path {self.dir}/tmp/body;
    proxy_temp_path {self.dir}/tmp/proxy;
    fastcgi_temp_path {self.dir}/tmp/fastcgi;
    uwsgi_temp_path {self.dir}/tmp/uwsgi;
    scgi_temp_path {self.dir}/tmp/scgi;
    client_max_body_size 0;
{upstreams}
    server {{
        listen {listen};
{locations}
        location / {{ return 404 "nginx: no route\\n"; }}
    }}
}}
"""
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(conf)
        binary = nginx_binary()
        assert binary, "nginx not installed"
        self.proc = lab.spawn(ns, [binary, "-c", str(self.conf), "-p", str(self.dir)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=(self.dir / "logs" / "stderr.log").open("w"))
        host, port = listen.rsplit(":", 1)
        wait_for_port(ns, host, int(port), timeout=15.0, proc=self.proc)

    def requests(self) -> list[dict]:
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        stop_process(self.proc)
