"""CI check: the README's command for the example Flask app installs it and serves it.

Runs that exact line of README.rst (read from it, so the two cannot drift apart) with no
REDIS_URL, waits for the URL the app prints, checks a page and the JSON API over HTTP,
then stops the app with SIGTERM and checks it stopped its embedded server.
Usage: ``python examples/flaskapp/check_readme_command.py`` from the repository root.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 600.0  # includes the pip install
URL_LINE = re.compile(r"Serving on (http://127\.0\.0\.1:\d+/)")


def readme_command() -> str:
    lines = [
        line.strip()
        for line in (ROOT / "README.rst").read_text(encoding="utf-8").splitlines()
        if "examples/flaskapp/app.py" in line and line.strip().startswith("python -m pip")
    ]
    if len(lines) != 1:
        sys.exit(f"expected one command line for examples/flaskapp/app.py in README.rst: {lines}")
    return lines[0]


def request(url: str, data: dict[str, object] | None = None) -> tuple[int, str]:
    body = None if data is None else json.dumps(data).encode()
    headers = {} if data is None else {"Content-Type": "application/json"}
    req = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as response:
        return response.status, response.read().decode()


def wait_for_url(lines: queue.Queue[str | None], output: list[str]) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line is None:
            raise RuntimeError("the app exited before serving")
        output.append(line)
        found = URL_LINE.search(line)
        if found:
            return found.group(1)
    raise RuntimeError(f"no 'Serving on' line within {START_TIMEOUT:g} s")


def wait_until_answering(url: str) -> None:
    for _ in range(100):
        try:
            request(url)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} does not answer")


def exercise(url: str) -> None:
    """A page and the JSON API answer, and a write through the API is served back."""
    wait_until_answering(url)
    status, page = request(url)
    assert status == 200 and "<h1>Directory</h1>" in page, page
    email = f"ci-{os.getpid()}@example.com"
    new = {"email": email, "name": "CI", "age": 42, "company": "CI Inc"}
    status, created = request(url + "api/users", new)
    assert status == 201, created
    user = json.loads(created)
    status, listing = request(url + "api/users?min_age=42&max_age=42")
    assert status == 200 and email in [u["email"] for u in json.loads(listing)["items"]], listing
    status, profile = request(url + f"users/{user['id']}")
    assert status == 200 and email in profile and "CI Inc" in profile, profile
    print(f"checked {url}: directory page, POST /api/users, GET /api/users, profile page")


def main() -> None:
    command = readme_command()
    print(f"running: {command}", flush=True)
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.Popen(
        ["bash", "-c", command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: pip, then the app
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    output: list[str] = []
    try:
        exercise(wait_for_url(lines, output))
    except BaseException:
        print("".join(output), end="", file=sys.stderr)
        raise
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    while (line := lines.get(timeout=10)) is not None:
        output.append(line)
    assert any("Stopped the embedded server" in line for line in output), "".join(output)
    print("the app stopped its embedded server on SIGTERM")


if __name__ == "__main__":
    main()
