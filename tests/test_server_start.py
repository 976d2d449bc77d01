"""LocalServer's start-up wait without vLLM: a stand-in /health on 127.0.0.1."""

import http.server
import subprocess
import sys
import threading

from real_vllm.server import LocalServer


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_progress_off_a_terminal_is_two_lines_not_a_carriage_return_stream(capsys, tmp_path):
    httpd = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    server = LocalServer(tmp_path, progress=True)
    server.port = httpd.server_address[1]
    server.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        server._wait_healthy()
    finally:
        server.proc.kill()
        httpd.shutdown()
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[0].startswith("starting vLLM server (log: ") and lines[-1].startswith("vLLM server up after ")
