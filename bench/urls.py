#!/usr/bin/env python3
"""The URLs a procedure printed, right after it returned, as a CI script uses them.

    urls.py URLS_JSON [CA_PEM]

URLS_JSON holds {"urls": [{"url": ...}]} (sandbox's UpResult, or the hand-made procedure's
one NodePort URL). Each URL gets exactly one request at once (a "first request": it fails
unless it answers 200, an https URL over a chain verified against CA_PEM, reached on
127.0.0.1 with its host as SNI and Host); then every URL is requested every 20 ms until all
have answered 200 (30 s at most). Prints "FAILED_FIRST SECONDS": how many first requests
failed, and the time from the start of this script to the last URL's first 200.
"""
import json
import socket
import ssl
import sys
import time
from urllib.parse import urlsplit


def get(url, ca):
    """One GET: the status code, or None when it could not be had."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    path = parts.path or "/"
    try:
        if parts.scheme == "https":
            raw = socket.create_connection(("127.0.0.1", port), timeout=2)
            ctx = ssl.create_default_context(cafile=ca)
            sock = ctx.wrap_socket(raw, server_hostname=parts.hostname)
        else:
            sock = socket.create_connection((parts.hostname, port), timeout=2)
        with sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {parts.hostname}\r\nConnection: close\r\n\r\n".encode())
            head = sock.recv(256).decode("latin-1")
        return int(head.split()[1])
    except (OSError, ValueError, IndexError):
        return None


def main():
    start = time.monotonic()
    with open(sys.argv[1]) as f:
        urls = [u["url"] for u in json.load(f)["urls"]]
    ca = sys.argv[2] if len(sys.argv) > 2 else None
    pending = [u for u in urls if get(u, ca) != 200]
    failed_first = len(pending)
    deadline = start + 30
    while pending and time.monotonic() < deadline:
        time.sleep(0.02)
        pending = [u for u in pending if get(u, ca) != 200]
    if pending:
        print(f"urls.py: still not answering after 30 s: {pending}", file=sys.stderr)
    elapsed = 0.0 if failed_first == 0 else time.monotonic() - start
    print(f"{failed_first} {elapsed:.3f}")


if __name__ == "__main__":
    main()
