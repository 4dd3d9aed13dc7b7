"""The local container engine for ``docker-compose``: start dockerd when none runs, stop it and undo its changes.

    python PR2_async_inference/container_engine.py start      # dockerd with the host interface's MTU
    python PR2_async_inference/container_engine.py status
    python PR2_async_inference/container_engine.py stop       # only an engine that `start` started

dockerd changes the host's network when it starts: it sets the iptables FORWARD policy to DROP, adds its chains
and NAT rules, turns ``net.ipv4.ip_forward`` on and creates the ``docker0`` bridge; stopping it undoes none of
that. :func:`start_engine` records the state before (iptables rules and policies, ip_forward, the links) in a
state file; :func:`stop_engine` stops dockerd by its pid and then removes exactly what appeared since: the rules
and chains added, the policies changed, ip_forward, ``docker0``. An engine that was already running is never
touched. Container images live in dockerd's own data root (``/var/lib/docker``), outside any clone, so they
outlive the engine. Needs root (dockerd does).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
BRIDGE = "docker0"


def cache_root() -> Path:
    """``${XDG_CACHE_HOME:-$HOME/.cache}/inference-compose``: what the compose tooling keeps outside any clone."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "inference-compose"


def state_file() -> Path:
    return cache_root() / "engine.json"


def engine_running(timeout_s: float = 20.0) -> bool:
    """Whether a Docker engine answers the CLI (``docker info``)."""
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=timeout_s).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def default_route_mtu() -> int:
    """The MTU of the interface that carries the default route: containers' packets leave through it, and a
    bridge MTU above it stalls TLS and large transfers where the path is smaller than Ethernet's 1500."""
    routes = subprocess.run(["ip", "-j", "route", "show", "default"], capture_output=True, text=True, check=True)
    parsed = json.loads(routes.stdout or "[]")
    if not parsed:
        raise RuntimeError("no default route: cannot tell which interface's MTU containers need")
    return int(Path(f"/sys/class/net/{parsed[0]['dev']}/mtu").read_text())


def iptables_snapshot() -> dict[str, dict[str, list[str]]]:
    """``{table: {"chains": [":NAME POLICY ..."], "rules": ["-A ..."]}}`` from ``iptables-save``."""
    text = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    tables: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:], {"chains": [], "rules": []})
        elif current is not None and line.startswith(":"):
            current["chains"].append(line)
        elif current is not None and line.startswith("-A "):
            current["rules"].append(line)
    return tables


def links() -> list[str]:
    return sorted(p.name for p in Path("/sys/class/net").iterdir())


def host_network_state() -> dict[str, Any]:
    return {"iptables": iptables_snapshot(), "ip_forward": IP_FORWARD.read_text().strip(), "links": links()}


def network_fingerprint(state: dict[str, Any]) -> dict[str, Any]:
    """What of :func:`host_network_state` changes the host's behaviour: iptables rules, user chains and built-in
    policies other than ACCEPT (an empty table with ACCEPT policies acts as no table), ip_forward, the links."""
    tables = {}
    for name, table in state["iptables"].items():
        chains = {chain: policy for chain, policy in _chains(table).items() if policy != "ACCEPT"}
        if table["rules"] or chains:
            tables[name] = {"rules": sorted(table["rules"]), "chains": chains}
    return {"iptables": tables, "ip_forward": state["ip_forward"], "links": state["links"]}


def _chains(table: dict[str, list[str]]) -> dict[str, str]:
    """``{chain: policy}`` (``-`` for a user chain)."""
    return {line[1:].split()[0]: line[1:].split()[1] for line in table["chains"]}


def _iptables(*args: str) -> None:
    result = subprocess.run(["iptables", *args], capture_output=True, text=True)
    if result.returncode != 0:
        logger.warning("iptables %s: %s", " ".join(args), result.stderr.strip())


