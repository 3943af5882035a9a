"""The docs against the code: every command, flag, variable, `deploy.sh` subcommand and relative link
that README.md, docs/*.md and bench/RESULTS.md name exists; every setting is documented; the Commands
tables of docs/operations.md are what --help says.

Names are read from the docs' code (inline `spans` and code blocks), links from their prose. The
checkers are plain functions of a text, so `test_the_checkers_catch_*` can show each one fails."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from streaming_service.cli import EXIT_CODES, _parser
from streaming_service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "RESULTS.md"]
CONFIGURATION = ROOT / "docs" / "configuration.md"
OPERATIONS = ROOT / "docs" / "operations.md"

#: Variables the docs may name that are not settings of the service nor read by deploy.sh.
TEST_VARIABLES = {
    "BROWSER_TESTS",
    "DOCKER_TESTS",
    "SOAK",
    "CI",
    "TEST_WORKERS",
    "TEST_SOAK_SEEDS",
    "TEST_SOAK_SPEED",
    "TEST_SOAK_TPS",
}  # tests, scripts, .ci/run
NOT_VARIABLES = {"TOTAL_VOLUME"}  # Schwab's cumulative-volume field, not an environment variable

_FENCE = re.compile(r"^```.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
_INDENTED = re.compile(r"(?<=\n\n)(?:(?: {4}|\t).*\n?)+")  # a code block: indented, after a blank line
_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_VARIABLE = re.compile(  # A_NAME (or a DEPLOY_*_TIMEOUT glob), or NAME=; <NAME> is a placeholder
    r"(?<![\w$<-])([A-Z][A-Z0-9]*(?:_(?:[A-Z0-9]+|\*))+)(?![\w>-])|(?<![\w$<-])([A-Z][A-Z0-9_]*)="
)
_CLI = re.compile(  # `docker compose exec streaming-service streaming-service auth`: the second one
    r"(?<![\w-])(?:streaming-service|-m streaming_service)[ \t]+(?!streaming-service\b)([^\n`#]*)"
)
_DEPLOY = re.compile(r"(?<![\w-])(?:\./)?deploy\.sh\b([^\n`#]*)")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


# --- reading the docs ---------------------------------------------------------------------------


def code_of(markdown: str) -> list[str]:
    """The code in `markdown`: each fenced or indented block, and each inline span, one string each."""
    blocks = [m.group(0) for m in _FENCE.finditer(markdown)]
    prose = _FENCE.sub("\n", markdown)
    blocks += [m.group(0) for m in _INDENTED.finditer(prose)]
    return blocks + [m.group(2) for m in _SPAN.finditer(prose)]


def prose_of(markdown: str) -> str:
    """`markdown` without its code blocks and inline code."""
    return _SPAN.sub("", _FENCE.sub("\n", markdown))


def anchors_of(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of `markdown` (lower case, punctuation dropped, spaces to
    hyphens, a repeated anchor numbered), plus explicit `<a id=…>`/`<a name=…>` anchors."""
    seen: dict[str, int] = {}
    anchors = set(re.findall(r"<a (?:id|name)=\"([^\"]+)\"", markdown))
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", _FENCE.sub("\n", markdown), re.MULTILINE):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


# --- what exists --------------------------------------------------------------------------------


def settings_variables() -> set[str]:
    return {name.upper() for name in Settings.model_fields}


