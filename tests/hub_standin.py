"""A stand-in for the Hugging Face Hub's upload API on loopback: the endpoints ``HfApi.create_repo`` and
``HfApi.upload_folder`` call (create, validate-yaml for a model card's metadata, preupload, commit), every file
taken in the commit's regular (base64) mode and kept in memory, so that publishing is tested through the real
client without network."""

from __future__ import annotations

import base64
import json
import threading

import yaml
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubStandIn:
    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.files: dict[str, dict[str, bytes]] = {}
        self.card_metadata: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _send(self, code: int, obj: dict) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path.split("/")  # /api/models/<org>/<name>/(preupload|commit)/<revision>
                if self.path == "/api/repos/create":
                    request = json.loads(body)
                    repo = f"{request.get('organization') or 'user'}/{request['name']}"
                    hub.repos[repo] = request
                    return self._send(200, {"url": f"{hub.url}/{repo}"})
                if self.path == "/api/validate-yaml":
                    # The card's front matter must be a YAML mapping, as the Hub requires.
                    text = json.loads(body)["content"]
                    try:
                        metadata = yaml.safe_load(text.split("---")[1]) if text.startswith("---") else {}
                    except yaml.YAMLError as exc:
                        return self._send(400, {"error": f"invalid YAML: {exc}"})
                    if not isinstance(metadata, dict):
                        return self._send(400, {"error": "metadata is not a mapping"})
                    hub.card_metadata.append(metadata)
                    return self._send(200, {"warnings": []})
                if len(parts) == 7 and parts[5] == "preupload":
                    files = json.loads(body)["files"]
                    return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False, "oid": None} for f in files]})
                if len(parts) == 7 and parts[5] == "commit":
                    repo = f"{parts[3]}/{parts[4]}"
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            value = item["value"]
                            hub.files.setdefault(repo, {})[value["path"]] = base64.b64decode(value["content"])
                    return self._send(200, {"commitUrl": f"{hub.url}/{repo}/commit/{'a' * 40}",
                                            "commitOid": "a" * 40, "success": True})
                return self._send(404, {"error": f"the stand-in does not serve {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
