"""Shard sets read from URLs (megadna.data.remote): a loopback HTTP server and pipe: commands give the
same batches and the same training as the shards on disk; a server that breaks is named, in bounded time."""

from __future__ import annotations

import functools
import http.server
import threading
import time
from pathlib import Path

import pytest

from megadna.data.stream import StreamConfig, WindowStream, make_loader
from megadna.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _ClosesMidShard(_Quiet):
    """Serves the manifest whole, but every shard only half, then closes the connection."""

    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.name.startswith("shard-"):
            return super().do_GET()
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True


class _Stalls(_Quiet):
    def do_GET(self):
        if Path(self.translate_path(self.path)).name.startswith("shard-"):
            time.sleep(20)
        return super().do_GET()


@pytest.fixture
def serve(real_shards):
    """serve(handler) -> the base URL of real_shards behind a loopback HTTP server of that handler."""
    servers = []

    def start(handler=_Quiet) -> str:
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(real_shards)))
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _first_batches(location, n: int = 4, rank: int = 0) -> list[list[bytes]]:
    stream = WindowStream(location, StreamConfig(micro_batch=4, num_workers=1, seed=3), rank=rank, world_size=2)
    it = stream.batches()
    return [next(it)["seqs"] for _ in range(n)]


@pytest.mark.parametrize("rank", [0, 1])
def test_http_and_pipe_give_the_batches_of_the_local_shards(real_shards, serve, rank):
    local = _first_batches(real_shards, rank=rank)
    assert _first_batches(serve(), rank=rank) == local
    assert _first_batches(serve() + "/", rank=rank) == local
    assert _first_batches(f"pipe:cat {real_shards}/{{}}", rank=rank) == local
    assert _first_batches(f"pipe:cat {real_shards}/{{}} -", rank=rank) == local  # the command may end in anything (aws s3 cp ... -)


def test_training_from_a_url_equals_training_from_disk(real_shards, serve, tmp_path, single_rank):
    from megadna.rundir import RunDir
    from megadna.train import TrainConfig, train

    def run(data, name):
        train(TrainConfig(data=str(data), save_dir=str(tmp_path / name), max_steps=3, save_interval=3, num_workers=1, progress=False,
                          eval_interval=0, log_interval=1), str(ROOT / "ds_configs" / "cpu_tiny.json"))
        return [r["loss"] for r in RunDir(tmp_path / name).read_metrics()]

    url = serve()
    assert run(url, "remote") == run(real_shards, "local")
    assert RunDir(tmp_path / "remote").read_config()["train"]["data"] == url


def test_a_server_that_closes_mid_shard_is_named_after_bounded_retries(serve, monkeypatch):
    monkeypatch.setenv("MEGADNA_FETCH_RETRIES", "1")
    url = serve(_ClosesMidShard)
    t0 = time.monotonic()
    with pytest.raises(InputError, match=rf"{url}/train/shard-\d+\.tar\.gz: could not be read after 2 attempt\(s\)") as e:
        _first_batches(url)
    assert "arrived" in str(e.value) or "IncompleteRead" in str(e.value)
    assert time.monotonic() - t0 < 30


def test_a_stalled_server_times_out_and_the_rank_gets_the_error_from_its_loader_worker(serve, monkeypatch):
    monkeypatch.setenv("MEGADNA_FETCH_RETRIES", "0")
    monkeypatch.setenv("MEGADNA_FETCH_TIMEOUT_S", "1")
    url = serve(_Stalls)
    stream = WindowStream(url, StreamConfig(micro_batch=4, num_workers=1), rank=0, world_size=1)
    batches = iter(make_loader(stream))
    t0 = time.monotonic()
    with pytest.raises(InputError, match=rf"{url}/train/shard-\d+\.tar\.gz: could not be read after 1 attempt\(s\) \(timeout 1 s each\)"):
        next(batches)
    batches.close()
    assert time.monotonic() - t0 < 15


def test_manifest_names_never_become_shell_syntax(tmp_path):
    from megadna.data.remote import locate

    assert locate("pipe:cat /d/{}", "train/x;touch pwned") == "pipe:cat /d/'train/x;touch pwned'"
    assert locate("http://h/s", "train/a b#c") == "http://h/s/train/a%20b%23c"


def test_missing_files_and_bad_pipe_forms_are_one_line(serve, tmp_path, monkeypatch):
    monkeypatch.setenv("MEGADNA_FETCH_RETRIES", "0")
    with pytest.raises(InputError, match=r"/nowhere/manifest.json: HTTP 404: no such file on the server"):
        WindowStream(serve() + "/nowhere", StreamConfig())
    with pytest.raises(InputError, match=r"a pipe: location needs \{\} where each file's path goes"):
        WindowStream("pipe:cat /tmp/x", StreamConfig())
    with pytest.raises(InputError, match=r"pipe:cat .*/manifest.json: could not be read after 1 attempt\(s\).*exit 1"):
        WindowStream(f"pipe:cat {tmp_path}/{{}}", StreamConfig())


def test_a_damaged_remote_shard_is_refused_by_its_sha256(real_shards, tmp_path, serve):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(real_shards, copy)
    shard = sorted((copy / "train").glob("shard-*"))[0]
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(copy)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        stream = WindowStream(url, StreamConfig(micro_batch=4, num_workers=1, shuffle=False), rank=0, world_size=1)
        with pytest.raises(InputError, match=rf"{url}/train/{shard.name}: corrupt or truncated: its sha256 differs from the manifest's\. Re-make it where it is stored"):
            list(zip(range(10_000), stream.batches()))
    finally:
        srv.shutdown()
        srv.server_close()
