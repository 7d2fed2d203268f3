"""Summaries (median, min-max of repeats), the JSON file and the markdown table."""

from __future__ import annotations

import statistics
from typing import Any

# workload -> rows of (metric, label, format); "s" seconds, "ms" seconds shown in ms.
ROWS: dict[str, list[tuple[str, str, str]]] = {
    "A": [
        (
            "drain_rate_per_s",
            "A. occurrences/s draining due one-time tasks (first to last start)",
            "n",
        ),
        ("drain_rate_from_spawn_per_s", "A. occurrences/s incl. worker start-up", "n"),
        ("missing", "A. missing", "i"),
        ("duplicates", "A. duplicates", "i"),
        ("worker_rss_peak_mib", "A. peak worker RSS (MiB)", "n"),
    ],
    "B": [
        ("lateness_p50_s", "B. lateness p50", "ms"),
        ("lateness_p99_s", "B. lateness p99", "ms"),
        ("lateness_max_s", "B. lateness max", "ms"),
        ("missing", "B. missing", "i"),
        ("duplicates", "B. duplicates", "i"),
        ("worker_rss_peak_mib", "B. peak worker RSS (MiB)", "n"),
    ],
    "C": [
        ("lateness_p50_s", "lateness p50", "ms"),
        ("lateness_p99_s", "lateness p99", "ms"),
        ("executed", "runs executed", "i"),
        ("expected", "runs expected", "i"),
        ("duplicates", "duplicates", "i"),
        ("worker_cpu_pct", "worker CPU % (of one core)", "n"),
        ("worker_rss_peak_mib", "peak worker RSS (MiB)", "n"),
        ("cmds_per_run", "Redis commands per run (window; by command below)", "n"),
        ("schedule_rate_per_s", "tasks stored per second (scheduling them all)", "n"),
        ("redis_bytes_per_task", "Redis bytes per task (used_memory delta)", "n"),
    ],
    "D": [
        ("cmds_per_occ", "D. Redis commands per occurrence (enqueue + execute)", "n"),
        ("cmds_enqueue_per_occ", "D. … of which enqueue/schedule", "n"),
        ("cmds_worker_per_occ", "D. … of which worker", "n"),
        ("bytes_per_task_keys", "D. Redis bytes per stored task (MEMORY USAGE, all keys)", "n"),
        (
            "bytes_per_task_without_stream",
            "D. … without the bounded event stream (its size is set by MAXLEN, not by tasks)",
            "n",
        ),
        ("bytes_per_task_used_memory", "D. Redis bytes per stored task (used_memory delta)", "n"),
        ("idle_cmds_per_s", "D. idle Redis commands/s, one worker, nothing due", "n"),
        ("worker_rss_peak_mib", "D. peak worker RSS (MiB)", "n"),
    ],
    "E": [
        ("schedule_single_per_s", "E. schedule rate, single awaited calls, /s", "n"),
        ("schedule_bulk_per_s", "E. schedule rate, asyncio.gather chunks of 200, /s", "n"),
        ("schedule_api_per_s", "E. schedule rate, one bulk call (schedule_tasks), /s", "n"),
        ("recovery_s", "E. recovery: worker start → backlog handled", "s"),
        ("recovered", "E. recovery: tasks caught up", "i"),
        ("catch_up_runs_per_task", "E. recovery: catch-up runs per task", "n"),
        ("backlog_scheduled_in_s", "E. recovery: time to schedule the backlog", "s"),
        ("worker_rss_peak_mib", "E. recovery: peak worker RSS (MiB)", "n"),
    ],
    "F": [
        ("executed", "runs executed", "i"),
        ("expected", "runs expected", "i"),
        ("lateness_p99_s", "lateness p99", "ms"),
        ("duplicates", "duplicates", "i"),
        ("worker_cpu_pct", "worker CPU % (sum over workers)", "n"),
        ("worker_rss_peak_mib", "peak RSS of the largest worker (MiB)", "n"),
    ],
}
LABELS = {
    "cml": "cml-jobs",
    "arq": "arq 0.28",
    "aps": "APScheduler 3",
    "cmlpg": "cml-jobs on PostgreSQL",
}
SHORT = {"arq": "arq", "aps": "APScheduler 3", "cmlpg": "PostgreSQL"}  # ratio columns' headers
TOP_COMMANDS = 8  # commands shown per system in the C workloads' by-command tables


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in runs[0] if runs else []:
        values = [r.get(key) for r in runs]
        numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if not numbers:
            continue
        out[key] = {
            "median": statistics.median(numbers),
            "min": min(numbers),
            "max": max(numbers),
            "n": len(numbers),
            "of": len(values),
        }
    return out


def _fmt(value: float, kind: str) -> str:
    if kind == "ms":
        return f"{value * 1000:,.1f} ms" if abs(value) < 10 else f"{value:,.2f} s"
    if kind == "s":
        return f"{value:,.2f} s"
    if kind == "i":
        return f"{value:,.0f}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def _cell(summary: dict[str, Any] | None, kind: str) -> str:
    if not summary:
        return "—"
    text = _fmt(summary["median"], kind)
    if summary["min"] != summary["max"]:
        text += f" [{_fmt(summary['min'], kind)}-{_fmt(summary['max'], kind)}]"
    if summary["n"] < summary["of"]:
        text += f" ({summary['of'] - summary['n']} run(s) without a value)"
    return text


