"""The command-line reference page, written at build time from the `cxrlearn` parser itself.

docs/cli.md holds the introduction and a marker; this hook replaces the marker with one
section per command and sub-command (`cxrlearn data check` too): its description, its usage
line and a table of its arguments with their help and default, read from
`cxrlearn.cli.build_parser()`. A new option therefore appears on the page without anyone
editing it, and tests/test_docs_site.py fails if one is missing.
"""

from __future__ import annotations

import argparse
import html
import re
from collections.abc import Iterator

from markers import fill_marker
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import Files
from mkdocs.structure.pages import Page

PAGE = "cli.md"
MARKER = "<!-- cli-reference -->"
WIDTH = 88  # usage lines wrap here, not at the width of the terminal that builds the docs


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ("cxrlearn",),
             summary: str = "") -> Iterator[tuple[tuple[str, ...], str, argparse.ArgumentParser]]:
    """Every (command path, one-line help, parser), the parser first, then its sub-commands."""
    yield path, summary, parser
    for action in parser._actions:  # argparse has no public list of sub-commands
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name), helps.get(name, ""))


def _prose(text: str) -> str:
    """Help text as HTML: escaped, with `code` spans shown as code."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(" ".join(text.split())))


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if action.nargs == 0:  # a flag: store_true and the like
        return "off" if action.default is False else ""
    if action.default is None or action.default == argparse.SUPPRESS:
        return ""
    value = action.default
    shown = " ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return f"<code>{html.escape(shown)}</code>"


def _formatter(parser: argparse.ArgumentParser) -> argparse.HelpFormatter:
    return parser.formatter_class(prog=parser.prog, width=WIDTH)


def usage(parser: argparse.ArgumentParser) -> str:
    """The usage line of `--help`, without its "usage: " prefix."""
    formatter = _formatter(parser)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups,
                        prefix="")
    return formatter.format_help().strip()


def argument_rows(parser: argparse.ArgumentParser) -> list[str]:
    """One table row per argument, as `--help` would list it (without -h/--help)."""
    # The formatter's private helpers are what `--help` itself prints for one argument, so the
    # page says exactly what the terminal says; argparse has no public call for one argument.
    formatter = _formatter(parser)
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        invocation = html.escape(formatter._format_action_invocation(action))
        text = _prose(formatter._expand_help(action)) if action.help else ""
        rows.append(f"<tr><td><code>{invocation}</code></td><td>{text}</td>"
                    f"<td>{_default(action)}</td></tr>")
    return rows


def subcommand_rows(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> list[str]:
    """One row per sub-command, linking to its section."""
    return [f'<tr><td><a href="#{"-".join(sub_path)}"><code>{" ".join(sub_path)}</code></a></td>'
            f"<td>{_prose(summary)}</td></tr>"
            for sub_path, summary, _ in commands(parser, path)
            if len(sub_path) == len(path) + 1]


def reference(parser: argparse.ArgumentParser) -> str:
    """The Markdown (with HTML tables) of every command's section."""
    parts = []
    for path, summary, command in commands(parser):
        name = " ".join(path)
        # Level 2 for `cxrlearn` and its commands, 3 for `cxrlearn data check` and below.
        level = min(max(len(path), 2), 6)
        parts.append(f"{'#' * level} {name}\n")  # its anchor: the words joined by "-"
        text = command.description or summary
        if text:
            parts.append(f"<p>{_prose(text)}</p>\n")
        parts.append(f"```text\n{usage(command)}\n```\n")
        subcommands = subcommand_rows(command, path)
        if subcommands:
            parts.append("<table><thead><tr><th>Command</th><th>What it does</th></tr></thead>"
                         f"<tbody>{''.join(subcommands)}</tbody></table>\n")
        arguments = argument_rows(command)
        if arguments:
            parts.append("<table><thead><tr><th>Argument</th><th>Meaning</th><th>Default</th>"
                         f"</tr></thead><tbody>{''.join(arguments)}</tbody></table>\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    def make() -> str:
        from cxrlearn.cli import build_parser  # here, so that only this page pays for it

        return reference(build_parser())

    return fill_marker(markdown, page, PAGE, MARKER, make)
