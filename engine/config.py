"""Configs: TOML files in configs/ (a `base` key inherits another), every key overridable as --key value."""
import argparse
import difflib
import tomllib
from pathlib import Path

from engine.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT = "demo"
WINDOWS = ("py_spy", "torch_profile")  # step-window options: a bare flag takes DEFAULT_WINDOW
DEFAULT_WINDOW = "10:20"


def load_file(name_or_path):
    """A config by name (configs/NAME.toml) or path, with its `base` chain resolved."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
        raise UserError(f"no config {name_or_path!r}; choose one of {', '.join(names)} or give a .toml path")
    with open(path, "rb") as f:
        cfg = tomllib.load(f)
    base = cfg.pop("base", None)
    return {**load_file(base), **cfg} if base else cfg


def _parser_for(cfg):
    parser = argparse.ArgumentParser(prog="python -m engine.train", allow_abbrev=False, add_help=False)
    for key, value in cfg.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, dest=key, nargs="?", const=True, type=_parse_bool)
        elif key in WINDOWS:
            parser.add_argument(flag, dest=key, nargs="?", const=DEFAULT_WINDOW, metavar="START:STOP")
        else:
            parser.add_argument(flag, dest=key, type=_parser_of(value), metavar=type(value).__name__.upper())
    return parser


def _parse_bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parser_of(default):
    if isinstance(default, list):
        item = type(default[0]) if default else str
        return lambda text: [item(v) for v in text.split(",") if v]
    return type(default)


def resolve(argv, extra_flags=(), base_for=None):
    """(config, flags): the named config (--config NAME) with command-line overrides applied.

    `extra_flags` are flags handled by the caller (like --resume), returned in `flags`;
    `base_for(flags)` may supply the config to start from instead (a resumed run's own).
    """
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    for flag in extra_flags:
        pre.add_argument(flag)
    known, remaining = pre.parse_known_args(argv)
    base = base_for(known) if base_for else None
    cfg = base if base is not None else load_file(known.config or DEFAULT)
    parser = _parser_for(cfg)
    overrides, unknown = parser.parse_known_args(remaining)
    if unknown:
        raise UserError(_unknown_message(unknown[0], cfg))
    cfg.update({k: v for k, v in vars(overrides).items() if v is not None})
    cfg.setdefault("config", known.config or DEFAULT)
    return cfg, known


def _unknown_message(arg, cfg):
    key = arg.split("=")[0].lstrip("-").replace("-", "_")
    close = difflib.get_close_matches(key, list(cfg), n=3)
    hint = f"; did you mean {', '.join('--' + c.replace('_', '-') for c in close)}?" if close else "; see the keys in configs/*.toml"
    return f"unknown option {arg!r}{hint}"


def parse_window(text, name):
    """'START:STOP' -> (start, stop) step numbers, or None for ''."""
    if not text:
        return None
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise UserError(f"--{name} takes START:STOP step numbers, like 10:20; got {text!r}") from None
    if not 0 <= start < stop:
        raise UserError(f"--{name} needs 0 <= START < STOP, got {text!r}")
    return start, stop


def parse_duration(text):
    """'11h50m', '90m', '30s', '2h' -> seconds (None for '')."""
    if not text:
        return None
    total, number = 0.0, ""
    units = {"h": 3600, "m": 60, "s": 1}
    for ch in text.strip().lower():
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number:
            total, number = total + float(number) * units[ch], ""
        else:
            raise UserError(f"--time-limit takes a duration like 11h50m, 90m or 3600s; got {text!r}")
    return total + (float(number) if number else 0.0)
