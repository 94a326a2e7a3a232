"""The two Hub repos the download tool fetches, as local folders, and a fake Hub serving them."""

from __future__ import annotations

import hashlib
import json
import shutil
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from pusa_core import download
from pusa_core.download import RemoteFile, RemoteRepo
from pusa_core.weights import BASE_REPO_ID, LORA_REPO_ID
from tests.support.weights import make_diffusers, make_lora, tensor_file, text_file

HUB_SHA = "feedc0de" * 5
_JSON = {"Content-Type": "application/json"}


def fake_hub(tmp_path: Path) -> tuple[tuple[RemoteRepo, ...], dict[str, Path]]:
    """Two local folders laid out like the Hub repos, and the manifest the Hub would give for them."""
    base = make_diffusers(tmp_path / "hub" / "base")
    text_file(base / "scheduler" / "scheduler_config.json")
    text_file(base / "README.md", "readme")
    tensor_file(base / "assets" / "demo.safetensors")  # not wanted: only the model components
    lora = tmp_path / "hub" / "lora"
    make_lora(lora / "pusa_v1.pt")
    text_file(lora / "README.md", "other files in the LoRA repo stay behind")
    folders = {BASE_REPO_ID: base, LORA_REPO_ID: lora}
    repos = []
    for repo_id, folder in folders.items():
        files = [
            RemoteFile(p.relative_to(folder).as_posix(), p.stat().st_size)
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        ]
        repos.append(RemoteRepo(repo_id, "0123456789abcdef", download.select_files(repo_id, files)))
    return tuple(repos), folders


def copy_arrived(repos: tuple[RemoteRepo, ...], folders: dict[str, Path], roots: dict[str, Path]) -> None:
    """Put the repos' files where a download to ``roots`` would have put them."""
    for repo in repos:
        for file in repo.files:
            dest = roots[repo.repo_id] / file.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folders[repo.repo_id] / file.path, dest)


class FakeHub:
    """The Hub routes huggingface_hub uses here, served on 127.0.0.1 from local folders: repo info
    (``/api/models/<repo>``), the file tree (``.../tree/<rev>``) and ``/<repo>/resolve/<rev>/<path>``."""

    def __init__(self, folders: dict[str, Path], inflate: int = 1) -> None:
        self.folders, self.inflate, self.requests = folders, inflate, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                hub.answer(self, send_body=True)

            def do_HEAD(self) -> None:  # noqa: N802
                hub.answer(self, send_body=False)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, handler: BaseHTTPRequestHandler, send_body: bool) -> None:
        self.requests.append(f"{handler.command} {handler.path}")
        path, _, query = handler.path.partition("?")
        body, headers = self.route(path, query)
        if body is None:
            handler.send_error(404)
            return
        handler.send_response(200)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            handler.send_header(name, value)
        handler.end_headers()
        if send_body:
            handler.wfile.write(body)

    def route(self, path: str, query: str) -> tuple[bytes | None, dict[str, str]]:
        # The branch "main" is that one commit.
        path = path.replace("/revision/main", "").replace("/tree/main", f"/tree/{HUB_SHA}")
        path = path.replace("/resolve/main/", f"/resolve/{HUB_SHA}/")
        for repo_id, folder in self.folders.items():
            files = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
            if path == f"/api/models/{repo_id}":
                sized = "blobs=true" in query.lower()  # sizes only when asked for, as on the Hub
                siblings = [
                    {"rfilename": name, **({"size": p.stat().st_size * self.inflate} if sized else {})}
                    for name, p in files.items()
                ]
                return json.dumps({"id": repo_id, "sha": HUB_SHA, "siblings": siblings}).encode(), _JSON
            if path == f"/api/models/{repo_id}/tree/{HUB_SHA}":
                tree = [
                    {"type": "file", "path": n, "size": p.stat().st_size, "oid": "0" * 40} for n, p in files.items()
                ]
                return json.dumps(tree).encode(), _JSON
            name = path.removeprefix(f"/{repo_id}/resolve/{HUB_SHA}/")
            if name in files:
                data = files[name].read_bytes()
                return data, {"X-Repo-Commit": HUB_SHA, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        return None, {}
