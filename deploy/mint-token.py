#!/usr/bin/env python3
"""Mints an HS256 JWT for the docker-compose demo (standard library only).

    python3 deploy/mint-token.py deploy/jwt-hmac-secret writer [sub] [hours]

The token carries `roles: [<role>]`, which examples/policies/read_only_role.rego
reads ("reader" reads, "writer" also writes), and expires after `hours` (1).
"""
import base64
import hashlib
import hmac
import json
import sys
import time


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    secret = open(sys.argv[1], "rb").read().rstrip(b"\r\n")
    role = sys.argv[2]
    sub = sys.argv[3] if len(sys.argv) > 3 else "demo"
    hours = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
    now = int(time.time())
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"sub": sub, "roles": [role], "iat": now, "exp": now + int(hours * 3600)}).encode())
    signature = hmac.new(secret, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    print(f"{header}.{claims}.{b64(signature)}")


if __name__ == "__main__":
    main()