@cache
def deploy_help() -> str:
    """`./deploy.sh --help`, run as a person would, in a clean environment."""
    done = subprocess.run(
        ["bash", str(ROOT / "deploy.sh"), "--help"], capture_output=True, text=True, timeout=30,
        cwd=ROOT / "docs", env={"PATH": os.environ["PATH"], "HOME": "/nonexistent"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def _help_section(title: str) -> str:
    text = deploy_help()
    start = text.index(f"\n{title}")
    return text[start : text.find("\n\n", start + 1)]


def deploy_subcommands() -> set[str]:
    return set(re.findall(r"^  ([a-z]+)\b", _help_section("Subcommands:"), re.MULTILINE))


def deploy_options() -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", _help_section("Options")))


def deploy_variables() -> set[str]:
    """What deploy.sh reads from the environment: its `NAME=${NAME:-default}` settings."""
    return set(re.findall(r"^([A-Z][A-Z0-9_]*)=\$\{\1:-", (ROOT / "deploy.sh").read_text(), re.MULTILINE))


def build_arguments() -> set[str]:
    return set(re.findall(r"^ARG ([A-Z][A-Z0-9_]*)", (ROOT / "Dockerfile").read_text(), re.MULTILINE))


def known_variables() -> set[str]:
    return settings_variables() | deploy_variables() | build_arguments() | TEST_VARIABLES | NOT_VARIABLES


def cli_flags() -> dict[str, set[str]]:
    """Each `streaming-service` subcommand's flags as argparse has them; '' is the program's own."""
    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {"": {o for a in parser._actions for o in a.option_strings}}
    for name, sub in commands.choices.items():
        flags[name] = {o for a in sub._actions for o in a.option_strings}
    return flags


def bench_flags() -> set[str]:
    return set(re.findall(r"add_argument\(\"(--[a-z-]+)\"", (ROOT / "bench" / "__main__.py").read_text()))


# --- the checkers: each returns what is wrong, empty when nothing is ------------------------------


def unknown_variables(markdown: str, known: set[str]) -> list[str]:
    """Environment-variable-like names in the code of `markdown` that are not in `known`; a name with
    a `*` (`DEPLOY_*_TIMEOUT`) must match at least one known name; `<NAME>` is a placeholder."""
    wrong = []
    for code in code_of(markdown):
        if "is not a setting of this service" in code:  # the unknown-variable error, quoted
            continue
        for match in _VARIABLE.finditer(code):
            name = match.group(1) or match.group(2)
            if "*" in name:
                pattern = re.compile(re.escape(name).replace(r"\*", "[A-Z0-9_]+") + "$")
                if not any(pattern.match(k) for k in known):
                    wrong.append(name)
            elif name not in known:
                wrong.append(name)
    return wrong


def _long_flags(rest: str) -> list[str]:
    """The long flags of a command line's rest, up to a comment or the next command."""
    rest = re.split(r"\s(?:#|&&|\|\||;|\|)\s|\)", rest)[0]
    return re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest)


def unknown_commands(markdown: str) -> list[str]:
    """`streaming-service COMMAND --flag` and `./deploy.sh SUB --flag` in the code of `markdown` that
    --help does not have, and lone `--flags` no command (nor `python -m bench`) has."""
    flags, subcommands, options = cli_flags(), deploy_subcommands(), deploy_options()
    every_flag = set().union(*flags.values(), options, bench_flags())
    wrong = []
    for code in code_of(markdown):
        code = re.sub(r"(?m)(?:^|[ \t])#.*$", "", code)  # shell comments
        if code.startswith("--"):  # a flag named on its own: `--duration`, `--ssh-cidr my-ip`
            wrong += [f for f in _long_flags(code) if f not in every_flag]
        for match in _CLI.finditer(code):
            words = match.group(1).split()
            first = words[0] if words else ""
            if first[:1].islower():  # `streaming-service auth|status|check`: each must exist
                for command in first.split("|"):
                    if command not in flags:
                        wrong.append(f"streaming-service {command}")
                    else:
                        rest = _long_flags(match.group(1)[len(first) :])
                        wrong += [f"streaming-service {command} {f}" for f in rest if f not in flags[command]]
            elif first.startswith("-"):
                wrong += [f"streaming-service {f}" for f in _long_flags(match.group(1)) if f not in flags[""]]
        for match in _DEPLOY.finditer(code):
            rest = match.group(1)
            words = rest.split()
            if words and re.fullmatch(r"[a-z][a-z-]*", words[0]) and not rest.startswith(":"):
                if words[0] not in subcommands:
                    wrong.append(f"./deploy.sh {words[0]}")
                if words[0] == "ssh":  # the rest is a command for the instance
                    rest = ""
            wrong += [f"./deploy.sh {f}" for f in _long_flags(rest) if f not in options]
    return wrong


def broken_links(path: Path, markdown: str) -> list[str]:
    """Relative links and images of `markdown` (at `path`) whose file, or heading anchor in a
    Markdown file, does not exist."""
    wrong = []
    for target in _LINK.findall(prose_of(markdown)):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        if not file:
            if anchor not in anchors_of(markdown):
                wrong.append(target)
            continue
        resolved = (path.parent / file).resolve()
        markdown_there = resolved.read_text() if resolved.suffix == ".md" and resolved.exists() else None
        if not resolved.exists() or (anchor and markdown_there and anchor not in anchors_of(markdown_there)):
            wrong.append(target)
    return wrong


# --- the docs -----------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_variable_the_docs_name_exists(doc: Path) -> None:
    assert unknown_variables(doc.read_text(), known_variables()) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_subcommand_and_flag_the_docs_name_exists(doc: Path) -> None:
    assert unknown_commands(doc.read_text()) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    assert broken_links(doc, doc.read_text()) == []


def test_configuration_documents_every_setting_with_its_default() -> None:
    rows = _table_rows(CONFIGURATION.read_text(), "| variable | default | meaning")
    documented = {row[0].strip("`"): row[1] for row in rows}
    assert set(documented) == settings_variables()
    for name, field in Settings.model_fields.items():
        default = field.default
        if default is None:
            continue
        if isinstance(default, tuple):
            default = ",".join(default)
        if isinstance(default, float) and default.is_integer():
            default = int(default)
        shown = str(default).lower() if isinstance(default, bool) else str(default)
        assert f"`{shown}`" in documented[name.upper()], (name, default)


def test_configuration_documents_every_deploy_setting() -> None:
    rows = _table_rows(CONFIGURATION.read_text(), "| variable | flag | default")
    assert {row[0].strip("`") for row in rows} == deploy_variables()


def test_every_deploy_subcommand_is_documented() -> None:
    code = "\n".join(block for doc in DOCS for block in code_of(doc.read_text()))
    named = set(re.findall(r"deploy\.sh (\w+)", code))
    assert deploy_subcommands() <= named


def test_readme_is_the_front_door() -> None:
    """The README stays short: what it is, the two commands, configure, deploy, monitor, links."""
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert "./scripts/install && .venv/bin/streaming-service demo --duration 20" in text
    assert "./scripts/test" in text


# --- the checkers can fail ------------------------------------------------------------------------


def test_the_checkers_catch_a_bogus_variable_command_flag_and_link(tmp_path: Path) -> None:
    known = known_variables()
    assert unknown_variables("set `STREAM_TICKERS=QQQ` and `BATCH_SIZE`", known) == ["STREAM_TICKERS"]
    assert unknown_variables("```\nSOAK=1 NO_SUCH_VAR=2 ./scripts/test\n```", known) == ["NO_SUCH_VAR"]
    assert unknown_variables("`DEPLOY_*_TIMEOUT` and `NOPE_*_X`", known) == ["NOPE_*_X"]
    assert unknown_commands("`streaming-service demo --duration 5 --no-such-flag`") == [
        "streaming-service demo --no-such-flag"
    ]
    assert unknown_commands("`streaming-service dashboard --keep`") == ["streaming-service dashboard --keep"]
    assert unknown_commands("```\nstreaming-service frobnicate\n```") == ["streaming-service frobnicate"]
    assert unknown_commands("`docker compose exec streaming-service streaming-service auth|nope`") == [
        "streaming-service nope"
    ]
    assert unknown_commands("`./deploy.sh upgrade` and `./deploy.sh up --ssh-cidr my-ip --fast`") == [
        "./deploy.sh upgrade",
        "./deploy.sh --fast",
    ]
    assert unknown_commands("pass `--frobnicate` and `--duration`") == ["--frobnicate"]
    assert unknown_commands("`docker build --build-arg X=1 .`") == []  # not ours
    assert unknown_commands("```\ndocker compose up -d  # deploy.sh ships, streaming-service nope\n```") == []
    (tmp_path / "other.md").write_text("# Other page\n\n## The demo's data\n")
    page = tmp_path / "page.md"
    text = "[a](other.md#the-demos-data) [b](other.md#nope) [c](missing.md) [d](#here)\n# Here\n`[e](x.md)`"
    assert broken_links(page, text) == ["other.md#nope", "missing.md"]


# --- the Commands tables of docs/operations.md and --help agree ------------------------------------


def _section(path: Path, title: str) -> str:
    text = path.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def _table_rows(section: str, header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header row starts with `header`."""
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.lstrip().startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _help_flags() -> dict[str, dict[str, object]]:
    """Every subcommand's long flags and their defaults, as argparse (i.e. --help) has them."""
    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        name: {a.option_strings[-1]: a.default for a in sub._actions if a.option_strings[-1] != "--help"}
        for name, sub in commands.choices.items()
    }


def test_operations_lists_every_command_and_flag_that_help_has_and_no_other() -> None:
    section = _section(OPERATIONS, "Commands")
    commands = {row[0].split()[1].strip("`") for row in _table_rows(section, "| command | what it does")}
    flags = _help_flags()
    assert commands - {"--version"} == set(flags)
    documented: dict[str, dict[str, str]] = {name: {} for name in flags}
    for command, flag, default, _ in _table_rows(section, "| command | flag |"):
        documented[command.strip("`")][flag.strip("`").split()[0]] = default
    for command, options in flags.items():
        assert set(documented[command]) == set(options), command
        for flag, default in options.items():
            if default not in (None, False) and flag != "--port":
                shown = str(default).removeprefix("sqlite:///")
                assert shown in documented[command][flag], (command, flag, default)


def test_operations_exit_codes_are_the_codes_the_cli_uses() -> None:
    codes = {int(row[0]) for row in _table_rows(_section(OPERATIONS, "Commands"), "| code | meaning")}
    assert codes == {0, 130, *EXIT_CODES.values()}


# --- `python -m bench --write` keeps RESULTS.md's sections, prose and hand-kept part ----------------

RESULTS = ROOT / "bench" / "RESULTS.md"


@cache
def _bench() -> Any:
    """bench/__main__.py as a module (bench/ is scripts, not a package on the path)."""
    spec = importlib.util.spec_from_file_location("bench_main", ROOT / "bench" / "__main__.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _results_rows(markdown: str) -> list[dict[str, str]]:
    """The figures of RESULTS.md's generated tables, as `python -m bench` had them (cells as text)."""
    keys = ("part", "name", "value", "unit", "baseline", "ratio", "note")
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    parts = set(_bench().PARTS)
    return [dict(zip(keys, cells, strict=True)) for line in lines
            if (cells := [c.strip() for c in line.strip()[2:-2].split(" | ")])[0] in parts]  # fmt: skip


def _linked_results_anchors() -> set[str]:
    """The anchors of bench/RESULTS.md that README.md and docs/*.md link to."""
    return {
        target.partition("#")[2]
        for doc in DOCS
        for target in _LINK.findall(prose_of(doc.read_text()))
        if target.partition("#")[0].endswith("RESULTS.md") and "#" in target
    }


def test_bench_write_renders_results_md_back_unchanged_from_its_own_figures() -> None:
    old = RESULTS.read_text()
    rows = _results_rows(old)
    assert {row["part"] for row in rows} == set(_bench().PARTS)
    header = old.split("\n")[:6]
    assert _bench().render_results(header, rows, old) == old


def test_bench_write_replaces_only_the_tables_of_the_parts_it_ran() -> None:
    old = RESULTS.read_text()
    soak = [{"part": "soak", "name": "memory: steady RSS", "value": 71.5, "unit": "MiB", "baseline": 100}]
    header = ["# Benchmark results", "", "`python -m bench --only soak`, now."]
    new = _bench().render_results(header, soak, old)
    memory = new[new.index("\n## Memory\n") : new.index("\n## Dashboard\n")]
    assert "| soak | memory: steady RSS | 71.50 | MiB | 100 |  |  |" in memory
    assert "| soak | memory: bare interpreter |" not in new
    prose = old[old.index("\n## Memory\n") : old.index("| part | what", old.index("## Memory"))]
    assert memory.startswith(prose)
    for kept in ("## CPU per frame", "## Dashboard", "## Capacity on the nano"):  # other parts, hand-kept
        assert new[new.index(kept) :].split("\n## ")[0] == old[old.index(kept) :].split("\n## ")[0]
    assert new.endswith(old[old.index("## Capacity on the nano") :])
    assert "Every measured figure of this project is recorded here" in new
    parts = {"cpu-per-frame", "write-throughput", "latency", "recovery-and-catch-up", "memory", "dashboard"}
    assert _linked_results_anchors() | parts <= anchors_of(new)


def test_bench_write_without_a_file_yet_makes_every_section() -> None:
    rows = [{"part": part, "name": f"{part} figure", "value": 1.5, "unit": "s"} for part in _bench().PARTS]
    new = _bench().render_results(["# Benchmark results"], rows, "")
    titles = re.findall(r"^## (.+)$", new, re.MULTILINE)
    assert titles == list(_bench().SECTIONS.values())
    assert all(f"| {part} | {part} figure | 1.50 | s |" in new for part in _bench().PARTS)
    assert new.endswith("|\n") and "\n\n\n" not in new
