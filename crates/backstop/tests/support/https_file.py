"""A tiny HTTPS server on 127.0.0.1 for tests: serves the file BODY at PATH (anything else
404), with the certificate CERT and key KEY. With a fifth argument POST_DIR, a POST to any
path is answered 202 and kept as POST_DIR/post-N.body, with its path and Content-Type in
POST_DIR/post-N.meta (405 without). Prints its port on standard output once it listens, then
serves until killed. Each request is logged on standard error."""
import http.server
import os
import ssl
import sys

cert, key, path, body_file = sys.argv[1:5]
post_dir = sys.argv[5] if len(sys.argv) > 5 else None
with open(body_file, "rb") as f:
    body = f.read()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != path:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        if post_dir is None:
            self.send_error(405)
            return
        data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        n = len([f for f in os.listdir(post_dir) if f.endswith(".body")])
        base = os.path.join(post_dir, "post-%d" % n)
        with open(base + ".meta", "w") as f:
            f.write("%s\n%s\n" % (self.path, self.headers.get("Content-Type", "")))
        with open(base + ".body", "wb") as f:
            f.write(data)
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()


server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
