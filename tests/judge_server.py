"""A real OpenAI-compatible judge server for tests: `transformers serve` on a loopback port with a tiny
local model trained for a few dozen steps to answer every judge question with
`[[A]] Rating: [[7]]` (a real judge for the plumbing's purposes: always position A, rating 7),
and a fault-injecting loopback proxy in front of it (429s, slow answers)."""

from __future__ import annotations

import copy
import http.server
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ANSWER = "[[A]]\nRating: [[7]]"
# Whole pieces of the answer as tokens of their own, so a tiny model learns the answer as a chain of
# unambiguous next tokens in a few dozen steps (split into characters, "[" "[" needs counting).
ANSWER_TOKENS = ["<|assistant|>", "[[A]]", "Rating:", "[[7]]"]
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")  # fmt: skip


def train_judge_model(tokenizer, corpus, folder: Path, steps: int = 60) -> Path:
    """Save a tiny GPT-2 that answers `ANSWER` after any judge prompt (loss on the answer only)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from ft_callbacks.judge.prompts import pairwise_messages, pointwise_messages

    tokenizer = copy.deepcopy(tokenizer)  # the session's tokenizer keeps no chat template
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.add_tokens(ANSWER_TOKENS)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=48, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    model = GPT2LMHeadModel(config)
    rng = random.Random(0)
    examples = []
    answer_ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    for i in range(24):
        a, b, c = (t[: rng.randint(20, 120)] for t in rng.sample(corpus[:300], 3))
        messages = pairwise_messages(a, b, c, a if i % 3 else None) if i % 2 else pointwise_messages(a, b, c, ("tone",))
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        examples.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        ids, labels = examples[step % len(examples)]
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class Server:
    """`transformers serve MODEL_DIR --device cpu` on 127.0.0.1:port; `requests()` counts the chat
    completions it answered, from uvicorn's access log (one line per request)."""

    def __init__(self, model_dir: Path, port: int, log: Path) -> None:
        self.model_dir, self.port, self.log_path = model_dir, port, log
        self.url = f"http://127.0.0.1:{port}/v1"
        exe = Path(sys.executable).with_name("transformers")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        self._log = open(log, "w")
        self.process = subprocess.Popen(
            [str(exe), "serve", str(model_dir), "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "info"], stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"transformers serve not up after {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def requests(self) -> int:
        text = self.log_path.read_text(errors="replace")
        return len(re.findall(r'"POST /v1/chat/completions HTTP/1\.1" \d+', text))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        self._log.close()


class FaultProxy:
    """A loopback HTTP proxy to `target` that answers the first `fail` requests with 429 and makes the
    next `slow` requests wait `delay` seconds before forwarding (a client timeout), then forwards."""

    def __init__(self, target_port: int, fail: int = 0, slow: int = 0, delay: float = 5.0) -> None:
        self.fail, self.slow, self.delay = fail, slow, delay
        self.seen = 0
        lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    proxy.seen += 1
                    n = proxy.seen
                if n <= proxy.fail:
                    payload = b'{"error": {"message": "rate limited", "type": "rate_limit"}}'
                    self.send_response(429)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if n <= proxy.fail + proxy.slow:
                    time.sleep(proxy.delay)
                request = urllib.request.Request(f"http://127.0.0.1:{target_port}{self.path}", data=body,
                                                 headers={"Content-Type": "application/json"}, method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=120) as response:
                        status, payload = response.status, response.read()
                except urllib.error.HTTPError as exc:
                    status, payload = exc.code, exc.read()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up (its timeout)
                    pass

        class Joined(http.server.ThreadingHTTPServer):
            daemon_threads = False  # stop() waits for requests still being forwarded (they count at the server)

        self.server = Joined(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
