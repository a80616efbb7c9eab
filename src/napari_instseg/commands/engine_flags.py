"""The engine's options as command-line flags, made from their one
definition (``core.engine.options``): ``--tile-size`` for ``tile_size``, with
its type, choices and help; and the namespace's values back as options."""

from __future__ import annotations

import argparse
from dataclasses import fields

from ..core.engine.options import AnyModelOptions
from ..core.types import InputError


def _checked(parse):
    """``parse`` with its one-line InputError as argparse's own error."""

    def convert(text):
        try:
            return parse(text)
        except InputError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return convert


def add_engine_flags(parser: argparse.ArgumentParser) -> None:
    """``--name`` for every engine option that has a command-line form."""
    for option in fields(AnyModelOptions):
        flag = option.metadata["flag"]
        if flag is None:
            continue
        settings = {"help": option.metadata["help"], **flag}
        if "type" in settings and settings["type"] not in (int, float):
            settings["type"] = _checked(settings["type"])
        if settings.get("action") != "store_true":
            settings["default"] = option.default
        parser.add_argument("--" + option.name.replace("_", "-"), **settings)


def engine_options(args: argparse.Namespace, channel_axis: int | None) -> dict:
    """The engine's options given on the command line (``segment`` keeps
    each engine's own); ``channel_axis`` as found for this input."""
    given = {
        option.name: getattr(args, option.name)
        for option in fields(AnyModelOptions)
        if option.metadata["flag"] is not None
    }
    return {**given, "channel_axis": channel_axis}
