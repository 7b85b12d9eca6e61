"""The `cnnopt` command line: parse, dispatch, and turn a CnnoptError into one line.

Nothing here does work of its own; every command calls one function of the module that owns it.
This module holds the group, ``main`` (the console entry point) and the study commands; the
`storage` group is in cli/storage.py, and the options several commands share in cli/options.py.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from cnnopt.bench import SECTIONS as BENCH_SECTIONS  # names only: imports no torch
from cnnopt.cli.options import artifacts_option, data_dir_option, set_option, storage_option
from cnnopt.cli.storage import storage_group
from cnnopt.errors import CnnoptError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Log more (and show tracebacks of errors).")
@click.version_option(package_name="cnnopt")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Hyperparameter studies of PyTorch CNN image classifiers, built on Optuna."""
    ctx.obj = {"verbose": verbose}
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="cnnopt: %(message)s"
    )


@cli.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option(
    "-w",
    "--workers",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Worker processes.",
)
@click.option(
    "-n",
    "--n-trials",
    type=click.IntRange(0),
    default=None,
    help="Trials to add [default: the study's n_trials].",
)
@click.option(
    "--timeout", type=float, default=None, help="Stop starting trials after this many seconds."
)
@click.option(
    "--epoch-budget",
    type=click.IntRange(1),
    default=None,
    help="Stop starting trials once this run has trained this many epochs (pruned trials count "
    "what they trained); without --n-trials it alone bounds the run [default: the study's "
    "epoch_budget].",
)
@storage_option
@click.option("--study-name", default=None, help="Name in the storage [default: the study's name].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:0,1")
@click.option("--seed", type=int, default=None, help="Study seed (sampler and data split).")
@data_dir_option
@set_option("Override a study setting (repeatable).")
@artifacts_option(
    "Where trial artifacts (learning curves, checkpoints) go; 'none': off "
    "[default: the study's `artifacts`, else storage/artifacts/<study>/].",
    envvar="CNNOPT_ARTIFACTS",
)
@click.option("--no-progress", is_flag=True, help="No live progress display.")
def run(
    study_file,
    workers,
    n_trials,
    timeout,
    epoch_budget,
    storage,
    study_name,
    device,
    seed,
    data_dir,
    sets,
    artifacts,
    no_progress,
):
    """Run (or resume) the study declared in STUDY_FILE."""
    from cnnopt.runner import Runner, RunOptions
    from cnnopt.study import Study
    from cnnopt.summary import print_run_summary

    overrides = dict(sets)
    if study_name:
        overrides["name"] = study_name
    if seed is not None:
        overrides["seed"] = seed
    if data_dir:
        overrides["data_dir"] = str(Path(data_dir).resolve())
    if artifacts:
        overrides["artifacts"] = artifacts
    study = Study.load(study_file, overrides)
    options = RunOptions(
        workers, n_trials, timeout, storage, device, progress=not no_progress,
        epoch_budget=epoch_budget,
    )  # fmt: skip
    summary = Runner(study, overrides, options).run()
    print_run_summary(summary)
    if summary.interrupted:
        sys.exit(130)


@cli.group()
def data() -> None:
    """Inspect datasets."""


@data.command("check")
@click.argument("name")
@data_dir_option
@set_option("Data settings (image_size=64, label_csv=...).")
def data_check(name, data_dir, sets):
    """Report what dataset NAME looks like (classes, sizes, statistics) and what is wrong with it."""
    from cnnopt.config import RunConfig
    from cnnopt.data.check import check_dataset, format_check

    flat = {"dataset": name, "data_dir": data_dir, **sets}
    cfg = RunConfig.from_flat(flat, where="cnnopt data check").data
    click.echo(format_check(check_dataset(cfg)))


cli.add_command(storage_group)  # `cnnopt storage ...`: cnnopt/cli/storage.py


@cli.command()
@click.argument("study", required=False)
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def status(study, storage, as_json):
    """Trials by state, best trial, trials per hour, pruned fraction and live workers of STUDY.

    Without STUDY: the studies of --storage, or of every storage/*.journal file.
    """
    import json

    from cnnopt.status import print_status, print_study_list
    from cnnopt.status import status as get_status

    result = get_status(study, storage)
    if as_json:
        data = result.to_dict() if hasattr(result, "to_dict") else result
        click.echo(json.dumps(data, indent=2, default=str))
    elif isinstance(result, list):
        print_study_list(result)
    else:
        print_status(result)


