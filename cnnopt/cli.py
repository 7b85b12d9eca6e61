"""The `cnnopt` command line: parse, dispatch, and turn a CnnoptError into one line.

Nothing here does work of its own; every command calls one function of the module that owns it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from cnnopt.errors import CnnoptError

STORAGE_HELP = "Optuna storage: SQLAlchemy URL or .journal file [env CNNOPT_STORAGE; default storage/<study>.journal]"


def _storage_option(f):
    return click.option("--storage", envvar="CNNOPT_STORAGE", default=None, help=STORAGE_HELP)(f)


def _data_dir_option(f):
    return click.option(
        "--data-dir",
        envvar="CNNOPT_DATA_DIR",
        type=click.Path(file_okay=False),
        default=None,
        help="Folder with the dataset files (offline use) [env CNNOPT_DATA_DIR]",
    )(f)


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
@_storage_option
@click.option("--study-name", default=None, help="Name in the storage [default: the study's name].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:0,1")
@click.option("--seed", type=int, default=None, help="Study seed (sampler and data split).")
@_data_dir_option
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a study setting (repeatable).",
)
@click.option("--no-progress", is_flag=True, help="No live progress display.")
def run(
    study_file,
    workers,
    n_trials,
    timeout,
    storage,
    study_name,
    device,
    seed,
    data_dir,
    sets,
    no_progress,
):
    """Run (or resume) the study declared in STUDY_FILE."""
    from cnnopt.runner import Runner, RunOptions
    from cnnopt.study import Study, parse_override
    from cnnopt.summary import print_run_summary

    overrides = dict(parse_override(s) for s in sets)
    if study_name:
        overrides["name"] = study_name
    if seed is not None:
        overrides["seed"] = seed
    if data_dir:
        overrides["data_dir"] = str(Path(data_dir).resolve())
    study = Study.load(study_file, overrides)
    options = RunOptions(workers, n_trials, timeout, storage, device, progress=not no_progress)
    summary = Runner(study, overrides, options).run()
    print_run_summary(summary)
    if summary.interrupted:
        sys.exit(130)


@cli.group()
def data() -> None:
    """Inspect datasets."""


@data.command("check")
@click.argument("name")
@_data_dir_option
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Data settings (image_size=64, label_csv=...).",
)
def data_check(name, data_dir, sets):
    """Report what dataset NAME looks like (classes, sizes, statistics) and what is wrong with it."""
    from cnnopt.config import RunConfig
    from cnnopt.data.check import check_dataset, format_check
    from cnnopt.study import parse_override

    flat = {"dataset": name, "data_dir": data_dir, **dict(parse_override(s) for s in sets)}
    cfg = RunConfig.from_flat(flat, where="cnnopt data check").data
    click.echo(format_check(check_dataset(cfg)))


# ---- issue 3: storage up/down/url ----
# (commands of this group go above this marker)
#


# ---- issue 5: status, export, train, predict, report, dashboard ----
# (commands of this group go above this marker)
#


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
@_data_dir_option
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]")
@click.option(
    "--seeds",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Seeds per study variant (median and spread over them).",
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
    type=click.Choice(["throughput", "study", "scaling", "gpu"]),
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
    """Measure cnnopt against R2's training loop and random search, side by side (issue 6)."""
    from cnnopt import bench as B

    plan = B.PLANS[plan_name or ("quick" if quick else "full")]
    opts = B.BenchOptions(
        plan=plan,
        dataset=dataset,
        data_dir=data_dir,
        device=device,
        seeds=seeds,
        threads=threads,
        postgres=postgres,
        sections=tuple(sections) or B.SECTIONS,
        log=lambda msg: click.echo(f"cnnopt bench: {msg}", err=True),
    )
    report = B.run_bench(opts)
    B.print_report(report)
    if json_path:
        B.write_json(report, json_path)
        click.echo(f"wrote {json_path}", err=True)
    if md_path:
        Path(md_path).write_text(B.to_markdown(report))
        click.echo(f"wrote {md_path}", err=True)


# ---- issue 6: bench ----
# (commands of this group go above this marker)
#


def main() -> None:
    """Entry point: a CnnoptError becomes one line on stderr and exit code 2."""
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


if __name__ == "__main__":
    main()
