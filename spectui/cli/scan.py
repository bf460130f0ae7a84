"""`spectui scan`: the analysis as a table, JSON or CSV on stdout, with an optional CI gate."""

from __future__ import annotations

import json
import sys

from spectui.cli.options import count_value, failure_code, scan_from_args, scan_options, stdout_console


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "scan", parents=[scan_options()], help="headless scan: intruder dimensions as a table, JSON or CSV",
        description="Headless scan: intruder dimensions of tuned models against a base.",
    )
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="results as JSON on stdout")
    fmt.add_argument("--csv", action="store_true", help="results as CSV on stdout")
    parser.add_argument("--counts-only", action="store_true",
                        help="only the intruder flags at --k and --eps, certified without the base's singular "
                             "vectors where possible (much faster cold; no spectra or ε curve): for CI gates")
    gate = parser.add_argument_group("CI gate (exit 1 when exceeded, results still printed)")
    gate.add_argument("--fail-over", type=count_value, metavar="N", help="a tuned model has more than N intruders")
    gate.add_argument("--fail-over-matrix", type=count_value, metavar="N",
                      help="a single matrix has more than N intruders")
    gate.add_argument("--fail-if-unchanged", action="store_true",
                      help="a tuned model is identical to the base (the fine-tune changed no matrix)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from spectui.report.gate import gate_failures
    from spectui.report.records import scan_csv, scan_json
    from spectui.report.terminal import scan_tables

    scan = scan_from_args(args)
    if code := failure_code(scan):
        return code
    if args.json:
        json.dump(scan_json(scan, args.k, args.eps), sys.stdout)
        sys.stdout.write("\n")
    elif args.csv:
        sys.stdout.write(scan_csv(scan, args.k, args.eps))
    else:
        out = stdout_console()
        for table in scan_tables(scan, args.k, args.eps):
            out.print(table)
    failures = gate_failures(scan, args.k, args.eps, args.fail_over, args.fail_over_matrix, args.fail_if_unchanged)
    for line in failures:
        print(f"spectui: gate: {line}", file=sys.stderr)
    return 1 if failures else 0
