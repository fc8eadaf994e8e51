"""What mutual TLS to etcd costs the control plane's Store (control/store/etcd.py):
two one-member etcds side by side, one in plain text, one with the Ansible
unit's TLS flags (https, --client-cert-auth, certificates of control/pki.py's
etcd CA), each given the same calls in alternating rounds:

- `get`: Store.get of one key; `put`: Store.put (a write); each on one
  open Store (its channel connected once), ROUNDS x CALLS of each;
- `connect`: a new Store and its first get (connect + TLS handshake + call).

Prints JSON: median and p95 in milliseconds. Starts its own etcds (free ports,
a temporary directory); takes about ten seconds.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from control import pki  # noqa: E402
from control.store.etcd import EtcdTls, Store  # noqa: E402
from localcloud.processes import free_port, wait_until  # noqa: E402

CALLS = 200
ROUNDS = 3
CONNECTS = 30


def start_etcd(root: Path, tls: bool) -> tuple[subprocess.Popen, str]:
    name = "tls" if tls else "plain"
    scheme = "https" if tls else "http"
    client, peer = free_port(), free_port()
    command = ["etcd", "--name", name, "--data-dir", str(root / name),
               "--listen-client-urls", f"{scheme}://127.0.0.1:{client}",
               "--advertise-client-urls", f"{scheme}://127.0.0.1:{client}",
               "--listen-peer-urls", f"{scheme}://127.0.0.1:{peer}",
               "--initial-advertise-peer-urls", f"{scheme}://127.0.0.1:{peer}",
               "--initial-cluster", f"{name}={scheme}://127.0.0.1:{peer}",
               "--logger", "zap", "--log-level", "warn"]
    if tls:
        ca, member = pki.etcd_ca_paths(root).cert, pki.etcd_member_paths(root, "tls")
        for prefix in ("", "peer-"):
            command += [f"--{prefix}client-cert-auth", f"--{prefix}trusted-ca-file", str(ca),
                        f"--{prefix}cert-file", str(member.cert),
                        f"--{prefix}key-file", str(member.key)]
    with open(root / f"{name}.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"{scheme}://127.0.0.1:{client}"


def ms(values: list[float]) -> dict:
    values = sorted(values)
    return {"median_ms": round(statistics.median(values) * 1000, 3),
            "p95_ms": round(values[int(len(values) * 0.95) - 1] * 1000, 3), "n": len(values)}


def timed(call: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def first_call(endpoint: str, tls: EtcdTls | None) -> None:
    store = Store([endpoint], timeout_s=5, tls=tls)
    store.get("/bench/key")
    store.close()


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-etcd-tls-"))
    pki.issue_etcd_member(root, "tls", ips=["127.0.0.1"])
    client = pki.issue_etcd_client(root)
    tls = EtcdTls(str(pki.etcd_ca_paths(root).cert), str(client.cert), str(client.key))
    procs = []
    try:
        stores: dict[str, tuple[Store, str, EtcdTls | None]] = {}
        for kind, settings in (("plaintext", None), ("mtls", tls)):
            proc, endpoint = start_etcd(root, settings is not None)
            procs.append(proc)
            store = Store([endpoint], timeout_s=5, tls=settings)
            wait_until(lambda s=store: s.revision() > 0, 15, f"etcd ({kind})")
            store.put("/bench/key", {"n": 0})
            stores[kind] = (store, endpoint, settings)
        samples: dict[str, dict[str, list[float]]] = {k: {"get": [], "put": [], "connect": []}
                                                      for k in stores}
        for _ in range(ROUNDS):
            for kind, (store, endpoint, settings) in stores.items():
                samples[kind]["get"] += timed(lambda s=store: s.get("/bench/key"), CALLS)
                samples[kind]["put"] += timed(lambda s=store: s.put("/bench/key", {"n": 1}), CALLS)
                samples[kind]["connect"] += timed(
                    lambda e=endpoint, t=settings: first_call(e, t), CONNECTS // ROUNDS)
        for store, _, _ in stores.values():
            store.close()
        print(json.dumps({kind: {what: ms(v) for what, v in s.items()}
                          for kind, s in samples.items()}, indent=2))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
