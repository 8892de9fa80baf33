"""A local S3-compatible server for development and tests: moto's server on 127.0.0.1.

It checks credentials for real (moto's IAM authentication is on), so wrong keys are refused as
by AWS. It runs in its own process; `stop`/`start` on its standard input close and reopen the
port while keeping the stored objects, which is how tests take storage away mid-job.

    python -m infra.local_s3 --port 9000 --bucket dev

prints shell exports for the endpoint and a generated key pair, then serves until interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import time

# Actions allowed before authentication is enforced: the three IAM calls that create our user.
_SETUP_ACTIONS = 3
_POLICY = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'


def _serve(port: int, buckets: list[str], interactive: bool) -> None:
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = str(_SETUP_ACTIONS)  # read when moto is imported

    # lazy: keeps boto3, moto out of processes that never call this
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    anonymous = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
    iam = boto3.client("iam", **anonymous)
    iam.create_user(UserName="latentmill")
    iam.put_user_policy(UserName="latentmill", PolicyName="all", PolicyDocument=_POLICY)
    key = iam.create_access_key(UserName="latentmill")["AccessKey"]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=key["AccessKeyId"],
        aws_secret_access_key=key["SecretAccessKey"],
    )
    for bucket in buckets:
        s3.create_bucket(Bucket=bucket)
    ready = {"endpoint": endpoint, "key": key["AccessKeyId"], "secret": key["SecretAccessKey"], "buckets": buckets}
    if not interactive:
        print(f"export AWS_ENDPOINT_URL={endpoint}")
        print(f"export AWS_ACCESS_KEY_ID={key['AccessKeyId']}")
        print(f"export AWS_SECRET_ACCESS_KEY={key['SecretAccessKey']}")
        print(f"# buckets: {', '.join(buckets)}; Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            server.stop()
        return
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "stop":
            server.stop()
        elif command == "start":
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
        elif command == "quit":
            break
        print(command, flush=True)
    server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalS3:
    """Handle on a local S3 server process (used by the tests)."""

    def __init__(self, buckets=("latentmill",), port: int | None = None):
        self.port = port or free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "infra.local_s3", "--port", str(self.port), "--interactive", "--bucket", *buckets],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"local S3 server on port {self.port} did not start")
        info = json.loads(line)
        self.endpoint, self.key, self.secret = info["endpoint"], info["key"], info["secret"]

    def _command(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == command

    def stop(self) -> None:
        """Close the port (an outage); stored objects survive."""
        self._command("stop")

    def start(self) -> None:
        self._command("start")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--bucket", nargs="+", default=["latentmill"])
    parser.add_argument("--interactive", action="store_true", help="JSON on stdout, stop/start/quit on stdin (tests)")
    args = parser.parse_args()
    _serve(args.port, args.bucket, args.interactive)


if __name__ == "__main__":
    main()