@cli.command()
@click.argument("study")
@storage_option
@click.option(
    "-o",
    "--out",
    default=None,
    type=click.Path(dir_okay=False),
    help="[default: best.json; with --pareto: pareto.json]",
)
@click.option("--trial", "trial", type=int, default=None, help="Trial number [default: the best].")
@click.option(
    "--pareto",
    is_flag=True,
    help="A Pareto study: list its front (pruned points marked) and write it to --out.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "yaml"]),
    default=None,
    help="[default: from --out's suffix, else json]",
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also download the trial's checkpoint artifact to this file (no retraining needed).",
)
@artifacts_option("Artifact location [default: the one the study recorded].")
def export(study, storage, out, trial, pareto, fmt, checkpoint, artifacts):
    """Write trial (default: best) of STUDY as a file that rebuilds its run without the storage."""
    from cnnopt.export import export as do_export

    if pareto:
        from cnnopt.export import export_pareto
        from cnnopt.status import _fmt_objective

        if trial is not None or checkpoint:
            raise click.UsageError("--pareto lists the front: export one point with --trial N")
        path, data = export_pareto(study, out or "pareto.json", fmt, storage)
        names = data["objectives"]
        for r in data["front"]:
            cells = ", ".join(
                f"{n} {_fmt_objective(n, v)}" for n, v in zip(names, r["values"], strict=True)
            )
            mark = f" (pruned at epoch {r['epoch']})" if r["state"] == "pruned" else ""
            click.echo(f"#{r['number']}: {cells}{mark}")
        click.echo(
            f"wrote the front of {study} ({len(data['front'])} points) to {path}; "
            f"export one for `cnnopt train` with: cnnopt export {study} --trial N"
        )
        return
    out = out or "best.json"
    path, data = do_export(study, out, trial, fmt, storage, checkpoint, artifacts)
    t = data["trial"]
    click.echo(f"exported {study} trial #{t['number']} ({t['metric']} {t['value']}) to {path}")
    if "checkpoint" in data:
        ck = data["checkpoint"]
        click.echo(f"downloaded its checkpoint ({ck['artifact']}) to {ck['path']}")


@cli.command()
@click.argument("export_file", type=click.Path(dir_okay=False))
@click.option("--epochs", type=click.IntRange(1), default=None, help="[default: the trial's]")
@click.option(
    "--schedule",
    type=click.Choice(["none", "step", "step_decay", "cosine", "onecycle"]),
    default=None,
    help="Learning-rate schedule [default: the trial's].",
)
@click.option("-o", "--out", default=None, help="Output folder [default: runs/<study>-trial<N>].")
@data_dir_option
@set_option(
    "Change a config key (repeatable): crop_padding=2, hflip=true, label_smoothing=0.1, "
    "tta_flip=true, optimizer=sgd_nesterov, lr=0.05, amp=bf16, train_subset=5000 ..."
)
@click.option(
    "--holdout",
    type=float,
    default=0.0,
    show_default=True,
    help="Hold out this fraction of the training set for early stopping.",
)
@click.option(
    "--patience",
    type=click.IntRange(1),
    default=None,
    help="Early-stopping patience in epochs on the holdout loss [default with --holdout: 3].",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]")
