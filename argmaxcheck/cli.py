"""Command line: a thin layer over :func:`argmaxcheck.audit`.

Exit codes (also in ``--help``): 0 the gate passed (by default: every
audited token is argmaxable); 1 the gate failed (some token unargmaxable,
practically unreachable or undecided beyond the --fail-on thresholds, not
ignored, not already in the --baseline); 2 bad input or usage (one line on
stderr, nothing written); 3 an internal error, a bug (one line; the
traceback with --debug); 130 interrupted (SIGINT), 143 terminated (SIGTERM)
while writing reports. ``diff``: 0 no token lost
reachability, 1 some token did, 2 bad input. Output targets are checked before the audit and
written by :mod:`argmaxcheck.outputs`.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path

from . import __version__
from ._text import one_line, printable
from .domains import Ball, Box, Unbounded
from .engine import AuditOptions, ExactOptions, audit, explain_token, render_explanation
from .errors import InputError
from .exit_codes import EXIT_CODES, EXIT_FOUND, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_SIGNAL_BASE, EXIT_USAGE
from .inputside import attach_input_side
from .outputs import Terminated, encode_for_stdout, plan_outputs, write_stdout
from .report import ARGMAXABLE
from .report.diff import diff_reports
from .report.escape import json_text
from .report.formats import FORMATS
from .report.formats.diff import render_json as render_diff_json
from .report.formats.diff import render_text as render_diff_text
from .report.gate import Baseline, GatePolicy, evaluate, parse_fail_on
from .selection import select
from .sources import SourceRequest, load_source

REPORT_FILES = ("json", "html", "markdown", "junit")

EPILOG = EXIT_CODES + """
examples:
  argmaxcheck audit data/ppocrv4_rec_head.npz --html report.html --json report.json
  argmaxcheck diff HuggingFaceTB/SmolLM2-135M-Instruct SmolLM2-135M-Instruct.Q4_1.gguf
