"""Command-line flags generated from the typed config, so flags and config can never drift apart.

Top-level fields become ``--field-name``; model fields keep their names (``--base-channels``);
sampler fields get a prefix (``--sampler-steps``). Only flags actually given override the
``--config`` file.
"""

import argparse
import sys
import types
import typing

from pydantic import BaseModel, ValidationError

from hazematching.config import ModelConfig, SamplerConfig, TrainConfig, format_validation_error, read_config_file

_NESTED = {"model": (ModelConfig, ""), "sampler": (SamplerConfig, "sampler-")}


def _base_type(annotation):
    """(python type, is_tuple) for int/float/str/Path/Literal/tuple annotations, Optional stripped."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin is tuple:
        return typing.get_args(annotation)[0], True
    if origin is typing.Literal:
        return str, False
    return annotation, False


def _comma_list(item_type):
    def parse(text: str):
        return tuple(item_type(v) for v in text.split(",") if v.strip() != "")

    return parse


def _shown(value) -> str:
    """A default as it is typed on the command line: 1,2,4 for tuples, the bare value otherwise."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _add_fields(parser, model: type[BaseModel], prefix: str, dest_prefix: str) -> None:
    for name, field in model.model_fields.items():
        if name in _NESTED:
            continue
        flag = "--" + prefix + name.replace("_", "-")
        kind, is_tuple = _base_type(field.annotation)
        value = None if field.is_required() else field.get_default(call_default_factory=True)
        default = " (required)" if field.is_required() else "" if value is None else f" (default: {_shown(value)})"
        help_text = f"{field.description or ''}{default}"
        choices = None
        if typing.get_origin(field.annotation) is typing.Literal:
            choices = typing.get_args(field.annotation)
        else:
            inner = [a for a in typing.get_args(field.annotation) if typing.get_origin(a) is typing.Literal]
            choices = typing.get_args(inner[0]) if inner else None
        dest = dest_prefix + name
        if kind is bool:
            parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif is_tuple:
            parser.add_argument(
                flag, dest=dest, type=_comma_list(kind), default=None, metavar="A,B,...", help=help_text
            )
        else:
            metavar = None if choices else name.upper()
            parser.add_argument(
                flag, dest=dest, type=kind, choices=choices, default=None, metavar=metavar, help=help_text
            )


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="YAML/JSON file with any of the fields below")
    _add_fields(parser, TrainConfig, "", "")
    for section, (model, prefix) in _NESTED.items():
        _add_fields(parser.add_argument_group(section), model, prefix, f"{section}.")
    return parser


def parse_train_config(argv: list[str] | None = None, description: str = "Train HazeMatching") -> TrainConfig:
    """Flags (+ optional config file) -> validated TrainConfig, or exit 2 with a readable message."""
    parser = build_parser(description)
    args = vars(parser.parse_args(argv))
    try:
        fields = read_config_file(args.pop("config")) if args.get("config") else {}
    except (OSError, ValueError) as exc:
        parser.exit(2, f"error: {exc}\n")
    args.pop("config", None)
    for key, value in args.items():
        if value is None:
            continue
        if "." in key:
            section, name = key.split(".", 1)
            fields.setdefault(section, {})[name] = value
        else:
            fields[key] = value
    try:
        return TrainConfig(**fields)
    except ValidationError as exc:
        print(format_validation_error(exc), file=sys.stderr)
        raise SystemExit(2) from None
