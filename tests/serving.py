"""Helpers for the chat / serve / playground tests: tiny adapters trained once per session, a real server."""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from conftest import ROOT, SAMPLE

QUESTION = "说出一种水果。"


def trained_adapters(tiny_models, tmp_path_factory, methods=("lora", "ia3", "prompt")) -> dict:
    """{method: adapter dir} on the tiny Llama, 5 steps each at a high learning rate (so each answers unlike
    the base). Trained once per session, whichever test file asks first."""
    from llm_tuning.config import TrainConfig
    from llm_tuning.train import train

    root = tmp_path_factory.getbasetemp() / "serving-adapters"
    out = {}
    for m in methods:
        folder = root / m
        if not (folder / "llm_tuning.json").exists():
            train(TrainConfig(model=tiny_models["llama"], data=SAMPLE, method=m, output_dir=str(folder),
                              max_steps=5, batch_size=2, max_length=64, save_steps=100, num_virtual_tokens=4,
                              lr=5e-2 if m in ("lora", "ia3") else None, overwrite=True))
        out[m] = str(folder)
    return out


def alone(model_path, adapter, instruction=QUESTION, max_new_tokens=12) -> str:
    """The greedy answer of `adapter` loaded by itself (llm_tuning.infer), the reference for the server."""
    from llm_tuning.infer import generate, load_for_inference
    from llm_tuning.infer.sampling import Sampling

    model, tok, _ = load_for_inference(model_path, adapter)
    return generate(model, tok, [{"instruction": instruction, "input": ""}], sampling=Sampling(max_new_tokens))[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`llm-tuning serve` in a subprocess on a free loopback port, up until the `with` block ends."""

    def __init__(self, *args, api_key=None):
        self.port = free_port()
        self.api_key = api_key
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "llm_tuning", "serve", "--port", str(self.port), *args]
        if api_key:
            cmd += ["--api-key", api_key]
        self.cmd = cmd

    def __enter__(self):
        env = dict(os.environ, OMP_NUM_THREADS="1")  # a gentler neighbour on a shared CPU
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 240
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log.read()[-3000:]}")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).read()
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        self.__exit__()
        raise RuntimeError("the server did not come up in 240 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()

    def output(self) -> str:
        """What the server has written to stdout and stderr so far (read without moving the file's offset,
        which the server process shares)."""
        fd = self.log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def client(self):
        from openai import OpenAI

        return OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "unused", max_retries=0, timeout=120)

    def http(self, method, path, body=None, key="default", raw: bytes | None = None, headers: dict | None = None):
        """(status, parsed JSON) of a plain HTTP request; key None: no Authorization header."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        key = self.api_key if key == "default" else key
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                status, text = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read()
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text.decode(errors="replace")
