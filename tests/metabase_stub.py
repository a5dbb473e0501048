"""A local stand-in for the few Metabase API calls the provisioning script makes.

Metabase's server cannot run here (it is a JVM application shipped as a Docker
image), so this is the one stub in the test suite. It keeps its state in
memory, checks the session header like Metabase does, and records every
request so tests can look at what the script sent.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class MetabaseStub:
    def __init__(self) -> None:
        self.setup_token = "setup-token-123"
        self.admin: dict | None = None
        self.sessions: set[str] = set()
        self.databases: dict[int, dict] = {}
        self.collections: dict[int, dict] = {}
        self.cards: dict[int, dict] = {}
        self.dashboards: dict[int, dict] = {}
        self.requests: list[tuple[str, str, dict | None]] = []
        self._ids = itertools.count(1)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()

    # ------------------------------------------------------------------ routes

    def route(self, method: str, path: str, body: dict | None, session: str | None):
        self.requests.append((method, path, body))
        if (method, path) == ("GET", "/api/health"):
            return 200, {"status": "ok"}
        if (method, path) == ("GET", "/api/session/properties"):
            return 200, {"setup-token": None if self.admin else self.setup_token,
                         "has-user-setup": self.admin is not None}
        if (method, path) == ("POST", "/api/setup"):
            if self.admin or body.get("token") != self.setup_token:
                return 403, {"message": "invalid setup token"}
            self.admin = body["user"]
            return 200, {"id": self._session()}
        if (method, path) == ("POST", "/api/session"):
            if not self.admin or (body["username"], body["password"]) != (
                    self.admin["email"], self.admin["password"]):
                return 401, {"errors": {"password": "did not match stored password"}}
            return 200, {"id": self._session()}
        if session not in self.sessions:
            return 401, "Unauthenticated"

        item = re.fullmatch(r"/api/(database|collection|card|dashboard)/(\d+)(/items)?", path)
        if item:
            kind, ident, items = item.group(1), int(item.group(2)), item.group(3)
            store = self._store(kind)
            if ident not in store:
                return 404, "Not found."
            if items:
                return 200, {"data": [
                    {"id": i, "model": "card", "name": c["name"]}
                    for i, c in self.cards.items() if c["collection_id"] == ident] + [
                    {"id": i, "model": "dashboard", "name": d["name"]}
                    for i, d in self.dashboards.items() if d["collection_id"] == ident]}
            if method == "GET":
                return 200, store[ident]
            if method == "PUT":
                if kind == "dashboard" and "dashcards" in body:
                    body = {**body, "dashcards": [
                        {**c, "id": next(self._ids)} for c in body["dashcards"]]}
                store[ident].update(body)
                return 200, store[ident]
        listing = re.fullmatch(r"/api/(database|collection|card|dashboard)", path)
        if listing:
            kind = listing.group(1)
            store = self._store(kind)
            if method == "GET":
                values = list(store.values())
                return 200, {"data": values} if kind == "database" else values
            if method == "POST":
                ident = next(self._ids)
                store[ident] = {"id": ident, **body}
                if kind == "dashboard":
                    store[ident]["dashcards"] = []
                return 200, store[ident]
        return 404, f"no route {method} {path}"

    def _store(self, kind: str) -> dict:
        return {"database": self.databases, "collection": self.collections,
                "card": self.cards, "dashboard": self.dashboards}[kind]

    def _session(self) -> str:
        session = f"session-{next(self._ids)}"
        self.sessions.add(session)
        return session

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                status, answer = stub.route(method, self.path.split("?")[0], body,
                                            self.headers.get("X-Metabase-Session"))
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

            def log_message(self, *args) -> None:
                pass

        return Handler
