"""What a sizing proof run shows: the replica count the sizing predicts, the one the autoscaler settled at, the p95
at that count, and the verdict, each number marked measured (here, during the run) or computed (from the sizing).

The settled period is the last third of the load: the Deployment's replicas sampled then give the settled count
(the most frequent value, its range and the share of time at each value), and the requests sent then give the p95.
The verdict: every replica count sampled then is within one of the prediction, and the p95 is within the objective
with every request of the period answered.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

from modelops.cpu import cpu_summary
from modelops.timing import latency_stats

SETTLED_FRACTION = 1 / 3
ROLLING_WINDOW_S = 10.0


def per_replica_rps(sizing: dict[str, Any]) -> float:
    """The requests per second the sizing plans for one replica: its throughput less the headroom."""
    return sizing["samples_per_s"] * (1 - sizing["headroom"])


def predicted_replicas(sizing: dict[str, Any], rate_rps: float) -> int:
    """size_deployment's replica formula at ``rate_rps``: ceil(rate / (throughput x (1 - headroom))), at least 1,
    within the sizing's [minReplicas, maxReplicas] (what the autoscaler may reach)."""
    need = max(1, math.ceil(rate_rps / per_replica_rps(sizing)))
    return max(sizing["min_replicas"], min(sizing["max_replicas"], need))


def settled_window(run: dict[str, Any]) -> tuple[float, float]:
    end = run["load_start_s"] + run["duration_s"]
    return end - run["duration_s"] * SETTLED_FRACTION, end


def spread(values: list[int]) -> dict[str, Any]:
    """Most frequent value (the larger on a tie), min, max and the share of samples at each value."""
    if not values:
        return {"mode": None, "min": None, "max": None, "shares": {}}
    counts = Counter(values)
    mode = max(counts, key=lambda v: (counts[v], v))
    return {"mode": mode, "min": min(values), "max": max(values),
            "shares": {str(v): round(n / len(values), 3) for v, n in sorted(counts.items())}}