def _ratio(cml: dict[str, Any] | None, other: dict[str, Any] | None) -> str:
    if not cml or not other or not other["median"]:
        return "—"
    return f"{cml['median'] / other['median']:.2f}x"


def _systems(doc: dict[str, Any]) -> list[str]:
    # Older result files have no meta.systems: they hold cml-jobs and arq.
    return list(doc["meta"].get("systems") or ["cml", "arq"])


def _header(doc: dict[str, Any]) -> list[str]:
    meta = doc["meta"]
    versions = f"arq {meta['arq']}"
    if meta.get("apscheduler"):
        versions += f", APScheduler {meta['apscheduler']}"
    return [
        "# cml-jobs benchmarks",
        "",
        f"- command: `{meta['command']}`",
        f"- mode: {meta['mode']}, repeats: {meta['repeats']}, "
        f"started {meta['started']}, took {meta.get('took_s', 0):.0f} s",
        f"- machine: {meta['nproc']} CPUs ({meta['cpu']}), Redis {meta['redis_version']} at "
        f"`{meta['redis_url']}`, Python {meta['python']}, {versions}",
        f"- commit: {meta['commit']}",
        "",
        "Each cell: median of the repeats [min-max]. Ratios = cml-jobs / the other system "
        "(same run); for lateness, CPU, RSS, commands and bytes lower is better, for rates "
        "higher is better. — : no value (the system does not run that workload, or has "
        "nothing to divide by).",
        "",
    ]


def _keys(results: dict[str, Any], workload: str) -> list[str]:
    keys = [k for k in results if k == workload or (k[0] == workload and workload in "CF")]
    if workload == "D" and "A" in results:
        keys = ["A", *keys]  # commands per occurrence are counted on A's drain
    return keys


def _figures(doc: dict[str, Any], systems: list[str]) -> list[str]:
    others = [n for n in systems if n != "cml"] if "cml" in systems else []
    lines = [
        "| figure | "
        + " | ".join(LABELS[n] for n in systems)
        + "".join(f" | cml-jobs/{SHORT[n]}" for n in others)
        + " |",
        "|---" * (1 + len(systems) + len(others)) + "|",
    ]
    results = doc["results"]
    for workload, rows in ROWS.items():
        for key in _keys(results, workload):
            by_system = results[key]
            for metric, label, kind in rows:
                cells = {n: by_system.get(n, {}).get("summary", {}).get(metric) for n in systems}
                if all(c is None for c in cells.values()):
                    continue
                if workload == "D" and key == "A" and not metric.startswith("cmds"):
                    continue
                if workload == "A" and metric.startswith("cmds"):
                    continue
                title = f"{by_system.get('title', key)}: {label}" if workload in "CF" else label
                row = [title, *(_cell(cells[n], kind) for n in systems)]
                row += [_ratio(cells["cml"], cells[n]) for n in others]
                lines.append("| " + " | ".join(row) + " |")
    return lines


def _by_command(doc: dict[str, Any], systems: list[str]) -> list[str]:
    """Per C workload: Redis commands per run, by command (median over the repeats), for
    the union of each system's largest; 0 where a system sent none of a command."""
    lines: list[str] = []
    for key, by_system in doc["results"].items():
        if key[0] != "C":
            continue
        medians: dict[str, dict[str, float]] = {}
        for name in systems:
            runs = by_system.get(name, {}).get("runs", [])
            counts = [
                r["cmds_per_run_by_command"] for r in runs if r.get("cmds_per_run_by_command")
            ]
            if counts:
                every = {c for per_run in counts for c in per_run}
                medians[name] = {
                    c: statistics.median(per_run.get(c, 0.0) for per_run in counts) for c in every
                }
        if not medians:
            continue
        shown: list[str] = []
        for per_command in medians.values():
            largest = sorted(per_command, key=lambda c: -per_command[c])[:TOP_COMMANDS]
            shown += [c for c in largest if c not in shown]
        shown.sort(key=lambda c: -max(m.get(c, 0.0) for m in medians.values()))
        lines += [
            "",
            f"{by_system.get('title', key)}: Redis commands per run, by command (each "
            f"system's {TOP_COMMANDS} largest)",
            "",
            "| command | " + " | ".join(LABELS[n] for n in systems) + " |",
            "|---" * (1 + len(systems)) + "|",
        ]
        for command in shown:
            cells = [
                _fmt(medians[n].get(command, 0.0), "n") if n in medians else "—" for n in systems
            ]
            lines.append(f"| {command} | " + " | ".join(cells) + " |")
    return lines


def markdown(doc: dict[str, Any]) -> str:
    systems = _systems(doc)
    lines = _header(doc)
    if doc["meta"]["mode"] == "quick":
        lines += [
            "**Quick mode: a smoke run with tiny sizes, the systems run concurrently (so "
            "Redis command counts mix them). These figures are not measurements.**",
            "",
        ]
    lines += _figures(doc, systems)
    lines += _by_command(doc, systems)
    lines += ["", "Notes:", ""] + [f"- {note}" for note in doc.get("notes", [])]
    return "\n".join(lines) + "\n"
