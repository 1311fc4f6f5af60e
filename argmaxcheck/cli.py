"""Command line: a thin layer over :func:`argmaxcheck.audit`.

Exit codes: 0 the gate passed (by default: every audited token is
argmaxable); 1 the gate failed (some token unargmaxable, practically
unreachable or undecided beyond the --fail-on thresholds, not ignored, not
already in the --baseline); 2 bad input or usage (one line on stderr).
``diff``: 0 no token lost reachability, 1 some token did, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from . import __version__
from .diff import diff_reports
from .domains import Ball, Box, Unbounded
from .engine import AuditOptions, ExactOptions, audit, explain_token, render_explanation
from .errors import InputError
from .report import ARGMAXABLE
from .report.formats import FORMATS
from .report.gate import Baseline, GatePolicy, evaluate, parse_fail_on
from .sources import SourceRequest, load_source

EXIT_OK, EXIT_FOUND, EXIT_USAGE = 0, 1, 2

EPILOG = """exit codes:
  0  audit: the gate passed (by default every audited token is argmaxable); diff: no token lost reachability
  1  audit: the gate failed (see --fail-on, --ignore, --baseline); diff: some token argmaxable in A is not in B
  2  bad input or usage (one line on stderr)

examples:
  argmaxcheck audit data/ppocrv4_rec_head.npz --html report.html --json report.json
  argmaxcheck diff HuggingFaceTB/SmolLM2-135M-Instruct SmolLM2-135M-Instruct.Q4_1.gguf