def changes(samples: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Every change of ``key`` between consecutive samples: when, from, to."""
    out, last = [], None
    for sample in samples:
        value = sample[key]
        if value is not None and last is not None and value != last:
            out.append({"t_s": sample["t_s"], "from": last, "to": value})
        last = value if value is not None else last
    return out


def rolling_p95(requests: list[dict[str, Any]], start: float, end: float,
                window_s: float = ROLLING_WINDOW_S) -> list[dict[str, Any]]:
    """p95 latency of the succeeded requests sent in the ``window_s`` before each whole second of the load."""
    out = []
    for t in range(math.ceil(start + window_s), math.floor(end) + 1):
        latencies = [r["latency_ms"] for r in requests
                     if r["latency_ms"] is not None and t - window_s < r["scheduled_s"] <= t]
        if latencies:
            out.append({"t_s": t, "p95_ms": latency_stats(latencies)["latency_ms_p95"], "n": len(latencies)})
    return out


def share_within(requests: list[dict[str, Any]], objective_ms: float) -> float:
    """The share of ``requests`` answered within ``objective_ms``. A p95 objective holds when it is 0.95 or more:
    a request with no answer (refused, timed out, a dropped connection) counts as a miss, as in a p95 over every
    request sent."""
    met = sum(1 for r in requests if r["status"] == "succeeded" and r["latency_ms"] <= objective_ms)
    return met / len(requests) if requests else 0.0


def analyse(run: dict[str, Any], sizing: dict[str, Any], *, sizing_dir: Path, model: Path) -> dict[str, Any]:
    """The proof's numbers from a run (``sizing_proof.run_proof``) and the sizing it applied."""
    rate = run["rate_rps"]
    predicted = predicted_replicas(sizing, rate)
    start, end = settled_window(run)
    load = [s for s in run["timeline"] if run["load_start_s"] <= s["t_s"] <= end]
    settled = [s for s in load if s["t_s"] >= start]
    replicas = spread([s["replicas"] for s in settled if s["replicas"] is not None])
    live = spread([s["live_workers"] for s in settled if s["live_workers"] is not None])
    members = spread([s["group_members"] for s in settled if s["group_members"] is not None])
    in_window = [r for r in run["requests"] if start <= r["scheduled_s"] < end]
    ok = [r["latency_ms"] for r in in_window if r["status"] == "succeeded"]
    share_met = share_within(in_window, sizing["p95_ms"])
    everything = [r["latency_ms"] for r in run["requests"] if r["status"] == "succeeded"]
    statuses = Counter(r["status"] for r in run["requests"])
    late = [r["late_ms"] for r in run["requests"] if r["late_ms"] is not None]
    lags = [s["lag"] for s in settled]
    p95 = latency_stats(ok)["latency_ms_p95"] if ok else None
    within_one = replicas["mode"] is not None and all(abs(v - predicted) <= 1 for v in (replicas["min"],
                                                                                          replicas["max"]))
    p95_ok = bool(in_window) and share_met >= 0.95
    return {
        "model": str(model), "sizing_dir": str(sizing_dir), "sized_model": sizing["model"],
        "cpu": cpu_summary(), "broker": run["broker"], "hpa_sync_s": run["hpa_sync_s"],
        "load_average": run.get("load_average"),
        "computed": {
            "rate_rps": rate, "p95_objective_ms": sizing["p95_ms"],
            "per_replica_samples_per_s": sizing["samples_per_s"], "headroom": sizing["headroom"],
            "per_replica_rps": round(per_replica_rps(sizing), 3), "predicted_replicas": predicted,
            "sizing_replicas_peak": sizing["replicas_peak"], "min_replicas": run["min_replicas"],
            "max_replicas": run["max_replicas"], "lag_threshold": run["lag_threshold"],
            "batch_size": sizing["batch_size"], "threads": sizing.get("cpu"), "source": sizing["source"],
        },
        "measured": {
            "duration_s": run["duration_s"], "settled_window_s": [round(start, 1), round(end, 1)],
            "requests_sent": len(run["requests"]), "statuses": dict(statuses),
            "all_answered": statuses.get("succeeded", 0) == len(run["requests"]),
            "replicas_settled": replicas, "live_workers_settled": live,
            "group_members_settled": members,
            "replica_changes": changes(load, "replicas"), "hpa_desired_changes": changes(load, "hpa_desired"),
            "lag_settled_mean": round(sum(lags) / len(lags), 1) if lags else None,
            "lag_settled_max": max(lags) if lags else None,
            "requests_settled": len(in_window), "succeeded_settled": len(ok),
            "served_rps_settled": round(len(ok) / (end - start), 2),
            "latency_ms_p50_settled": latency_stats(ok)["latency_ms_p50"] if ok else None,
            "latency_ms_p95_settled": p95, "share_within_objective_settled": round(share_met, 4),
            "latency_ms_p99_settled": latency_stats(ok)["latency_ms_p99"] if ok else None,
            "latency_ms_p95_all": latency_stats(everything)["latency_ms_p95"] if everything else None,
            "latency_ms_max_all": max(everything) if everything else None,
            "sender_late_ms_p99": latency_stats(late)["latency_ms_p99"] if late else None,
            "sender_late_ms_max": round(max(late), 1) if late else None,
            "reconciler_events": len(run["reconciler_events"]),
        },
        "verdict": {"replicas_within_one_of_predicted": within_one, "p95_within_objective": p95_ok,
                    "passed": within_one and p95_ok},
        "settings": {k: run[k] for k in ("namespace", "worker_cap", "scale_down_window_s", "scale_up")},
        "rolling_p95": rolling_p95(run["requests"], run["load_start_s"], end),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _shares(spread_: dict[str, Any]) -> str:
    return ", ".join(f"{value}: {share:.0%}" for value, share in spread_["shares"].items()) or "-"


def markdown(result: dict[str, Any]) -> str:
    c, m, v = result["computed"], result["measured"], result["verdict"]
    rep, live, members = m["replicas_settled"], m["live_workers_settled"], m["group_members_settled"]
    start, end = m["settled_window_s"]
    lines = [
        f"# Sizing proof: {result['sized_model']} at {c['rate_rps']:g} requests/s",
        "",
        f"CPU: {result['cpu']}. Broker: {result['broker']}. HPA sync period {result['hpa_sync_s']} s, scale-down "
        f"window {result['settings']['scale_down_window_s']} s. Load average (1 min) before / after: "
        f"{result['load_average']}.",
        "",
        "| number | value | where it comes from |",
        "|---|---|---|",
        f"| throughput per replica | {c['per_replica_samples_per_s']:.1f} samples/s at batch {c['batch_size']}, "
        f"{c['threads'] or '?'} thread(s) | measured by PR4 beforehand, one model alone in-process "
        f"({c['source']}); read from sizing.json |",
        f"| planned requests/s per replica | {c['per_replica_rps']:.1f} | computed: throughput x (1 - headroom "
        f"{c['headroom']:g}) |",
        f"| predicted replicas at {c['rate_rps']:g}/s | **{c['predicted_replicas']}** | computed: ceil(rate / "
        f"planned per replica), within [min {c['min_replicas']}, max {c['max_replicas']}] (the sizing's peak "
        f"needs {c['sizing_replicas_peak']}) |",
        f"| lagThreshold | {c['lag_threshold']} | computed by the sizing, applied in the ScaledObject |",
        f"| Deployment replicas, t = {start:g}-{end:g} s | **{rep['mode']}** (range {rep['min']}-{rep['max']}; "
        f"share of samples {_shares(rep)}) | measured: spec.replicas read once a second |",
        f"| live worker processes then | {live['mode']} (range {live['min']}-{live['max']}) | measured: processes "
        "the reconciler runs for those replicas |",
        f"| consumer group members then | {members['mode']} (range {members['min']}-{members['max']}) | measured: "
        "the broker's view of the group, when stable |",
        f"| replica changes during the load | {len(m['replica_changes'])}"
        + "".join(f"{', ' if i else ': '}{x['from']}->{x['to']} at {x['t_s']:g} s"
                  for i, x in enumerate(m["replica_changes"][:12]))
        + " | measured |",
        f"| consumer lag then | mean {m['lag_settled_mean']}, max {m['lag_settled_max']} | measured from the broker |",
        f"| p95 of the {m['requests_settled']} requests sent then | **{_ms(m['latency_ms_p95_settled'])} ms** "
        f"(p50 {_ms(m['latency_ms_p50_settled'])}, p99 {_ms(m['latency_ms_p99_settled'])}) vs objective "
        f"{c['p95_objective_ms']:g} ms | measured: POST start -> final state in hand, answered requests |",
        f"| sent then and answered within {c['p95_objective_ms']:g} ms | "
        f"**{100 * m['share_within_objective_settled']:.2f}%** (the objective holds at 95% or more) | measured: a "
        "request not answered counts as a miss |",
        f"| served then | {m['served_rps_settled']} requests/s | measured |",
        f"| requests sent / answered | {m['requests_sent']} / {m['statuses']} | measured |",
        f"| whole load: p95, max | {_ms(m['latency_ms_p95_all'])} ms, {_ms(m['latency_ms_max_all'])} ms | "
        "measured |",
        f"| sender lateness p99 / max | {_ms(m['sender_late_ms_p99'])} / {_ms(m['sender_late_ms_max'])} ms | "
        "measured: POST "
        "start after its scheduled time |",
        "",
        f"Verdict: replicas within one of the prediction: **{v['replicas_within_one_of_predicted']}**; p95 within "
        f"the objective: **{v['p95_within_objective']}**.",
        "",
        "Every process (API, Apache Kafka, the workers, the control plane, this sender) shares this machine's "
        "cores, so N workers do not serve N times what one worker serves alone: the predicted count is computed "
        "from PR4's measurement of one model alone, while the replicas, the workers and the latencies are what "
        "happened here at this rate.",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], run: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [s for s in run["timeline"] if s["t_s"] >= run["load_start_s"] - 5]
    t = [s["t_s"] for s in rows]
    start, end = result["measured"]["settled_window_s"]
    fig, (rep_ax, lag_ax, lat_ax) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    rep_ax.step(t, [s["replicas"] for s in rows], where="post", linewidth=2, label="Deployment spec.replicas")
    rep_ax.step(t, [s["hpa_desired"] for s in rows], where="post", linestyle="--", label="HPA desiredReplicas")
    rep_ax.step(t, [s["live_workers"] for s in rows], where="post", alpha=0.7, label="live worker processes")
    rep_ax.plot(t, [s["group_members"] for s in rows], ".", markersize=4, label="consumer group members")
    rep_ax.axhline(result["computed"]["predicted_replicas"], color="grey", linestyle=":", label="predicted")
    rep_ax.set_ylabel("replicas")
    lag_ax.plot(t, [s["lag"] for s in rows], label="consumer lag (broker)")
    lag_ax.axhline(run["lag_threshold"], color="grey", linestyle=":", label="lagThreshold")
    lag_ax.set_ylabel("requests")
    rolling = result["rolling_p95"]
    lat_ax.plot([r["t_s"] for r in rolling], [r["p95_ms"] for r in rolling],
                label=f"p95 of requests sent in the last {ROLLING_WINDOW_S:g} s")
    lat_ax.axhline(result["computed"]["p95_objective_ms"], color="red", linestyle=":", label="objective")
    lat_ax.set_ylabel("ms")
    lat_ax.set_xlabel("seconds since the sized objects were applied")
    for ax in (rep_ax, lag_ax, lat_ax):
        ax.axvspan(start, end, color="green", alpha=0.08)
        ax.legend(loc="upper left", fontsize="small")
    fig.suptitle(f"{result['computed']['rate_rps']:g} requests/s; settled period shaded")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_outputs(result: dict[str, Any], run: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """proof.json (the result, the timeline, the reconciler's events), proof.md, proof.png, requests.csv and
    timeline.csv."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "proof.json", "md": out_dir / "proof.md", "png": out_dir / "proof.png",
             "requests": out_dir / "requests.csv", "timeline": out_dir / "timeline.csv"}
    paths["json"].write_text(json.dumps({**result, "timeline": run["timeline"],
                                         "reconciler_events": run["reconciler_events"]}, indent=1))
    paths["md"].write_text(markdown(result))
    plot(result, run, paths["png"])
    for name in ("requests", "timeline"):
        table = run[name]
        with open(paths[name], "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(table[0]))
            writer.writeheader()
            writer.writerows(table)
    return paths


def load_average() -> float:
    return round(os.getloadavg()[0], 2)
