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
                          "te": self.headers.get("Transfer-Encoding"),
                          "conn": self.client_address[1]}).encode() + b"\n"
        if self.path.endswith("/big"):
            out = b"B" * (3 * 1024 * 1024)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    def do_GET(self):
        if self.path.endswith("/page"):
            return self._page()
        self._reply()

    def _page(self):
        # an HTML page, gzip-compressed when the client accepts it (what
        # web_page_inject must decode, inject into and re-frame)
        page = (b"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Confidential app</title></head>"
                b"<body><h1>Confidential application</h1>" + b"<p>filler paragraph</p>" * 300 +
                b"<p id='end'>END-OF-PAGE</p></body></html>")
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        if "gzip" in self.headers.get("Accept-Encoding", ""):
            import gzip
            page = gzip.compress(page)
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

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