def undo_network_changes(before: dict[str, Any]) -> list[str]:
    """Remove what appeared in the host's network since ``before`` (:func:`host_network_state`): added iptables
    rules and chains, changed built-in policies, ip_forward, new bridges named ``docker0``; returns what it did."""
    done: list[str] = []
    after = iptables_snapshot()
    new_chains: list[tuple[str, str]] = []
    for name, table in after.items():
        old = before["iptables"].get(name, {"chains": [], "rules": []})
        remaining = list(old["rules"])
        for rule in table["rules"]:
            if rule in remaining:  # a rule that was there before stays (compare as a multiset)
                remaining.remove(rule)
                continue
            _iptables("-t", name, "-D", *shlex.split(rule)[1:])
            done.append(f"iptables -t {name} -D {rule[3:]}")
        old_chains, new = _chains(old), _chains(table)
        for chain, policy in new.items():
            if chain not in old_chains and policy == "-":
                new_chains.append((name, chain))
            elif policy != "-" and policy != old_chains.get(chain, "ACCEPT"):
                _iptables("-t", name, "-P", chain, old_chains.get(chain, "ACCEPT"))
                done.append(f"iptables -t {name} -P {chain} {old_chains.get(chain, 'ACCEPT')}")
    for name, chain in new_chains:  # after every rule that jumped to them is gone
        _iptables("-t", name, "-F", chain)
        _iptables("-t", name, "-X", chain)
        done.append(f"iptables -t {name} -X {chain}")
    if IP_FORWARD.read_text().strip() != before["ip_forward"]:
        IP_FORWARD.write_text(before["ip_forward"] + "\n")
        done.append(f"ip_forward={before['ip_forward']}")
    if BRIDGE in links() and BRIDGE not in before["links"]:
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)
        done.append(f"ip link delete {BRIDGE}")
    return done


def read_state() -> dict[str, Any] | None:
    path = state_file()
    return json.loads(path.read_text()) if path.exists() else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()


def start_engine(timeout_s: float = 60.0) -> dict[str, Any] | None:
    """Start dockerd unless an engine already answers; returns the state :func:`stop_engine` needs (None when an
    engine was already running: it is not ours to stop). Raises with the reason when it cannot start."""
    if engine_running():
        logger.info("a Docker engine is already running; it is left as it is")
        return None
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise RuntimeError("no dockerd on PATH: install Debian's docker.io (`apt-get install docker.io`; "
                           ".ci/run does) - the docker CLI alone cannot run containers")
    if shutil.which("docker") is None:
        raise RuntimeError("no docker CLI on PATH: install Debian's docker.io")
    if os.geteuid() != 0:
        raise RuntimeError("dockerd needs root: run as root (or start the engine yourself)")
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    before = host_network_state()
    mtu = default_route_mtu()
    log = root / "dockerd.log"
    with open(log, "ab") as handle:
        # Its own session: a Ctrl-C in the terminal that ran `make compose-up` must not reach the engine.
        popen = subprocess.Popen([dockerd, f"--mtu={mtu}"], stdout=handle, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    state = {"pid": popen.pid, "mtu": mtu, "log": str(log), "started_at": time.time(), "before": before}
    state_file().write_text(json.dumps(state, indent=1))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            undo_network_changes(before)
            state_file().unlink()
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"dockerd exited with {popen.returncode}: {' | '.join(tail)} (log: {log})")
        if engine_running(5.0):
            logger.info("dockerd started (pid %d, --mtu=%d), log %s", popen.pid, mtu, log)
            return state
        time.sleep(0.5)
    stop_engine(state)
    raise RuntimeError(f"dockerd did not answer within {timeout_s:.0f} s (log: {log})")


def stop_engine(state: dict[str, Any] | None = None, timeout_s: float = 60.0) -> list[str]:
    """Stop the dockerd that :func:`start_engine` started (``state``, else the state file's) by its pid, then undo
    its network changes; returns what was undone. Does nothing for an engine it did not start."""
    state = state or read_state()
    if state is None:
        return []
    pid = state["pid"]
    if _pid_alive(pid):
        os.kill(pid, signal.SIGTERM)  # dockerd stops its containers and its containerd first
        deadline = time.monotonic() + timeout_s
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.3)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            time.sleep(1)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it when this process started it
    done = undo_network_changes(state["before"])
    with contextlib.suppress(FileNotFoundError):
        state_file().unlink()
    logger.info("dockerd (pid %d) stopped; %d network changes undone", pid, len(done))
    return done


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Start or stop the local Docker engine for docker-compose.",
                                     add_help=add_help)
    parser.add_argument("command", choices=["start", "stop", "status"],
                        help="start: dockerd unless one runs; stop: the dockerd `start` started, undoing its "
                        "network changes; status: whether an engine answers")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks on errors")
    return parser


def main(args: argparse.Namespace) -> dict[str, Any]:
    if args.command == "status":
        state = read_state()
        info = {"running": engine_running(), "started_here_pid": state["pid"] if state else None}
    elif args.command == "start":
        state = start_engine()
        info = {"started": state is not None, "pid": state["pid"] if state else None}
    else:
        info = {"undone": stop_engine()}
    print(json.dumps(info), flush=True)
    return info


if __name__ == "__main__":
    from modelops.cli import run_cli

    sys.exit(run_cli(main, get_args_parser()))
