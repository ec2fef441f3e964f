"""Shared pieces of the end-to-end benchmarks: child processes, /proc readings, the sandbox
process, the raw crypto floor and Prometheus text parsing.

Imported by the benchmark scripts and by ``e2ekit.py`` (the end-to-end rig they share; all
run as scripts from the repository root, so this folder is on ``sys.path``). Linux only: CPU
time and peak RSS come from ``/proc/<pid>``.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pa_devkit.localinfra.broker_config import free_port

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
STOP_TIMEOUT_S = 30.0
KILL_TIMEOUT_S = 10.0


class BenchError(Exception):
    """The benchmark cannot go on; the message says why."""


# --- /proc ---------------------------------------------------------------------------------


def cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU time of a live process (all its threads), in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state) of proc(5): utime is field 14, stime field 15.
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def main_thread_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process's main thread (the service's event loop)."""
    text = Path(f"/proc/{pid}/task/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (all its threads), in seconds."""
    return sum(cpu_times(pid))


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (its children, theirs, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # it ended meanwhile
            continue
        parent = int(text[text.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found.extend(below)
        todo.extend(below)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid``, of every live process below it, and of the children it
    has already waited for (cutime + cstime): a server that forks, such as PostgreSQL's
    postmaster and its backends. A child that ends between two readings moves from the
    live sum into its parent's cutime, so it is counted once either way."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    # utime, stime, cutime, cstime: fields 14-17 of proc(5), 11-14 here.
    total = sum(int(value) for value in fields[11:15]) / CLOCK_TICKS
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(child)
    return total


def memory_mb(pid: int) -> tuple[float, float]:
    """(peak RSS, current RSS) of a live process in MiB: VmHWM and VmRSS of /proc/pid/status."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            values[name] = int(rest.split()[0]) / 1024
    return values.get("VmHWM", 0.0), values.get("VmRSS", 0.0)


def machine_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat, for a utilisation over a window."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    numbers = [int(value) for value in first[1:]]
    idle = numbers[3] + (numbers[4] if len(numbers) > 4 else 0)  # idle + iowait
    return sum(numbers) - idle, sum(numbers)


def machine_busy_pct(seconds: float) -> float:
    """Share of all CPUs busy over the next ``seconds`` (sleeps that long)."""
    busy0, total0 = machine_busy_ticks()
    time.sleep(seconds)
    busy1, total1 = machine_busy_ticks()
    return 100.0 * (busy1 - busy0) / max(1, total1 - total0)


def self_cpu_seconds() -> float:
    """CPU time of this (the benchmark's) process."""
    return time.process_time()


def filesystem_of(path: Path) -> str:
    """The filesystem type holding ``path`` (from /proc/mounts), e.g. ext4 or tmpfs."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1]
        inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) > len(best):
            best, kind = mount, parts[2]
    return kind


# --- child processes -----------------------------------------------------------------------


@dataclass
class Child:
    """A process this benchmark started, with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; returns the exit code."""
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)  # exactly the pid we started
                try:
                    self.process.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(timeout=KILL_TIMEOUT_S)
            return self.process.returncode
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None


class Children:
    """Every process the benchmark started, so that all of them are stopped on the way out."""

    def __init__(self) -> None:
        self._children: list[Child] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log_path: Path,
    ) -> Child:
        log = log_path.open("ab")
        try:
            process = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C at the terminal reaches only us; we stop it
            )
        except BaseException:
            log.close()
            raise
        child = Child(name, process, log_path, log)
        self._children.append(child)
        return child

    def stop(self, child: Child, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        try:
            return child.stop(timeout_s)
        finally:
            if child in self._children:
                self._children.remove(child)

    def stop_all(self) -> None:
        """Stop the children in reverse start order; never raises."""
        while self._children:
            child = self._children.pop()
            try:
                child.stop()
            except Exception as exc:  # keep stopping the others
                print(f"could not stop {child.name} (pid {child.pid}): {exc}", file=sys.stderr)


def raise_keyboard_interrupt_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt so every ``finally`` (and child cleanup) runs."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


# --- the sandbox process -------------------------------------------------------------------


@dataclass
class Sandbox:
    """``python -m pa_devkit sandbox`` running as a separate process."""

    child: Child
    base_url: str

    def reset(self) -> None:
        httpx.post(f"{self.base_url}/_sandbox/reset", timeout=30).raise_for_status()

    def ledger_count(self) -> int:
        response = httpx.get(f"{self.base_url}/_sandbox/ledger", timeout=120)
        response.raise_for_status()
        return int(response.json()["count"])


def start_sandbox(
    children: Children,
    *,
    keys_dir: Path,
    consumer_key: str,
    latency_ms: float,
    plain_responses: bool,
    workdir: Path,
    python: str = sys.executable,
    ready_timeout_s: float = 60.0,
) -> Sandbox:
    """Start the sandbox (OAuth1 + JWE on) on a free port and wait until it answers."""
    port = free_port()
    argv = [
        python,
        "-m",
        "pa_devkit",
        "sandbox",
        "--port",
        str(port),
        "--keys-dir",
        str(keys_dir),
        "--consumer-key",
        consumer_key,
        "--latency-ms",
        f"{latency_ms:g}",
    ]
    if plain_responses:
        argv.append("--plain-responses")
    child = children.start(
        "sandbox", argv, env=os.environ, cwd=workdir, log_path=workdir / "sandbox.log"
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if not child.alive:
            raise BenchError(f"the sandbox exited early:\n{child.log_tail()}")
        try:
            if httpx.get(f"{base_url}/_sandbox/health", timeout=2).status_code == 200:
                return Sandbox(child, base_url)
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise BenchError(f"the sandbox did not answer within {ready_timeout_s:.0f} s")


# --- the raw crypto floor ------------------------------------------------------------------

BODY_200 = (
    b'{"bankAccountNumber":"5555444433332222000","pointsToAdjust":-250,'
    b'"adjustmentTypeCode":"GOODWILL","adjustmentReason":"Goodwill credit for case 48213,'
    b' late delivery, called","adjustedBy":"agent-004200"}'
)
"""A 200-byte PAS adjustment body."""
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


@dataclass(frozen=True)
class CryptoFloor:
    """Best mean CPU time per operation of the primitives an adjustment cannot avoid (µs)."""

    sign_us: float
    encrypt_us: float
    decrypt_us: float
    verify_us: float
    iterations: int
    repeats: int

    @property
    def request_us(self) -> float:
        """Sign + encrypt: what every request costs."""
        return self.sign_us + self.encrypt_us

    def adjustment_us(self, encrypted_responses: bool) -> float:
        """Per adjustment: the request, plus decrypting the answer when it comes encrypted."""
        return self.request_us + (self.decrypt_us if encrypted_responses else 0.0)

    def server_us(self, encrypted_responses: bool) -> float:
        """What PAS (here: the sandbox) must do per adjustment: verify the signature, decrypt
        the request, and encrypt the answer when answers are encrypted."""
        return self.verify_us + self.decrypt_us + (self.encrypt_us if encrypted_responses else 0)

    def ceiling_per_s(self, encrypted_responses: bool, cores: int) -> float:
        """Adjustments per second ``cores`` could do if they did nothing but both sides'
        crypto: the bound of a box that hosts the client and the sandbox together."""
        both = self.adjustment_us(encrypted_responses) + self.server_us(encrypted_responses)
        return cores * 1e6 / both


def _best_mean_us(fn: Callable[[], object], iterations: int, repeats: int) -> float:
    for _ in range(max(5, iterations // 20)):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.thread_time_ns()
        for _ in range(iterations):
            fn()
        best = min(best, (time.thread_time_ns() - start) / iterations / 1000)
    return best


def measure_crypto_floor(iterations: int, repeats: int, body: bytes = BODY_200) -> CryptoFloor:
    """RSA-2048 PKCS#1 v1.5 SHA-256 sign of a base string (and its verification, the server's
    side); RSA-OAEP-256 wrap of a 32-byte key + AES-256-GCM over ``body``; RSA-OAEP-256 unwrap
    + AES-256-GCM decrypt. CPU time of this thread, ``cryptography`` directly, fresh keys."""
    signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pas_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pas_public = pas_key.public_key()
    base_string = (
        b"POST&https%3A%2F%2Fapi.mastercard.com%2Floyalty%2Fpoints-adjustments&oauth_body_hash%3D"
        + b"x" * 44
        + b"%26oauth_consumer_key%3D"
        + b"k" * 97
        + b"%26oauth_nonce%3Dabcdefghijklmnop%26oauth_signature_method%3DRSA-SHA256"
        + b"%26oauth_timestamp%3D1764100000%26oauth_version%3D1.0"
    )
    aad = b"eyJhbGciOiJSU0EtT0FFUC0yNTYiLCJlbmMiOiJBMjU2R0NNIiwia2lkIjoiMDEyMyJ9"

    def sign() -> bytes:
        return signing_key.sign(base_string, padding.PKCS1v15(), hashes.SHA256())

    def encrypt() -> bytes:
        cek = os.urandom(32)
        pas_public.encrypt(cek, OAEP)
        return AESGCM(cek).encrypt(os.urandom(12), body, aad)

    wrapped = pas_public.encrypt(os.urandom(32), OAEP)
    iv = os.urandom(12)
    sealed = AESGCM(pas_key.decrypt(wrapped, OAEP)).encrypt(iv, body, aad)

    def decrypt() -> bytes:
        return AESGCM(pas_key.decrypt(wrapped, OAEP)).decrypt(iv, sealed, aad)

    signature = sign()
    signing_public = signing_key.public_key()

    def verify() -> None:
        signing_public.verify(signature, base_string, padding.PKCS1v15(), hashes.SHA256())

    return CryptoFloor(
        sign_us=_best_mean_us(sign, iterations, repeats),
        encrypt_us=_best_mean_us(encrypt, iterations, repeats),
        decrypt_us=_best_mean_us(decrypt, iterations, repeats),
        verify_us=_best_mean_us(verify, iterations, repeats),
        iterations=iterations,
        repeats=repeats,
    )


# --- Prometheus text -----------------------------------------------------------------------


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of ``name`` (all label sets) in Prometheus text format."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        if sample == name or sample.startswith(name + "{"):
            total += float(value)
    return total


def histogram_buckets(text: str, name: str, label: str = "") -> dict[float, float]:
    """Cumulative bucket counts of histogram ``name`` (label sets summed, or only those with
    ``label``, e.g. ``operation="claim"``), by upper bound."""
    buckets: dict[float, float] = {}
    prefix = name + "_bucket{"
    for line in text.splitlines():
        if not line.startswith(prefix) or label not in line:
            continue
        sample, _, value = line.rpartition(" ")
        bound = sample.split('le="', 1)[1].split('"', 1)[0]
        le = float("inf") if bound == "+Inf" else float(bound)
        buckets[le] = buckets.get(le, 0.0) + float(value)
    return buckets


def histogram_quantile(
    before: dict[float, float], after: dict[float, float], share: float
) -> float:
    """The ``share`` quantile of what was observed between two scrapes of one histogram,
    interpolated linearly inside its bucket (as Prometheus's histogram_quantile); NaN when
    nothing was, the last finite bound when it falls in the +Inf bucket."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return float("nan")
    rank = share * counts[-1]
    lower, below = 0.0, 0.0
    for bound, cumulative in zip(bounds, counts, strict=True):
        if cumulative >= rank:
            if math.isinf(bound):
                return lower
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, cumulative
    return lower


def window_counts(
    before: dict[float, float], after: dict[float, float]
) -> list[tuple[float, float]]:
    """(upper bound, observations in that bucket alone) of what a histogram observed between
    two scrapes, by bound; the +Inf bucket last."""
    counts: list[tuple[float, float]] = []
    below = 0.0
    for bound in sorted(after):
        cumulative = after[bound] - before.get(bound, 0.0)
        counts.append((bound, cumulative - below))
        below = cumulative
    return counts


def format_window(counts: list[tuple[float, float]]) -> str:
    """``<=50 ms 3, 50-60 ms 120, >30000 ms 1``: the buckets that observed anything."""
    parts: list[str] = []
    lower = 0.0
    for bound, count in counts:
        if count > 0:
            if math.isinf(bound):
                label = f">{lower * 1000:g} ms"
            elif lower == 0:
                label = f"<={bound * 1000:g} ms"
            else:
                label = f"{lower * 1000:g}-{bound * 1000:g} ms"
            parts.append(f"{label} {count:,.0f}")
        lower = bound
    return ", ".join(parts) or "nothing observed"


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile (``share`` in 0..1) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(share * len(ordered))))
    return ordered[rank - 1]
