"""`ssah report`: a run folder as one self-contained HTML file (figures inline, nothing fetched), to send to
teammates who cannot reach the server."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import fraction


def register(sub) -> None:
    p = sub.add_parser("report", help="write one self-contained HTML report of a run folder (opens offline)")
    p.add_argument("run", metavar="RUN_DIR", help="a run folder written by ssah attribute")
    p.add_argument("--out", required=True, metavar="report.html", help="the HTML file to write")
    for name in ("h_ru", "h_scu", "h_ucu"):
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=fraction(flag), default=None,
                       help=f"roles at this {name} (default: the run's own)")
    p.add_argument("--preview", action="append", default=[], metavar="FILE.json",
                   help="a preview to include, as `ssah evaluate --json` prints it (may be given several times)")
    p.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from backend.engine import atomic
    from backend.engine.roles import Thresholds
    from backend.report import folder_run, read_inspections, report_html

    run, units = folder_run(args.run)
    asked = {k: getattr(args, k) for k in ("h_ru", "h_scu", "h_ucu") if getattr(args, k) is not None}
    thresholds = Thresholds(**{**run["settings"]["thresholds"], **asked})
    previews = []
    for path in args.preview:
        try:
            previews.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as error:
            raise ValueError(f"--preview {path} is not a readable JSON preview: {error}") from None
    page = report_html(run, units, thresholds, previews=previews, inspections=read_inspections(args.run),
                       made_by="ssah report")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out, page)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0
