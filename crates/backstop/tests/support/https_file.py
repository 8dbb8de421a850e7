"""A tiny HTTPS server on 127.0.0.1 for tests: serves the file BODY at PATH (anything else
404), with the certificate CERT and key KEY. Prints its port on standard output once it
listens, then serves until killed. Each request is logged on standard error."""
import http.server
import ssl
import sys

cert, key, path, body_file = sys.argv[1:5]
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


server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