@click.option(
    "--reproduce",
    is_flag=True,
    help="Retrain the trial's run exactly (its split, epochs, seed) and compare its value.",
)
@click.option(
    "--storage",
    envvar="CNNOPT_STORAGE",
    default=None,
    help="Storage of the trial, to attach the results to it [default: the export's].",
)
@artifacts_option("Artifact location [default: the one the study recorded].")
@click.option("--no-attach", is_flag=True, help="Do not attach the results to the trial.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train(
    export_file,
    epochs,
    schedule,
    out,
    data_dir,
    sets,
    holdout,
    patience,
    device,
    reproduce,
    storage,
    artifacts,
    no_attach,
    no_progress,
):
    """Final training of an exported trial (cnnopt export) on the full training set, then test.

    Writes checkpoint.pt (load it with cnnopt.final.load_checkpoint), results.json and
    confusion_matrix.html to --out, and attaches them to the trial as artifacts.
    """
    from cnnopt.final import check_reproduced, print_results, train_final

    results = train_final(
        export_file,
        epochs=epochs,
        schedule=schedule,
        out=out,
        data_dir=data_dir,
        sets=sets,
        holdout=holdout,
        patience=patience,
        device=device,
        reproduce=reproduce,
        progress=not no_progress,
        storage=storage,
        artifacts=artifacts,
        attach=not no_attach,
    )
    print_results(results)
    if reproduce:
        check_reproduced(results)


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-k", "--top", type=click.IntRange(1), default=3, show_default=True)
@click.option(
    "--invert",
    is_flag=True,
    help="Invert the images first (dark objects on light ground -> FashionMNIST style).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def predict(checkpoint, images, top, invert, as_json):
    """Top classes with probabilities for IMAGES (PNG, JPEG, ...) from a cnnopt train CHECKPOINT."""
    import json

    from cnnopt.final import predict_images

    rows = predict_images(checkpoint, list(images), top, invert)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        tops = ", ".join(f"{c['class']} {100 * c['probability']:.1f}%" for c in r["top"])
        click.echo(f"{r['image']}: {tops}")


@cli.command()
@click.argument("study")
@storage_option
@click.option(
    "-o", "--out", default="report.html", show_default=True, type=click.Path(dir_okay=False)
)
def report(study, storage, out):
    """Write one self-contained HTML file of plotly figures about STUDY."""
    from cnnopt.report import write_report

    path, sections = write_report(study, out, storage)
    for s in sections:
        if s.figure is None:
            click.echo(f"{s.title}: {s.note}", err=True)
    n = sum(s.figure is not None for s in sections)
    click.echo(f"wrote {path} ({n} figures)")


@cli.command()
@click.argument("study", required=False)
@storage_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@artifacts_option("Artifact location to serve [default: those the studies recorded].")
def dashboard(study, storage, host, port, artifacts):
    """Serve optuna-dashboard for a storage (blocks; Ctrl-C stops it).

    Storage: --storage, else storage/STUDY.journal, else the only storage/*.journal file.
    """
    from cnnopt.dashboard import host_warning, pick_storage, serve

    url = pick_storage(storage, study)
    warning = host_warning(host)
    if warning:
        click.echo(warning, err=True)
    serve(url, host, port, artifacts)


@cli.command()
@click.option("--quick", is_flag=True, help="The < 10 minute suite (what the README table shows).")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the full report (every row, its baseline, the machine) here.",
)
@click.option(
    "--markdown",
    "md_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the table as Markdown (for the README).",
)
@data_dir_option
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]")
@click.option(
    "--seeds",
    type=click.IntRange(2),
    default=None,
    help="search section: replay seeds per set (one set chooses the pruner, a fresh set reports) "
    "[default: 100; --quick: a smoke run of 8].",
)
@click.option(
    "--postgres",
    default=None,
    metavar="URL",
    help="Also time storage calls on PostgreSQL (a scratch database is created and dropped).",
)
@click.option(
    "--section",
    "sections",
    multiple=True,
    type=click.Choice(list(BENCH_SECTIONS)),
    help="Run only these sections (repeatable) [default: all].",
)
@click.option(
    "--plan",
    "plan_name",
    type=click.Choice(["quick", "full", "tiny"]),
    default=None,
    help="Sizes to use [default: quick with --quick, else full]; tiny is a smoke run.",
)
@click.option(
    "--dataset",
    default="fashion_mnist",
    show_default=True,
    help="Dataset (the reference loop reads it in torchvision's FashionMNIST layout).",
)
@click.option(
    "--threads", type=click.IntRange(1), default=None, help="torch threads [default: all cores]."
)
def bench(
    quick,
    json_path,
    md_path,
    data_dir,
    device,
    seeds,
    postgres,
    sections,
    plan_name,
    dataset,
    threads,
):
    """Measure cnnopt against R2's training loop, random search and Ray Tune, side by side.

    Sections: throughput, search (replays on R2's tabulated grid; --quick is a smoke run, not
    evidence), scaling, gpu.
    """
    from cnnopt.bench import run_bench
    from cnnopt.bench.common import PLANS, BenchOptions, print_report, to_markdown, write_json

    plan = PLANS[plan_name or ("quick" if quick else "full")]
    opts = BenchOptions(
        plan=plan,
        dataset=dataset,
        data_dir=data_dir,
        device=device,
        seeds=seeds,
        threads=threads,
        postgres=postgres,
        sections=tuple(sections),  # empty: every registered section
        # files a section keeps beside the report (search.md/.json/.html): next to --markdown
        out_dir=str(Path(md_path or json_path).parent) if (md_path or json_path) else None,
        log=lambda msg: click.echo(f"cnnopt bench: {msg}", err=True),
    )
    report = run_bench(opts)
    print_report(report)
    if json_path:
        write_json(report, json_path)
        click.echo(f"wrote {json_path}", err=True)
    if md_path:
        Path(md_path).write_text(to_markdown(report))
        click.echo(f"wrote {md_path}", err=True)


def main() -> None:
    """Entry point: a CnnoptError becomes one line on stderr and exit code 2."""
    # GPUs numbered as nvidia-smi numbers them, in every command (`run` plans with NVML, which
    # uses this order; CUDA's own default puts the fastest first). Set before CUDA starts.
    os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    # gRPC's core logs a refused TLS handshake itself; cnnopt says it in one line
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    verbose = "-v" in sys.argv[1:] or "--verbose" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("cnnopt: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except CnnoptError as e:
        if verbose:
            raise
        click.echo(f"cnnopt: error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("cnnopt: interrupted", err=True)
        sys.exit(130)
