"""The README and docs/ say only what works: every `cnnopt ...` command in their shell code blocks
parses with the real command line (each subcommand accepts the flags and arguments shown), every
`make` command names a Makefile target and variables, and every relative link resolves to a file
(and a heading, where it names one)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from cnnopt.cli import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.S | re.M)
# an inline link or image, [text](target "title"); reference-style links are not used here
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SUBSTITUTION = re.compile(r"\$\((cnnopt\s[^)]*)\)")
SHELL_OPERATORS = {"&&", "||", "|", ";", "&"}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def code_blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(1).lower(), m.group(2)) for m in FENCE.finditer(text)]


def shell_lines(block: str) -> list[str]:
    """Logical lines: backslash continuations joined, blank and comment-only lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [
        ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]


def simple_commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line, `$(cnnopt ...)` substitutions included, each as
    argv with leading VAR=value assignments and a `$ ` prompt removed."""
    subs = [shlex.split(s) for s in SUBSTITUTION.findall(line)]
    words = shlex.split(SUBSTITUTION.sub("SUBSTITUTED", line.removeprefix("$ ")), comments=True)
    commands, current = [], []
    for word in words:
        if word in SHELL_OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(word)
    commands.append(current)
    out = []
    for argv in [*subs, *commands]:
        while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
            argv = argv[1:]
        if argv:
            out.append(argv)
    return out


def commands_of(program: str) -> list[tuple[str, list[str]]]:
    """(page, argv) of every `program ...` command in the pages' shell code blocks."""
    found = []
    for page in PAGES:
        for lang, body in code_blocks(page.read_text()):
            if lang not in SHELL_LANGS:
                continue
            for line in shell_lines(body):
                found += [(rel(page), a) for a in simple_commands(line) if a[0] == program]
    return found


CNNOPT_COMMANDS = commands_of("cnnopt")
MAKE_COMMANDS = commands_of("make")
PIP_COMMANDS = commands_of("pip")


def parse(argv: list[str]) -> click.Context:
    """Parse argv (after `cnnopt`) as the command line does, down to the leaf command, without
    running it: unknown options, missing arguments and bad values raise click's errors."""
    cmd: click.Command = cli
    name, args, parent = "cnnopt", list(argv), None
    while isinstance(cmd, click.Group):
        i = next((i for i, a in enumerate(args) if not a.startswith("-")), len(args))
        assert i < len(args), f"`{' '.join(['cnnopt', *argv])}` names no subcommand"
        # group-level options (-v) only; resilient: a group alone would ask for its help
        ctx = cmd.make_context(name, args[:i], parent=parent, resilient_parsing=True)
        sub_name, sub, rest = cmd.resolve_command(ctx, args[i:])
        if sub is None:  # a resilient context returns None instead of raising
            raise click.UsageError(f"No such command {args[i]!r} in `{name}`")
        name, cmd, args, parent = sub_name, sub, rest, ctx
    return cmd.make_context(name, args, parent=parent)


def test_the_pages_show_commands():
    readme = [a for page, a in CNNOPT_COMMANDS if page == "README.md"]
    assert len(readme) >= 10
    # the quick start's two commands
    assert ["make", "run"] in [a for _, a in MAKE_COMMANDS]
    assert ["make", "test"] in [a for _, a in MAKE_COMMANDS]


@pytest.mark.parametrize(
    "page,argv", CNNOPT_COMMANDS, ids=[f"{p}:{' '.join(a[:3])}" for p, a in CNNOPT_COMMANDS]
)
def test_command_parses(page, argv):
    try:
        ctx = parse(argv[1:])
    except click.ClickException as e:
        pytest.fail(f"{page}: `{shlex.join(argv)}`: {e.format_message()}")
    assert ctx.command.callback is not None


def test_parse_rejects_what_the_cli_rejects():
    """The check above is worth something only if a wrong flag or a missing argument fails it."""
    for argv in (["run", "x.py", "--wokers", "2"], ["export"], ["run", "x.py", "--workers", "0"]):
        with pytest.raises(click.ClickException):
            parse(argv)
    with pytest.raises(click.UsageError, match="No such command"):
        parse(["storage", "upp"])
    assert parse(["storage", "up"]).command.name == "up"


def test_readme_study_file_loads_and_samples(tmp_path):
    """The README's study file is a working one: it loads, and the configs it samples build."""
    import optuna
    import torch

    from cnnopt.models import build_model
    from cnnopt.study import Study

    blocks = [b for lang, b in code_blocks((ROOT / "README.md").read_text()) if lang == "python"]
    assert blocks, "README.md shows no study file"
    path = tmp_path / "my_study.py"
    path.write_text(blocks[0])
    study = Study.load(path)
    ostudy = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = ostudy.ask()
        cfg = study.resolve(trial).replace(in_channels=1, input_size=28, num_classes=10)
        assert build_model(cfg.model)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
        ostudy.tell(trial, 0.5)