"""


class _Parser(argparse.ArgumentParser):
    """argparse that exits 2 with one line (it already uses 2; this keeps the message short)."""

    def error(self, message):
        sys.stderr.write(f"argmaxcheck: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="argmaxcheck", description="Prove which softmax outputs can ever be the argmax.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"argmaxcheck {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    a = sub.add_parser("audit", help="audit every row of an output layer")
    _add_source_arguments(a)
    o = a.add_argument_group("output")
    o.add_argument("--tokens", default=None, metavar="LIST",
                   help="audit only these rows: ids and ranges like 0,5,10-20, or token strings")
    o.add_argument("--format", choices=list(FORMATS), default="table",
                   help="what to print (or write to --output): table (rich terminal report), text, json,"
                        " markdown, html, github (workflow annotations) or junit (XML)")
    o.add_argument("--output", default=None, metavar="FILE", help="write the --format report here instead of stdout")
    for fmt in ("json", "html", "markdown", "junit"):
        o.add_argument(f"--{fmt}", default=None, metavar="FILE", dest=f"{fmt}_file",
                       help=f"also write the {fmt} report to FILE")
    o.add_argument("--no-max-probability", action="store_true",
                   help="skip bounding the highest probability of unreachable tokens (bounded domains)")
    o.add_argument("--save-certificates", default=None, metavar="FILE.npz",
                   help="write every witness and certificate (layout in the README)")
    o.add_argument("--exact-all", action="store_true", help="run the exact step for every token (slow)")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    c = a.add_argument_group("gate (exit status 1 when it fails)")
    c.add_argument("--fail-on", action="append", default=[], metavar="CATEGORY=N",
                   help="fail when more than N tokens are in CATEGORY (unargmaxable, practically_unreachable,"
                        " undecided); N may be 'never'. Default: 0 for each")
    c.add_argument("--baseline", default=None, metavar="REPORT.json",
                   help="a previous JSON report: count only tokens flagged since, and list those that recovered")
    c.add_argument("--ignore", action="append", default=[], metavar="PATTERN",
                   help="never count these tokens: an id, an id range 5-9, an exact token string, or re:REGEX")
    e = sub.add_parser("explain", help="explain the verdict on one token")
    _add_source_arguments(e)
    e.add_argument("token", help="a row id (digits) or a token string")
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
    args = build_parser().parse_args(argv)
    try:
        if args.command == "diff":
            return _diff_command(args)
        return _explain_command(args) if args.command == "explain" else _audit_command(args)
    except InputError as exc:
        sys.stderr.write(f"argmaxcheck: error: {exc}\n")
        return EXIT_USAGE


def _load_source(args):
    """(layer, domain, checkpoint_info) for the PATH and array/norm/domain flags shared by all commands."""
    domain = _domain_from_args(args)
    loaded = load_source(args.path, SourceRequest(
        weight=args.weight, bias=args.bias, names=args.names, transpose=args.transpose, no_bias=args.no_bias,
        norm=args.norm, norm_weight=args.norm_weight, norm_bias=args.norm_bias))
    if not loaded.info:  # a plain array file, audited as stored
        return loaded.layer, domain, None
    if args.domain == "auto":
        audited = "folded final norm" if loaded.norm != "none" else "domain inferred from the model"
        return loaded.layer, loaded.domain, {**loaded.info, "audited": audited}
    return loaded.raw, domain, {**loaded.info, "audited": "raw head"}


def _audit_command(args) -> int:
    targets = [("--output", args.output), ("--save-certificates", args.save_certificates)]
    targets += [(f"--{f}", getattr(args, f"{f}_file")) for f in ("json", "html", "markdown", "junit")]
    for flag, target in targets:
        if target is not None:
            parent = Path(target).resolve().parent
            if not parent.is_dir():
                raise InputError(f"{flag} {target}: folder {parent} does not exist")
    if args.save_certificates is not None and not args.save_certificates.endswith(".npz"):
        raise InputError(f"--save-certificates {args.save_certificates}: the file name must end in .npz")
    # Gate options are checked before the (possibly long) audit, so a typo fails at once.
    policy = GatePolicy(parse_fail_on(args.fail_on), tuple(args.ignore))
    baseline = Baseline.load(args.baseline) if args.baseline else None
    layer, domain, checkpoint_info = _load_source(args)
    tokens = _parse_tokens(args.tokens, layer.num_classes, layer.tokens) if args.tokens else None
    options = AuditOptions(exact_all=args.exact_all, exact=ExactOptions(), precision=args.precision,
                           probability_seconds=0.0 if args.no_max_probability else AuditOptions.probability_seconds)
    total = len(tokens) if tokens is not None else layer.num_classes
    with _progress(total, quiet=args.quiet) as advance:
        report = audit(layer, domain=domain, tokens=tokens, options=options, progress=advance)
    report.source = str(args.path)
    report.checkpoint = checkpoint_info
    gate = evaluate(report, policy, baseline)
    if args.save_certificates:
        _atomic_write(args.save_certificates, report.save_certificates)
    for fmt in ("json", "html", "markdown", "junit"):
        target = getattr(args, f"{fmt}_file")
        if target:
            _emit(FORMATS[fmt](report, gate, layer), target)
    chosen = FORMATS[args.format]
    if chosen.terminal is not None and args.output is None:
        chosen.terminal(report, gate)
    else:
        _emit(chosen(report, gate, layer), args.output)
    return EXIT_OK if gate.passed else EXIT_FOUND


def _explain_command(args) -> int:
    layer, domain, _ = _load_source(args)
    # Digits name a row id here (as for --ignore); any other text is a token string.
    ids = _parse_tokens(args.token, layer.num_classes, None if args.token.isdigit() else layer.tokens,
                        what="explain TOKEN")
    if len(ids) != 1:
        raise InputError(f"explain: give one token, got '{args.token}'")
    report, exp = explain_token(layer, domain, ids[0])
    report.source = str(args.path)
    if args.format == "json":
        sys.stdout.write(json.dumps(exp.to_dict(report), indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render_explanation(report, exp))
    return EXIT_OK if exp.result.verdict == ARGMAXABLE else EXIT_FOUND


def _diff_command(args) -> int:
    for flag, target in (("--output", args.output), ("--json", args.json_file)):
        if target is not None and not Path(target).resolve().parent.is_dir():
            raise InputError(f"{flag} {target}: folder {Path(target).resolve().parent} does not exist")
    if args.top < 0:
        raise InputError(f"--top must be >= 0, got {args.top}")
    loaded = [load_source(path) for path in (args.a, args.b)]
    if loaded[0].layer.num_classes != loaded[1].layer.num_classes:  # before two long audits
        raise InputError(f"{args.a} has {loaded[0].layer.num_classes} rows but {args.b} has"
                         f" {loaded[1].layer.num_classes}: diff compares two versions of the same vocabulary")
    reports = []
    for path, source in zip((args.a, args.b), loaded, strict=True):
        # Each side on the domain its own model produces; probabilities are not compared, so not bounded.
        with _progress(source.layer.num_classes, quiet=args.quiet) as advance:
            report = audit(source.layer, domain=source.domain, options=AuditOptions(probability_seconds=0.0),
                           progress=advance)
        report.source, report.checkpoint = str(path), source.info or None
        reports.append(report)
    result = diff_reports(*reports, top=args.top)
    if args.json_file:
        _emit(result.render_json(), args.json_file)
    _emit(result.render_json() if args.format == "json" else result.render_text(), args.output)
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


def _parse_tokens(spec: str, n: int, names: list[str] | None, what: str = "--tokens") -> list[int]:
    """'0,5,10-20' or token strings (when names are known) -> row ids."""
    lookup = {name: i for i, name in enumerate(names)} if names else {}
    ids: list[int] = []
    for part in spec.split(","):
        item = part.strip()
        if not item:
            continue
        if item in lookup:
            ids.append(lookup[item])
            continue
        lo, sep, hi = item.partition("-")
        try:
            if sep and lo:
                start, stop = int(lo), int(hi)
                if stop < start:
                    raise InputError(f"{what}: range '{item}' is empty")
                ids.extend(range(start, stop + 1))
            else:
                ids.append(int(item))
        except ValueError:
            raise InputError(f"{what}: '{item}' is neither a row id, a range nor a known token") from None
    bad = [i for i in ids if not 0 <= i < n]
    if bad:
        raise InputError(f"{what}: id {bad[0]} is out of range (the layer has {n} rows)")
    if not ids:
        raise InputError(f"{what}: no token given")
    return ids


class _progress:
    """A rich progress bar on a terminal; nothing otherwise."""

    def __init__(self, total: int, quiet: bool):
        self.enabled = not quiet and sys.stderr.isatty() and total > 0
        self.total = total

    def __enter__(self):
        if not self.enabled:
            return lambda _n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn  # noqa: PLC0415

        self.bar = Progress(TextColumn("auditing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            transient=True)
        self.bar.start()
        task = self.bar.add_task("audit", total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()
        return False


def _emit(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text)
    else:
        _atomic_write(output, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _atomic_write(target: str, write) -> None:
    """Write through a temporary file in the same folder, then rename: never a half-written file."""
    target_path = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target_path.resolve().parent, prefix=".argmaxcheck-",
                               suffix=target_path.suffix)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a report is an ordinary file
        os.replace(tmp, target_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
