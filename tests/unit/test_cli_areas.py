"""`buzzer` finds its subcommand areas through entry points and leaves out one whose
package or extra is not installed (the production image has neither bench nor loadtest)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from buzzer import cli

pytestmark = pytest.mark.unit


def _commands(parser: object) -> set[str]:
    import argparse

    assert isinstance(parser, argparse.ArgumentParser)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_the_dev_install_has_every_area() -> None:
    parser = cli.build_parser()
    assert {"serve", "db", "up", "demo", "lb", "infra", "loadtest", "bench"} <= _commands(parser)
    assert parser.epilog is None


def test_an_area_whose_package_is_missing_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    ghost = metadata.EntryPoint("ghost", "no_such_package.cli:add_parser", cli.GROUP)
    real = list(metadata.entry_points(group=cli.GROUP))
    monkeypatch.setattr(cli.metadata, "entry_points", lambda group: [*real, ghost])
    parser = cli.build_parser()
    assert "ghost" not in _commands(parser) and "serve" in _commands(parser)
    assert parser.epilog == "not available here: ghost (not installed)"


def test_an_area_that_fails_to_import_something_else_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Only the area's own package may be missing; any other missing module is a bug.
    (tmp_path / "broken_area.py").write_text("import no_such_dependency_of_the_area\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    broken = metadata.EntryPoint("broken", "broken_area:add_parser", cli.GROUP)
    monkeypatch.setattr(cli.metadata, "entry_points", lambda group: [broken])
    with pytest.raises(ModuleNotFoundError):
        cli.build_parser()


def test_an_extra_counts_as_installed_only_with_all_its_requirements() -> None:
    requires = [
        "aiohttp>=3.10",
        'pytest>=8; extra == "dev"',
        'locust>=2.29; extra == "loadtest"',
        'no-such-distribution>=1; extra == "loadtest"',
    ]
    assert cli.missing_extra(["dev"], requires) is None
    assert cli.missing_extra(["loadtest"], requires) == "loadtest"
    assert cli.missing_extra([], requires) is None
