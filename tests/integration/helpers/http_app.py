"""An HTTP/1.1 origin for the encapsulation tests: answers every request
with JSON saying what it received (method, target, Host, X-Secret, body
size and digest); `/big` paths get 3 MiB. Usage: http_app.py PORT BIND_ADDR."""

import hashlib, http.server, json, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, body_in=b""):
        out = json.dumps({"method": self.command, "target": self.path, "host": self.headers.get("Host"),
                          "x_secret": self.headers.get("X-Secret"), "n": len(body_in),
                          "sha": hashlib.sha256(body_in).hexdigest(),
                          "te": self.headers.get("Transfer-Encoding")}).encode() + b"\n"
        if self.path.endswith("/big"):
            out = b"B" * (3 * 1024 * 1024)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    def do_GET(self):
        self._reply()

    do_HEAD = do_GET

    def do_POST(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
        else:
            data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._reply(bytes(data))

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer((sys.argv[2], int(sys.argv[1])), Handler).serve_forever()
