"""A stand-in for the `vllm` executable, for CPU tests of `engine: vllm` (a test double, not vLLM).

`vllm serve <model> --host H --port P ...` appends what it was started with (arguments, pid, process group,
the environment keys vLLM reads) as a JSON line to $FAKE_VLLM_RECORD, starts a child process in its group (as
vLLM starts its engine core), logs a few lines, and serves vLLM-shaped answers (benchmarks/stub_upstream.py's
chat completions, legacy completions and /tokenize) on H:P, requiring `Authorization: Bearer $VLLM_API_KEY`
when that is set, as vLLM does. $FAKE_VLLM_MODE picks a failure instead: `crash` exits at once with an
error, `hang` never listens and ignores SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from stub_upstream import build_app


def main() -> None:
    """Parse `serve MODEL --host H --port P ...`, record it, then serve (or fail as $FAKE_VLLM_MODE says)."""
    args = sys.argv[1:]
    assert args[0] == "serve", args
    host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(os.environ["FAKE_VLLM_RECORD"], "a") as record:
        record.write(json.dumps({"argv": args, "pid": os.getpid(), "pgid": os.getpgid(0), "child": child.pid,
                                 "dev_mode": os.environ.get("VLLM_SERVER_DEV_MODE"),
                                 "api_key": "VLLM_API_KEY" in os.environ}) + "\n")
    print(f"INFO vLLM API server version 0.0.0-fake, model {args[1]}", flush=True)
    mode = os.environ.get("FAKE_VLLM_MODE", "ok")
    if mode == "crash":
        print("ERROR ValueError: the model's max_model_len is too large", flush=True)
        child.kill()
        sys.exit(1)
    if mode == "hang":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(600)
    app = build_app(tool_calls=1)
    key = os.environ.get("VLLM_API_KEY")

    @web.middleware
    async def authenticate(request: web.Request, handler):
        if key and request.path != "/health" and request.headers.get("authorization") != f"Bearer {key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)

    app.middlewares.append(authenticate)
    print(f"INFO Started server process on http://{host}:{port}", flush=True)
    web.run_app(app, host=host, port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