"""


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line (it already uses 2; this keeps the message short)."""

    def error(self, message):
        sys.stderr.write(f"argmaxcheck: error: {printable(message)}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="argmaxcheck", description="Prove which softmax outputs can ever be the argmax.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"argmaxcheck {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an internal error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    a = sub.add_parser("audit", help="audit every row of an output layer", epilog=EXIT_CODES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_source_arguments(a)
    o = a.add_argument_group("output")
    o.add_argument("--tokens", action="append", default=None, metavar="LIST",
                   help="audit only these rows: ids and ranges (0,5,10-20; digits are always row ids),"
                        " name:TEXT (a token's stored text; takes the rest of the argument, commas included),"
                        " re:REGEX, kind:KIND (control, user-defined, unused, byte, added, special, padding);"
                        " may be repeated")
    o.add_argument("--format", choices=list(FORMATS), default="table",
                   help="what to print (or write to --output): table (rich terminal report), text, json,"
                        " markdown, html, github (workflow annotations) or junit (XML)")
    o.add_argument("--output", default=None, metavar="FILE",
                   help="write the --format report here instead of stdout ('-': stdout). Every report file is"
                        " checked before the audit (never an input, a folder or a read-only file) and replaced"
                        " atomically; devices and pipes such as /dev/null are written in place")
    for fmt in REPORT_FILES:
        o.add_argument(f"--{fmt}", default=None, metavar="FILE", dest=f"{fmt}_file",
                       help=f"also write the {fmt} report to FILE")
    o.add_argument("--no-max-probability", action="store_true",
                   help="skip bounding the highest probability of unreachable tokens (bounded domains)")
    o.add_argument("--save-certificates", default=None, metavar="FILE.npz",
                   help="write every witness and certificate (layout in the README)")
    o.add_argument("--exact-all", action="store_true", help="run the exact step for every token (slow)")
    o.add_argument("--device", choices=["auto", "cpu", "cuda", "torch-cpu"], default="auto",
                   help="where the heavy products run (the screen, its guesses, the batched phase's search): auto"
                        " (a CUDA GPU through torch when there is one, else numpy), cpu (numpy), cuda, or torch-cpu;"
                        " float32 products stay exact IEEE, and certificates are checked on the CPU")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    c = a.add_argument_group("gate (exit status 1 when it fails)")
    c.add_argument("--fail-on", action="append", default=[], metavar="CATEGORY=N",
                   help="fail when more than N tokens are in CATEGORY (unargmaxable, practically_unreachable,"
                        " undecided; not_round_trip: tokens the tokenizer does not give back from their own text,"
                        " counted only when named); N may be 'never'. Default: 0 for each verdict")
    c.add_argument("--baseline", default=None, metavar="REPORT.json",
                   help="a previous JSON report: count only tokens flagged since, and list those that recovered")
    c.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                   help="never count these tokens: the --tokens grammar (ids, ranges 5-9, name:TEXT, re:REGEX,"
                        " kind:KIND)")
    _add_scale_arguments(a)
    _add_sweep_parser(sub)
    e = sub.add_parser("explain", help="explain the verdict on one token", epilog=EXIT_CODES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_source_arguments(e)
    e.add_argument("token", help="one token: a row id (digits), name:TEXT or re:REGEX matching one row")
    e.add_argument("--format", choices=["text", "json"], default="text")
    _add_diff_parser(sub)
    return parser


def _add_diff_parser(sub) -> None:
    f = sub.add_parser("diff", help="compare the audits of two versions of one vocabulary (fp16 against a"
                                    " quantised GGUF, a base model against its fine-tune)",
                       epilog="exit codes: 0 no token lost reachability; 1 some token argmaxable in A is not"
                              " in B; 2 bad input")
    f.add_argument("a", help="the reference: a checkpoint folder, hub id ORG/NAME[@REV], .gguf, .onnx or array file")
    f.add_argument("b", help="the version to compare with A (same number of rows)")
    f.add_argument("--format", choices=["text", "json"], default="text")
    f.add_argument("--output", default=None, metavar="FILE", help="write the --format report here instead of stdout")
    f.add_argument("--json", default=None, metavar="FILE", dest="json_file", help="also write the JSON report")
    f.add_argument("--top", type=int, default=10, metavar="N", help="how many of the largest margin shifts to list")
    f.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_source_arguments(a) -> None:
    a.add_argument("path", help="a Hugging Face checkpoint folder or model id ORG/NAME[@REVISION], a .gguf file,"
                                " an .onnx model, or a .npz, .npy, .safetensors or .pt file with a"
                                " [num_classes, dim] weight")
    # SUPPRESS: `argmaxcheck --debug audit ...` is not undone by the subcommand's default
    a.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the traceback of an internal error")
    g = a.add_argument_group("arrays")
    g.add_argument("--weight", default=None, metavar="NAME",
                   help="weight array (default: weight); for checkpoints and ONNX models, the head's tensor"
                        " (or ONNX node) name")
    g.add_argument("--bias", default=None, metavar="NAME", help="bias array (default: bias, if present)")
    g.add_argument("--no-bias", action="store_true", help="ignore any bias in the file")
    g.add_argument("--names", default=None, metavar="NAME", help="array of token strings (default: tokens)")
    g.add_argument("--transpose", action="store_true", help="the weight is stored as [dim, num_classes]")
    n = a.add_argument_group("final norm (plain files)")
    n.add_argument("--norm", choices=["layernorm", "rmsnorm", "rmsnorm1p"], default=None,
                   help="fold this norm into the layer; with --domain auto, audit on its output ball")
    n.add_argument("--norm-weight", default=None, metavar="NAME", help="the norm's weight array")
    n.add_argument("--norm-bias", default=None, metavar="NAME", help="LayerNorm: its bias array")
    d = a.add_argument_group("domain")
    d.add_argument("--domain", choices=["auto", "unbounded", "box", "ball"], default="auto",
                   help="auto (default): what the model's own last layers can produce for checkpoints"
                        " and ONNX models (final norm, activation), R^d for plain files")
    d.add_argument("--lower", type=float, default=None, help="box: lower bound of every coordinate (-inf ok)")
    d.add_argument("--upper", type=float, default=None, help="box: upper bound of every coordinate (inf ok)")
    d.add_argument("--bound", type=float, default=None, help="box: symmetric bound, [-B, B]^d")
    d.add_argument("--radius", type=float, default=None, help="ball: radius around the origin")
    d.add_argument("--precision", choices=["float64", "float32", "float16", "bfloat16"], default=None,
                   help="dtype the model computes its logits in (default: the weights' dtype); tokens whose best"
                        " margin is below its resolution are 'practically unreachable'")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (see :data:`EXIT_CODES`)."""
    args = build_parser().parse_args(argv)
    # A library's warnings (torch's about a pickle protocol, say) come back here: when the run fails, its
    # one line is all there is; after a verdict (0 or 1), each is shown as one printable line.
    with warnings.catch_warnings(record=True) as caught:
        code = _run(args)
    if code in (EXIT_OK, EXIT_FOUND):
        for w in caught:
            sys.stderr.write(f"argmaxcheck: warning: {one_line(w.message, 300)}\n")
    return code


def _run(args) -> int:
    try:
        commands = {"explain": _explain_command, "sweep": _sweep_command, "diff": _diff_command}
        return commands.get(args.command, _audit_command)(args)
    except InputError as exc:
        return _fail(args, f"error: {exc}", EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", EXIT_INTERRUPTED)
    except Terminated as exc:
        return _fail(args, "terminated", EXIT_SIGNAL_BASE + exc.signum)
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        hint = "" if getattr(args, "debug", False) else " (run with --debug for the traceback)"
        return _fail(args, f"internal error: {message}{hint}", EXIT_INTERNAL)


def _fail(args, message: str, code: int) -> int:
    """One line on stderr (the traceback before it with --debug); returns ``code``."""
    if getattr(args, "debug", False):
        traceback.print_exc()
    sys.stderr.write(f"argmaxcheck: {printable(message)}\n")
    return code


def _load_source(args):
    """(layer, domain, checkpoint_info, loaded) for the PATH and array/norm/domain flags shared by all commands."""
    domain = _domain_from_args(args)
    request = SourceRequest(weight=args.weight, bias=args.bias, names=args.names, transpose=args.transpose,
                            no_bias=args.no_bias, norm=args.norm, norm_weight=args.norm_weight,
                            norm_bias=args.norm_bias)
    try:
        loaded = load_source(args.path, request)
    except RecursionError:  # a parser recursing on nested input: the file is at fault, not us
        raise InputError(f"{args.path}: cannot be read (nested too deeply)") from None
    except MemoryError:
        raise InputError(f"{args.path}: cannot be read (not enough memory for what it declares)") from None
    if not loaded.info:  # a plain array file, audited as stored
        return loaded.layer, domain, None, loaded
    if args.domain == "auto":
        audited = "folded final norm" if loaded.norm != "none" else "domain inferred from the model"
        return loaded.layer, loaded.domain, {**loaded.info, "audited": audited}, loaded
    return loaded.raw, domain, {**loaded.info, "audited": "raw head"}, loaded


def _audit_command(args) -> int:
    # Everything the user typed is checked before the (possibly long) load and audit: a typo, a
    # bad pattern or an output path that would destroy a file fails at once, with nothing written.
    _check_scale_flags(args)
    policy = GatePolicy(parse_fail_on(args.fail_on), tuple(args.ignore))
    baseline = Baseline.load(args.baseline) if args.baseline else None
    chosen = FORMATS[args.format]
    requests = [("--output", args.output)] + [(f"--{f}", getattr(args, f"{f}_file")) for f in REPORT_FILES]
    requests.append(("--save-certificates", args.save_certificates))
    plan = plan_outputs(requests, inputs=[args.path] + ([args.baseline] if args.baseline else []),
                        stdout_taken_by=f"the --format {args.format} report" if args.output is None else None,
                        owned=[args.resume] if args.resume else [])
    certificates = plan.target("--save-certificates")
    if certificates is not None and certificates.kind == "file" and not args.save_certificates.endswith(".npz"):
        raise InputError(f"--save-certificates {args.save_certificates}: the file name must end in .npz")
    layer, domain, checkpoint_info, loaded = _load_source(args)
    policy.check_rows(layer)
    if baseline is not None:
        baseline.check_rows(layer.num_classes)
    tokens = select(args.tokens, layer) if args.tokens else None
    options = AuditOptions(exact_all=args.exact_all, exact=ExactOptions(), precision=args.precision,
                           probability_seconds=0.0 if args.no_max_probability else AuditOptions.probability_seconds,
                           device=args.device)
    total = len(tokens) if tokens is not None else layer.num_classes
    with _progress(total, quiet=args.quiet) as progress:
        report = _run_audit(args, layer, domain, tokens, options, progress)
    report.source = str(args.path)
    report.checkpoint = checkpoint_info
    attach_input_side(report, loaded, layer, domain)  # the tokenizer's side, after the audit
    gate = evaluate(report, policy, baseline)
    # Every report is rendered in memory first: a format that fails leaves every file as it was.
    rendered: dict[str, str | bytes] = {}
    for t in plan.targets:
        if t.option == "--save-certificates":
            rendered[t.option] = _certificates_bytes(report)
        else:
            fmt = args.format if t.option == "--output" else t.option[2:]
            rendered[t.option] = FORMATS[fmt](report, gate, layer)
    screen = _render_stdout(chosen, report, gate, layer) if args.output is None else None
    plan.write_all(rendered)
    if screen is not None:  # the --format report on stdout, once every file is in place
        write_stdout(screen)
    return EXIT_OK if gate.passed else EXIT_FOUND


def _render_stdout(chosen, report, gate, layer) -> bytes:
    """The --format report for stdout, as bytes (rich's styling included on a terminal)."""
    if chosen.terminal is None:
        return encode_for_stdout(chosen(report, gate, layer))
    from rich.console import Console  # noqa: PLC0415

    console = Console()
    with console.capture() as captured:
        chosen.terminal(report, gate, console)
    return encode_for_stdout(captured.get())


def _certificates_bytes(report) -> bytes:
    buffer = io.BytesIO()
    report.save_certificates(buffer)
    return buffer.getvalue()


def _add_scale_arguments(a) -> None:
    s = a.add_argument_group("scale: chunks, resume, Ray (put --ray after PATH, or write --ray=ADDRESS)")
    s.add_argument("--chunk-size", type=int, default=None, metavar="N",
                   help="audit in chunks of N tokens (default 4096 with --resume or --ray)")
    s.add_argument("--resume", default=None, metavar="DIR",
                   help="journal of finished chunks in DIR: the same command again decides only what is left")
    s.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the chunks on Ray: a new local cluster, or ADDRESS (host:port, ray://host:port, auto);"
                        " needs pip install 'argmaxcheck[ray]'")


def _check_scale_flags(args) -> None:
    """Fail on --ray without ray, or a --resume folder without a parent, before loading anything."""
    if args.chunk_size is not None and args.chunk_size < 1:
        raise InputError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    if args.resume is not None and not Path(args.resume).resolve().parent.is_dir():
        raise InputError(f"--resume {args.resume}: folder {Path(args.resume).resolve().parent} does not exist")
    if args.ray is not None:
        from .runner.executors import import_ray  # noqa: PLC0415 - the runner (and ray) only when asked for

        import_ray()


def _scale_executor(args):
    from .runner import LocalExecutor, RayExecutor  # noqa: PLC0415

    return RayExecutor(args.ray) if args.ray is not None else LocalExecutor()


def _run_audit(args, layer, domain, tokens, options, progress):
    """One engine call, or the chunked runner (argmaxcheck.runner) when --resume, --ray or --chunk-size ask."""
    if args.resume is None and args.ray is None and args.chunk_size is None:
        return audit(layer, domain=domain, tokens=tokens, options=options, progress=progress)
    from .runner import DEFAULT_CHUNK_SIZE, audit_sharded  # noqa: PLC0415

    with _scale_executor(args) as executor:
        return audit_sharded(layer, domain=domain, tokens=tokens, options=options, executor=executor,
                             chunk_size=args.chunk_size or DEFAULT_CHUNK_SIZE, journal=args.resume, progress=progress)


def _add_sweep_parser(sub) -> None:
    w = sub.add_parser("sweep", help="audit many models into one comparison table")
    _add_source_arguments(w)  # its PATH is the first source; the array, norm and domain flags apply to all
    w.add_argument("more", nargs="*", metavar="SOURCE", help="more sources; @FILE reads sources from FILE, one a line")
    w.add_argument("--output", default="sweep", metavar="DIR",
                   help="folder for sweep.md/.csv/.json/.html and models/*.json (default: ./sweep)")
    w.add_argument("--no-max-probability", action="store_true", help="skip max-probability bounds")
    w.add_argument("--exact-all", action="store_true", help="run the exact step for every token (slow)")
    w.add_argument("--device", choices=["auto", "cpu", "cuda", "torch-cpu"], default="auto",
                   help="as for audit: where the heavy products run")
    w.add_argument("--fail-on", action="append", default=[], metavar="CATEGORY=N", help="as for audit, per model")
    w.add_argument("--ignore", action="append", default=[], metavar="PATTERN", help="as for audit, per model")
    w.add_argument("--quiet", action="store_true", help="no line per model on stderr")
    _add_scale_arguments(w)


def _sweep_command(args) -> int:
    """Exit 2 if any source failed to load or audit, else 1 if any model failed its gate, else 0."""
    from .runner import sweep  # noqa: PLC0415

    _check_scale_flags(args)
    policy = GatePolicy(parse_fail_on(args.fail_on), tuple(args.ignore))
    explicit = _domain_from_args(args)  # validates the domain flags even for --domain auto
    request = SourceRequest(weight=args.weight, bias=args.bias, names=args.names, transpose=args.transpose,
                            no_bias=args.no_bias, norm=args.norm, norm_weight=args.norm_weight,
                            norm_bias=args.norm_bias)
    options = AuditOptions(exact_all=args.exact_all, exact=ExactOptions(), precision=args.precision,
                           probability_seconds=0.0 if args.no_max_probability else AuditOptions.probability_seconds,
                           device=args.device)

    def on_row(k, total, row):
        if not args.quiet:
            what = f"error: {row.error}" if row.failed else (
                f"{row.counts['unargmaxable']} unargmaxable, {row.counts['practically_unreachable']} practically"
                f" unreachable, {row.counts['undecided']} undecided of {row.audited} in {row.seconds:.1f} s")
            sys.stderr.write(f"[{k + 1}/{total}] {printable(row.model)}: {printable(what)}\n")

    scaled = args.resume is not None or args.ray is not None or args.chunk_size is not None
    with _scale_executor(args) as executor:
        result = sweep([args.path, *args.more], args.output, request=request,
                       domain=None if args.domain == "auto" else explicit, options=options, policy=policy,
                       chunk_size=args.chunk_size, journal=args.resume, executor=executor if scaled else None,
                       on_row=on_row)
    _print_sweep_table(result)
    return result.exit_code


def _print_sweep_table(result) -> None:
    """The table on stdout: rich on a terminal, plain columns otherwise (Markdown only goes to sweep.md)."""
    from .report.sweep import render_terminal, render_text  # noqa: PLC0415

    if sys.stdout.isatty():
        from rich.console import Console  # noqa: PLC0415

        render_terminal(result, Console(file=sys.stdout))
    else:
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        sys.stdout.write(encode_for_stdout(render_text(result)).decode(encoding))


def _explain_command(args) -> int:
    layer, domain, _, loaded = _load_source(args)
    ids = select(args.token, layer, what="explain TOKEN")
    if len(ids) != 1:
        raise InputError(f"explain TOKEN: {printable(args.token, 80)!r} selects {len(ids)} rows; give one")
    report, exp = explain_token(layer, domain, ids[0])
    report.source = str(args.path)
    attach_input_side(report, loaded)
    if args.format == "json":
        text = json_text(exp.to_dict(report)) + "\n"
    else:
        text = render_explanation(report, exp)
        if report.round_trip is not None:
            text += _round_trip_line(report, ids[0])
    write_stdout(encode_for_stdout(text))
    return EXIT_OK if exp.result.verdict == ARGMAXABLE else EXIT_FOUND


def _round_trip_line(report, i: int) -> str:
    """The input side of one token, for ``explain``: does the tokenizer give it back from its own text."""
    status = report.round_trip.status[i]
    if status is None:
        return ""
    if status is False:
        got = ", ".join(f"{j} {report.label(j)}" if j < report.num_classes else str(j)
                        for j in report.round_trip.produced.get(i, ()))
        return f"round trip: no: the tokenizer encodes its text as [{got}]\n"
    return ("round trip: only as a special token (special-token matching)\n" if status == "special"
            else "round trip: yes: its own text encodes to exactly this token\n")


def _diff_command(args) -> int:
    if args.top < 0:
        raise InputError(f"--top must be >= 0, got {args.top}")
    # The same output rules as audit: checked before two long audits, written all or none.
    plan = plan_outputs([("--output", args.output), ("--json", args.json_file)], inputs=[args.a, args.b],
                        stdout_taken_by="the diff" if args.output is None else None)
    loaded = [load_source(path) for path in (args.a, args.b)]
    if loaded[0].layer.num_classes != loaded[1].layer.num_classes:  # before two long audits
        raise InputError(f"{args.a} has {loaded[0].layer.num_classes} rows but {args.b} has"
                         f" {loaded[1].layer.num_classes}: diff compares two versions of the same vocabulary")
    reports = []
    for path, source in zip((args.a, args.b), loaded, strict=True):
        # Each side on the domain its own model produces; probabilities are not compared, so not bounded.
        with _progress(source.layer.num_classes, quiet=args.quiet) as progress:
            report = audit(source.layer, domain=source.domain, options=AuditOptions(probability_seconds=0.0),
                           progress=progress)
        report.source, report.checkpoint = str(path), source.info or None
        attach_input_side(report, source)
        reports.append(report)
    result = diff_reports(*reports, top=args.top)
    main_text = render_diff_json(result) if args.format == "json" else render_diff_text(result)
    rendered = {t.option: (main_text if t.option == "--output" else render_diff_json(result)) for t in plan.targets}
    plan.write_all(rendered)
    if args.output is None:
        write_stdout(encode_for_stdout(main_text))
    return EXIT_FOUND if result.lost else EXIT_OK


def _domain_from_args(args):
    box_flags = {k: getattr(args, k) for k in ("lower", "upper", "bound") if getattr(args, k) is not None}
    if args.domain != "box" and box_flags:
        raise InputError(f"--{next(iter(box_flags))} needs --domain box")
    if args.domain != "ball" and args.radius is not None:
        raise InputError("--radius needs --domain ball")
    if args.domain in ("auto", "unbounded"):
        return Unbounded()
    if args.domain == "ball":
        if args.radius is None:
            raise InputError("--domain ball needs --radius R")
        return Ball(args.radius)
    if args.bound is not None:
        if args.lower is not None or args.upper is not None:
            raise InputError("--bound cannot be combined with --lower/--upper")
        if not (args.bound > 0 and math.isfinite(args.bound)):
            raise InputError(f"--bound must be a finite number > 0, got {args.bound}")
        return Box.symmetric(args.bound)
    if args.lower is None and args.upper is None:
        raise InputError("--domain box needs --bound B, or --lower and/or --upper")
    return Box(-math.inf if args.lower is None else args.lower, math.inf if args.upper is None else args.upper)


PROGRESS_INTERVAL_ENV = "ARGMAXCHECK_PROGRESS_INTERVAL"
PROGRESS_INTERVAL = 30.0  # seconds between plain progress lines within a stage


class _progress:
    """Progress on stderr, stage by stage (the engine's ``progress.stage(name, total)`` calls).

    On a terminal: a rich display, one line per stage with counts and an ETA. Elsewhere (a CI log, a
    file): one plain line, no ANSI, when each stage starts and about every ``interval`` seconds within it,
    ``argmaxcheck: screen 12000/50257 (24%) 31 s elapsed, eta 97 s``. ``interval`` defaults to
    $ARGMAXCHECK_PROGRESS_INTERVAL, else 30 s; ``quiet`` shows nothing.
    """

    def __init__(self, total: int, quiet: bool, interval: float | None = None, stream=None,
                 clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stderr
        shown = not quiet and total > 0
        self.enabled = shown and _isatty(self.stream)
        self.plain = shown and not self.enabled
        self.interval = interval if interval is not None else _progress_interval() if self.plain else PROGRESS_INTERVAL
        self.clock = clock
        self.task = None
        self.name, self.total, self.done, self.started, self.last = "", 0, 0, 0.0, 0.0

    def __enter__(self):
        if self.plain:
            return self
        if not self.enabled:
            return None
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("eta"), TimeRemainingColumn(), transient=True)
        self.bar.start()
        return self

    def stage(self, name: str, total: int) -> None:
        if self.plain:
            self.name, self.total, self.done = name, max(total, 0), 0
            self.started = self.last = self.clock()
            self._line(self.started)
            return
        if self.task is not None:
            self.bar.update(self.task, completed=self.bar.tasks[-1].total)
        self.task = self.bar.add_task(name, total=max(total, 0))

    def advance(self, n: int = 1) -> None:
        if self.plain:
            self.done += n
            now = self.clock()
            if now - self.last >= self.interval:
                self.last = now
                self._line(now)
        elif self.task is not None:
            self.bar.advance(self.task, n)

    def _line(self, now: float) -> None:
        elapsed = now - self.started
        done = min(self.done, self.total)
        share = f" ({100 * done // self.total}%)" if self.total else ""
        eta = f", eta {elapsed * (self.total - done) / done:.0f} s" if 0 < done else ""
        self.stream.write(f"argmaxcheck: {printable(self.name, 80)} {done}/{self.total}{share}"
                          f" {elapsed:.0f} s elapsed{eta}\n")
        self.stream.flush()

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()
        return False


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _progress_interval() -> float:
    """Seconds between plain progress lines: $ARGMAXCHECK_PROGRESS_INTERVAL, else 30."""
    text = os.environ.get(PROGRESS_INTERVAL_ENV)
    if text is None or not text.strip():
        return PROGRESS_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise InputError(f"{PROGRESS_INTERVAL_ENV}={printable(text, 40)}: expected a number of seconds >= 0")
    return value


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
