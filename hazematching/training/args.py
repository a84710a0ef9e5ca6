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

from hazematching.architecture import KIND_HELP, KINDS, is_derived
from hazematching.config import SamplerConfig, TrainConfig, format_validation_error, read_config_file

_NESTED = ("model", "sampler")


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


def _add_field(parser, name: str, field, flag: str, dest: str, default: str) -> None:
    kind, is_tuple = _base_type(field.annotation)
    help_text = f"{field.description or ''}{default}"
    choices = None
    if typing.get_origin(field.annotation) is typing.Literal:
        choices = typing.get_args(field.annotation)
    else:
        inner = [a for a in typing.get_args(field.annotation) if typing.get_origin(a) is typing.Literal]
        choices = typing.get_args(inner[0]) if inner else None
    if kind is bool:
        parser.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=help_text)
    elif is_tuple:
        parser.add_argument(flag, dest=dest, type=_comma_list(kind), default=None, metavar="A,B,...", help=help_text)
    else:
        metavar = None if choices else name.upper()
        parser.add_argument(flag, dest=dest, type=kind, choices=choices, default=None, metavar=metavar, help=help_text)


def _default_text(field) -> str:
    if field.is_required():
        return " (required)"
    value = field.get_default(call_default_factory=True)
    return "" if value is None else f" (default: {_shown(value)})"


def _add_fields(parser, model: type[BaseModel], prefix: str, dest_prefix: str) -> None:
    for name, field in model.model_fields.items():
        if name not in _NESTED:
            flag = "--" + prefix + name.replace("_", "-")
            _add_field(parser, name, field, flag, dest_prefix + name, _default_text(field))


def _add_network_fields(parser) -> None:
    """``--architecture`` picks the network kind; every other network flag belongs to one kind or more,
    with that kind's default (``architecture.py`` declares them)."""
    parser.add_argument(
        "--architecture",
        dest="model.kind",
        choices=tuple(KINDS),
        default=None,
        help=f"{KIND_HELP} (default: unet)",
    )
    fields: dict[str, dict] = {}
    for kind, network in KINDS.items():
        for name, field in network.model_fields.items():
            if name != "kind" and not is_derived(field):
                fields.setdefault(name, {})[kind] = field
    for name, by_kind in fields.items():
        defaults = {kind: _shown(field.get_default()) for kind, field in by_kind.items()}
        if len(by_kind) == len(KINDS) and len(set(defaults.values())) == 1:
            default = f" (default: {next(iter(defaults.values()))})"
        else:
            listed = "; ".join(f"{value or 'none'} for {kind}" for kind, value in defaults.items())
            default = f" (default: {listed})"
        _add_field(parser, name, next(iter(by_kind.values())), "--" + name.replace("_", "-"), "model." + name, default)


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=None, help="YAML/JSON file with any of the fields below")
    _add_fields(parser, TrainConfig, "", "")
    _add_network_fields(parser.add_argument_group("model"))
    _add_fields(parser.add_argument_group("sampler"), SamplerConfig, "sampler-", "sampler.")
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
