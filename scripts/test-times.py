#!/usr/bin/env python3
"""Reads `cargo test` output with libtest's JSON events (stdout and stderr merged) on
stdin: passes everything a person should see through, prints each test's result as it
ends and every failure's output, and at the end a table of every test's wall time,
slowest first, with the total. Exits 1 if a test failed.

Tests that reported `SKIPPED <name>: <why>` (osbuild_testing::require) are listed as
skipped rather than ok.

With `--show-output`, passed tests' output comes in their events too: the boot matrix's
lines `matrix: ROW: … in Ns` and the power-cut row's `osbuild vm test` table are printed
after the table, to show which rows to move when balancing the matrix's tests.

Test runs that go on side by side (scripts/test.sh runs the end-to-end binary beside
the rest) each save their stream to a file and show it as it comes with `--live`
(results and output, no table); `--report FILE…` then reads the saved streams, without
passing them through again, and prints the failures and one table for all of them.
"""
import argparse
import json
import re
import sys

RUNNING = re.compile(r"^\s*Running\s.*/deps/([^/]+?)-[0-9a-f]+\)\s*$")
DOCTESTS = re.compile(r"^\s*Doc-tests\s+(\S+)")
SKIPPED = re.compile(r"^SKIPPED (\S+): (.*)$")
ROW = re.compile(r"^matrix: .* in \d+s$")

results = []  # (name, seconds, result)
failures = []  # (name, output)
skipped = {}  # test name -> why
rows = []  # (test name, the boot matrix's timing lines)


def matrix_lines(captured):
    """The row timings and `osbuild vm test` tables in a test's output."""
    lines, table = [], False
    for line in captured.splitlines():
        if line.startswith("matrix: ") and line.endswith("osbuild vm test:"):
            table = True
            lines.append(line)
        elif table:
            table = bool(line.strip()) and not line.startswith("serial console")
            if table:
                lines.append("    " + line)
        elif ROW.match(line):
            lines.append(line)
    return lines


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def read(stream, echo):
    """Collect one stream's results; with `echo`, show it as it comes."""
    say = out if echo else (lambda _line: None)
    binary = "?"
    for raw in stream:
        line = raw.rstrip("\n")
        event = None
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                event = None
        if not isinstance(event, dict) or "type" not in event:
            say(line)
            # "Running tests/e2e.rs (target/debug/deps/e2e-…)", "Doc-tests osbuild_core"
            m = RUNNING.match(line)
            if m:
                binary = m.group(1)
            m = DOCTESTS.match(line)
            if m:
                binary = f"doc:{m.group(1)}"
            m = SKIPPED.match(line.strip())
            if m:
                skipped[(binary, m.group(1))] = m.group(2)
            continue
        kind, ev = event.get("type"), event.get("event")
        if kind == "test" and ev == "timeout":
            # --report-time's warning that a test runs for over 60 s; its result comes later.
            say(f"test {binary} :: {event['name']} has been running for over 60 seconds")
        elif kind == "test" and ev in ("ok", "failed", "ignored"):
            name = f"{binary} :: {event['name']}"
            secs = float(event.get("exec_time", 0.0) or 0.0)
            result = {"ok": "ok", "failed": "FAILED", "ignored": "ignored"}[ev]
            if result == "ok" and (binary, event["name"]) in skipped:
                result = "skipped"
            if ev == "ignored":
                say(f"test {name} ... ignored")
                continue
            results.append((name, secs, result))
            found = matrix_lines(event.get("stdout", "") or "")
            if found:
                rows.append((name, found))
            say(f"test {name} ... {result} ({secs:.2f}s)")
            if ev == "failed":
                captured = event.get("stdout", "")
                failures.append((name, captured))
                say(f"---- {name} output ----\n{captured}")
        elif kind == "suite" and ev in ("ok", "failed"):
            say(
                f"suite {binary}: {ev}. {event.get('passed', 0)} passed; "
                f"{event.get('failed', 0)} failed; {event.get('ignored', 0)} ignored"
                + (f"; {event['exec_time']:.2f}s" if "exec_time" in event else "")
            )


def report():
    """The failures, then every test's time, slowest first."""
    if failures:
        out("\n==== failures ====")
        for name, captured in failures:
            out(f"---- {name} ----\n{captured}")
        out("failed tests:")
        for name, _ in failures:
            out(f"    {name}")

    out("\n==== test times (slowest first) ====")
    width = max([len(n) for n, _, _ in results] + [4])
    out(f"{'test':<{width}}  {'seconds':>9}  result")
    for name, secs, result in sorted(results, key=lambda r: -r[1]):
        out(f"{name:<{width}}  {secs:>9.2f}  {result}")
    total = sum(s for _, s, _ in results)
    counts = {}
    for _, _, r in results:
        counts[r] = counts.get(r, 0) + 1
    summary = ", ".join(f"{n} {r}" for r, n in sorted(counts.items()))
    out(f"{'total':<{width}}  {total:>9.2f}  {len(results)} tests: {summary}")
    for name, found in rows:
        out(f"\n{name}:")
        for line in found:
            out(f"    {line}")
    for (b, n), why in sorted(skipped.items()):
        out(f"skipped {b} :: {n}: {why}")


args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
args.add_argument("--live", action="store_true", help="show stdin as it comes; no table")
args.add_argument("--report", nargs="+", metavar="FILE", help="saved streams to tabulate")
opts = args.parse_args()
if opts.report:
    for path in opts.report:
        with open(path, encoding="utf-8", errors="replace") as f:
            read(f, echo=False)
else:
    read(sys.stdin, echo=True)
if not opts.live:
    report()
sys.exit(1 if failures else 0)
