"""Every command the README and docs/experiments.md show still parses: a renamed option or subcommand breaks a test
here, not the command a user copies. Only the words are checked (the names of commands and options, and that no
extra argument is left over); values are placeholders in the docs (`--lr LR`), and the commands do not run (the
README's Python example does: it is short)."""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest
import typer

from unigap.cli import _click_command

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = (ROOT / "README.md", ROOT / "docs" / "experiments.md")
SEPARATORS = {"&&", "||", ";", "|", ">", ">>", "2>&1"}


def _code(text: str, inline: bool) -> list[str]:
    """Shell lines of the fenced blocks (continuations joined) and, with `inline`, the inline code spans."""
    lines, block, inside = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            if inside:
                lines += _joined(block)
            inside, block = not inside, []
        elif inside:
            block.append(line)
        elif inline:
            lines += re.findall(r"`([^`]+)`", line)
    return lines


def _joined(block: list[str]) -> list[str]:
    joined: list[str] = []
    for line in block:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        else:
            joined.append(line)
    return joined


def _invocations(program: str, inline: bool) -> list[tuple[str, list[str]]]:
    """(where, words after `program`) for every documented call (`unigap` also as accelerate's `-m unigap.cli`). Doc
    brackets mark optional words and `a|b` alternatives (the first is kept); a `${...}` word stands for words only
    the shell knows, and `...` for more (both dropped); a shell separator or a substitution ends the call."""
    found = []
    for document in DOCUMENTS:
        for line in _code(document.read_text(), inline):
            try:
                words = shlex.split(line, comments=True)
            except ValueError:  # an unbalanced quote in prose
                continue
            starts = [i for i, word in enumerate(words) if word == program and (i == 0 or words[i - 1] in SEPARATORS)
                      or program == "unigap" and word == "unigap.cli" and words[i - 1] == "-m"]  # (accelerate's)
            for start in starts:
                call = []
                for word in words[start + 1:]:
                    if word in SEPARATORS or word.startswith(("$(", "<(")):
                        break
                    word = word.strip("[]").split("|")[0]
                    if word and not word.startswith("${") and word not in ("...", "…"):  # (the docs' "and so on")
                        call.append(word)
                found.append((f"{document.name}: {line.strip()[:80]}", call))
    return found


UNIGAP_CALLS = _invocations("unigap", inline=True)  # prose names commands too: `unigap refine train`


def _check_words(command: object, words: list[str], parent: typer.Context | None = None) -> None:
    context = typer.Context(command, info_name=command.name, parent=parent)
    _, rest, _ = command.make_parser(context).parse_args(list(words))  # raises on an unknown option or a missing value
    if hasattr(command, "commands"):  # a group (typer builds on its own copy of click)
        if rest:
            sub = command.get_command(context, rest[0])
            assert sub is not None, f"no command `{rest[0]}` in `{context.command_path}`"
            _check_words(sub, rest[1:], context)
        return
    assert not rest, f"`{context.command_path}` takes no argument {rest}"


def test_the_documents_show_commands_to_check() -> None:
    assert len(UNIGAP_CALLS) >= 50  # the extraction would otherwise pass by finding nothing
    assert any(call[:1] == ["study"] for _, call in UNIGAP_CALLS)
    assert any("accelerate launch" in where for where, _ in UNIGAP_CALLS)


@pytest.mark.parametrize(("where", "words"), UNIGAP_CALLS, ids=[where for where, _ in UNIGAP_CALLS])
def test_a_documented_unigap_command_parses(where: str, words: list[str]) -> None:
    try:
        _check_words(_click_command(), words)
    except typer.TyperException as exc:
        pytest.fail(f"{where}: {exc.format_message()}")


class _Parsed(Exception):
    pass


def _script_calls() -> list[tuple[str, Path, list[str]]]:
    calls = []
    for where, words in _invocations("python", inline=False):  # prose names a script without its required options
        if words and words[0].endswith(".py") and (ROOT / words[0]).is_file():
            calls.append((where, ROOT / words[0], words[1:]))
    return calls


SCRIPT_CALLS = _script_calls()


def test_the_documents_show_scripts_to_check() -> None:
    assert {path.parent.name for _, path, _ in SCRIPT_CALLS} == {"benchmarks", "docs"}


@pytest.mark.parametrize(("where", "script", "words"), SCRIPT_CALLS, ids=[where for where, _, _ in SCRIPT_CALLS])
def test_a_documented_script_call_parses(where: str, script: Path, words: list[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The script's own argparse parser reads the words; parsing them ends the call before any work."""
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser: argparse.ArgumentParser, args: list[str] | None = None, namespace: object = None):
        parse(parser, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(script), *words])
    monkeypatch.syspath_prepend(str(script.parent))
    spec = importlib.util.spec_from_file_location(f"documented_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(_Parsed):
        try:
            module.main()
        except SystemExit as exc:
            pytest.fail(f"{where}: the script refuses these words (exit {exc.code})")


def test_the_readme_python_example_runs() -> None:
    """The README's Python example, run as written: its calls exist, take those arguments and return images."""
    blocks = (ROOT / "README.md").read_text().split("```python\n")[1:]
    assert len(blocks) == 1
    namespace: dict = {}
    exec(blocks[0].split("```")[0], namespace)  # noqa: S102 - the project's own README
    assert len(namespace["images"]) == len(namespace["edited"]) == 4
    assert {image.size for image in namespace["edited"]} == {image.size for image in namespace["images"]}