def test_study_files_page_names_every_setting():
    """docs/study-files.md documents every study setting and every run config key."""
    from cnnopt.config import KEY_SECTION
    from cnnopt.study import STUDY_TYPES

    named = set(re.findall(r"`([a-z_0-9]+)`", (ROOT / "docs" / "study-files.md").read_text()))
    missing = [k for k in [*STUDY_TYPES, *KEY_SECTION] if k not in named]
    assert not missing, f"docs/study-files.md does not name {missing}"


def makefile_names() -> tuple[set[str], set[str]]:
    text = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+)\s*:(?!=)", text, re.M))
    variables = set(re.findall(r"^([A-Z_]+)\s*[?:]?=", text, re.M))
    return targets, variables


@pytest.mark.parametrize(
    "page,argv", MAKE_COMMANDS, ids=[f"{p}:{' '.join(a[:2])}" for p, a in MAKE_COMMANDS]
)
def test_make_command_names_a_target(page, argv):
    targets, variables = makefile_names()
    for word in argv[1:]:
        if "=" in word:
            assert word.split("=", 1)[0] in variables, f"{page}: `{shlex.join(argv)}`: {word}"
        else:
            assert word in targets, f"{page}: `{shlex.join(argv)}`: no target {word!r}"


def test_pip_extras_exist():
    """`pip install '.[dev]'` and the like name extras that pyproject.toml declares."""
    import tomllib

    declared = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    shown = {
        (page, extra.strip())
        for page, argv in PIP_COMMANDS
        for word in argv
        for group in re.findall(r"^(?:\.|cnnopt)\[([^\]]+)\]$", word)
        for extra in group.split(",")
    }
    assert shown, "no pip install with extras in the pages"
    assert all(extra in declared for _, extra in shown), (shown, declared)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces
    to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"[`*_]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        s = slug(heading)
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


def links() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        text = FENCE.sub("", page.read_text())
        text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
        found += [(rel(page), t) for t in LINK.findall(text)]
    return found


LINKS = [(p, t) for p, t in links() if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_the_pages_link_to_docs():
    readme = {t.split("#")[0] for p, t in LINKS if p == "README.md"}
    assert {"docs/study-files.md", "docs/running.md", "docs/storage.md"} <= readme


@pytest.mark.parametrize("page,target", LINKS, ids=[f"{p}->{t}" for p, t in LINKS])
def test_relative_link_resolves(page, target):
    path_part, _, anchor = target.partition("#")
    source = ROOT / page
    dest = (source.parent / path_part).resolve() if path_part else source
    # benchmarks/ (the search research, its README and tables) comes from another line of work;
    # until it is in this checkout, links into it cannot be checked
    if dest.is_relative_to(ROOT / "benchmarks") and not (ROOT / "benchmarks").is_dir():
        pytest.skip("benchmarks/ is not in this checkout")
    assert dest.exists(), f"{page}: link {target!r}: {rel(dest)} does not exist"
    if anchor and dest.suffix == ".md":
        assert anchor in anchors(dest), f"{page}: link {target!r}: no heading #{anchor}"


def test_architecture_names_every_module():
    """docs/architecture.md's table of the package matches the folders: every module and
    subpackage of cnnopt/ has a row (a subpackage's modules are named in its row), and every row
    names something that exists."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("## The package", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = line.split("|")
        if line.startswith("| `") and len(cells) > 2:
            for name in re.findall(r"`([^`]+)`", cells[1]):
                rows[name] = cells[2]
    package = ROOT / "cnnopt"
    missing = []
    for path in sorted(package.iterdir()):
        if path.name.startswith(("_", ".")):
            continue
        if path.suffix == ".py":
            name = path.name
        elif (path / "__init__.py").is_file():
            name = f"{path.name}/"
        else:
            continue
        if name not in rows:
            missing.append(name)
        elif path.is_dir():
            missing += [
                f"{name}{m.name}"
                for m in sorted(path.glob("*.py"))
                if not m.stem.startswith("_") and m.stem not in rows[name]
            ]
    stale = [name for name in rows if not (package / name).exists()]
    assert not missing, f"docs/architecture.md has no row for cnnopt/{missing}"
    assert not stale, f"docs/architecture.md names what cnnopt/ does not have: {stale}"
