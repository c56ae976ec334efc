"""Stage `report`: the lab's report from every stage's outputs.

    python -m stages.report --root . --out reports
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipelines import config, report
from pipelines.cli import edge
from pipelines.errors import TrackingError
from pipelines.tracking import CHAMPION, Run, register_champion


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.report", description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."), help="where data/, results/ and metrics/ are")
    ap.add_argument("--out", type=Path, default=Path("reports"), help="folder for report.md, report.html, figures/")
    ap.add_argument("--params", type=Path, default=config.PARAMS_FILE, help="params file (default: params.yaml)")
    args = ap.parse_args(argv)

    def body() -> None:
        params = config.load(args.params)
        # Built before the MLflow run opens, so a bad input fails with one line and no log chatter.
        rep = report.build(params, args.root)
        report.write(rep, args.out)
        notes = list(rep.warnings)
        tables = report.mlflow_tables(params, args.root, rep)
        best = report.champions(params, args.root)
        with Run(params, "report", "report", system_metrics=False) as run:
            run.log_params({"protocol": params.protocol, "variants": ",".join(params.variants)})
            run.log_artifact(args.out / "report.md", "report")
            run.log_artifact(args.out / "report.html", "report")
            for name, rows in tables.items():
                if rows:
                    run.log_table(rows, f"tables/{name}.json")
            registered = []
            for c in best:
                try:
                    c["version"] = register_champion(c["model_name"], c["run_id"], {
                        "variant": c["variant"], "chosen_on": c["chosen_on"], "score": f"{c['score']:.2f}",
                        "description": f"The lab's best model on {c['dataset']} (report stage)"})
                except TrackingError as e:  # e.g. a run restored from DVC's cache that this store never saw
                    notes.append(f"{c['model_name']}: {c['variant']} not registered: {str(e).splitlines()[0][:200]}")
                    continue
                registered.append(c)
                print(f"registered {c['model_name']} version {c['version']} @{CHAMPION}: {c['variant']} "
                      f"({c['chosen_on']} {c['score']:.2f} %)")
            if registered:
                run.log_table(registered, "tables/champions.json")
        for w in notes:
            print(f"warning: {w}", file=sys.stderr)
        print(f"wrote {args.out / 'report.md'}, {args.out / 'report.html'} and {len(rep.figures)} figures")

    return edge.guarded("report", body, [args.out])


if __name__ == "__main__":
    sys.exit(main())
